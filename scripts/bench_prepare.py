#!/usr/bin/env python3
"""Benchmark of heap preparation (issue: heap preparation).

1. Walk rate: objects per second of the native walk on a heap of >= 2M objects.
2. prepare_fork on a 1 GiB heap: seconds for the whole call (gc.collect, walk, gc.freeze, trim),
   without and with the heap map (on by default; it adds recording and writing 16 bytes per object).

Each measurement runs in a fresh interpreter (the walk immortalizes the heap it runs in).
Targets: >= 10M objects/s, < 1 s per GiB.

    .venv/py3.12/bin/python scripts/bench_prepare.py [--repeat 3] [--gib 1.0] [--objects 2000000]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import gc, json, os, sys, time
kind, size, hm = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
os.environ.setdefault("COWPROF_HEAPMAP_DIR", "/tmp/cowprof-bench-heapmaps")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

class Rec:
    def __init__(self, i):
        self.ident = i + 1000
        self.name = "rec-%d" % i
        self.score = i * 0.5

def chunk(i0, n):
    # a server-like mix: instances, atomic dicts, tuples, lists, str, float
    recs = [Rec(i) for i in range(i0, i0 + n)]
    rows = [{"id": i + 7, "city": "c%d" % i, "v": i / 3} for i in range(i0, i0 + n)]
    pairs = [("k%d" % i, i * 1.5) for i in range(i0, i0 + n)]
    return recs, rows, pairs

base = rss()
heap = []
if kind == "objects":
    target = int(size)
    i = 0
    while True:
        heap.append(chunk(i, 50_000)); i += 50_000
        if i * 12 >= target:
            break
else:
    target = int(size * 2**30)
    i = 0
    while rss() - base < target:
        heap.append(chunk(i, 50_000)); i += 50_000
gc.collect()
heap_bytes = rss() - base
import cowprof
from cowprof import _native
if kind == "objects":
    gc_head = sys.getsizeof([]) - [].__sizeof__()
    r = _native.walk(gc_head=gc_head)
    print(json.dumps({"objects": r["objects"], "seconds": r["seconds"], "heap_bytes": heap_bytes}))
else:
    t = time.perf_counter()
    rep = cowprof.prepare_fork(heapmap=hm)
    if rep.heapmap_path:
        os.unlink(rep.heapmap_path)
    total = time.perf_counter() - t
    print(json.dumps({"objects": rep.objects, "seconds": total, "walk_seconds": rep.walk_seconds,
                      "heap_bytes": heap_bytes, "prepared_bytes": rep.bytes}))
"""


def run(kind: str, size: float, heapmap: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), "1" if heapmap else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--objects", type=int, default=2_000_000, help="objects in the walk-rate heap")
    ap.add_argument("--gib", type=float, default=1.0, help="heap size for the prepare_fork timing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if sys.version_info < (3, 12):
        print("bench_prepare: needs CPython 3.12+", file=sys.stderr)
        return 2
    walks = [run("objects", args.objects) for _ in range(args.repeat)]
    rates = [w["objects"] / w["seconds"] for w in walks]
    preps = [run("gib", args.gib) for _ in range(args.repeat)]
    per_gib = [p["seconds"] / (p["heap_bytes"] / 2**30) for p in preps]
    preps_hm = [run("gib", args.gib, heapmap=True) for _ in range(args.repeat)]
    per_gib_hm = [p["seconds"] / (p["heap_bytes"] / 2**30) for p in preps_hm]
    result = {
        "python": platform.python_version(),
        "walk_objects": walks[0]["objects"],
        "walk_rate_median": statistics.median(rates),
        "walk_rates": rates,
        "gib_heap_bytes": preps[0]["heap_bytes"],
        "gib_objects": preps[0]["objects"],
        "prepare_seconds": [p["seconds"] for p in preps],
        "prepare_walk_seconds": [p["walk_seconds"] for p in preps],
        "prepare_seconds_per_gib_median": statistics.median(per_gib),
        "prepare_with_heapmap_seconds": [p["seconds"] for p in preps_hm],
        "prepare_with_heapmap_seconds_per_gib_median": statistics.median(per_gib_hm),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Python {result['python']}")
        print(f"walk: {result['walk_objects']:,} objects, median {result['walk_rate_median'] / 1e6:.1f}M objects/s "
              f"(runs: {', '.join(f'{r / 1e6:.1f}M' for r in rates)}; target >= 10M/s)")
        print(f"prepare_fork: {result['gib_heap_bytes'] / 2**30:.2f} GiB heap, {result['gib_objects']:,} objects: "
              f"{', '.join(f'{s:.2f}' for s in result['prepare_seconds'])} s "
              f"(walk {', '.join(f'{s:.2f}' for s in result['prepare_walk_seconds'])} s); "
              f"median {result['prepare_seconds_per_gib_median']:.2f} s/GiB (target < 1 s/GiB) [heapmap=False]")
        print(f"prepare_fork with the heap map (the default): "
              f"{', '.join(f'{s:.2f}' for s in result['prepare_with_heapmap_seconds'])} s; "
              f"median {result['prepare_with_heapmap_seconds_per_gib_median']:.2f} s/GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
