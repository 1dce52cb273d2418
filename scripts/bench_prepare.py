#!/usr/bin/env python3
"""Benchmark of heap preparation (issues: heap preparation, 13, 17).

1. Walk rate: objects per second of the native walk alone (no heap map) on a heap of >= 2M objects.
2. prepare_fork on a 1 GiB heap (instances, atomic dicts, tuples of str and float): seconds per GiB.
3. prepare_fork on a mixed heap (tests/prepare_heap.py: instances with dicts, atomic dicts, tuples,
   str, float, functions; 4M objects asked, ~3.5M walked, ~226 MB): objects per second of the
   whole call.

Sections 2 and 3 run these variants, interleaved within each repeat (the machine may be shared:
figures are medians): ``nomap`` (``heapmap=False``), ``map`` (the default: heap map in format 3),
``format2`` (the format written before issue 17, ``COWPROF_HEAPMAP_FORMAT=2``, same build) and,
with ``--peer DIR``, ``peer``: the default of another checkout built in place (``python setup.py
build_ext --inplace`` there, e.g. main before a change). Each run is a fresh interpreter (the walk
immortalizes the heap it runs in) with private, empty heap map and preload directories, and with
bytecode caching on (as in an installed package: PYTHONDONTWRITEBYTECODE is dropped, so the modules
prepare_fork imports on its first call are not compiled inside the timing). Per run:
wall and CPU seconds of the call (CPU: both threads, the walk's and its heap map writer's), the
walk's wall seconds, the heap map's bytes per object, (section 2) the seconds the profiler's side
takes to read and sort the map (``cowprof.heapmap.read``, after the timing) and (this build) the
time of each phase.

Targets: walk >= 10M objects/s; prepare_fork with the heap map <= 0.5 s per GiB (issue 17; < 1 s
before); the whole prepare_fork >= 10M objects/s on the mixed heap; heap map <= 8 bytes per object.

    .venv/py3.12/bin/python scripts/bench_prepare.py [--repeat 3] [--gib 1.0] [--mixed 4000000]
        [--objects 2000000] [--peer DIR] [--sections walk,gib,mixed] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

CHILD = r"""
import gc, json, os, sys, time
kind, size, hm, tests = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]

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
    i = 0
    while i * 12 < size:
        heap.append(chunk(i, 50_000)); i += 50_000
elif kind == "gib":
    i = 0
    while rss() - base < size * 2**30:
        heap.append(chunk(i, 50_000)); i += 50_000
else:
    sys.path.insert(0, tests)
    from prepare_heap import build
    heap = build(int(size))
gc.collect()
heap_bytes = rss() - base
import cowprof
from cowprof import _native
if kind == "objects":
    gc_head = sys.getsizeof([]) - [].__sizeof__()
    r = _native.walk(gc_head=gc_head)
    print(json.dumps({"objects": r["objects"], "seconds": r["seconds"], "heap_bytes": heap_bytes}))
else:
    t, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    rep = cowprof.prepare_fork(heapmap=hm)
    seconds, cpu, main_cpu = time.perf_counter() - t, time.process_time() - cpu, time.thread_time() - main_cpu
    map_bytes = os.path.getsize(rep.heapmap_path) if rep.heapmap_path else 0
    read_seconds = None
    if rep.heapmap_path and kind == "gib":  # the profiler's side: read (decode) and sort the map
        import numpy  # noqa: F401  (imported before the timing)
        from cowprof import heapmap
        t = time.perf_counter()
        records = len(heapmap.read(rep.heapmap_path))
        read_seconds = time.perf_counter() - t
    print(json.dumps({"objects": rep.objects, "seconds": seconds, "cpu": cpu, "main_cpu": main_cpu,
                      "walk_seconds": rep.walk_seconds, "heap_bytes": heap_bytes, "map_bytes": map_bytes,
                      "read_seconds": read_seconds, "phases": getattr(rep, "phase_seconds", {})}))
"""

VARIANTS = ("nomap", "map", "format2", "peer")


def run(kind: str, size: float, variant: str = "map", peer: str | None = None) -> dict:
    tmp = tempfile.mkdtemp(prefix="cowprof-bench-prepare-")
    env = dict(os.environ, COWPROF_HEAPMAP_DIR=os.path.join(tmp, "maps"),
               COWPROF_PRELOAD_DIR=os.path.join(tmp, "preload"))
    env.pop("COWPROF_HEAPMAP_FORMAT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cwd = None
    if variant == "format2":
        env["COWPROF_HEAPMAP_FORMAT"] = "2"
    elif variant == "peer":
        env["PYTHONPATH"] = cwd = peer
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), "0" if variant == "nomap" else "1",
                              TESTS], capture_output=True, text=True, check=True, env=env, cwd=cwd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], kind: str) -> dict:
    med = statistics.median
    s: dict = {"runs": len(runs), "objects": runs[0]["objects"], "heap_bytes": runs[0]["heap_bytes"],
               "seconds": [round(r["seconds"], 3) for r in runs], "seconds_median": med(r["seconds"] for r in runs),
               "cpu_median": med(r["cpu"] for r in runs), "main_cpu_median": med(r["main_cpu"] for r in runs),
               "walk_seconds_median": med(r["walk_seconds"] for r in runs),
               "map_bytes_per_object": med(r["map_bytes"] / r["objects"] for r in runs)}
    if kind == "gib":
        s["seconds_per_gib_median"] = med(r["seconds"] / (r["heap_bytes"] / 2**30) for r in runs)
        s["cpu_per_gib_median"] = med(r["cpu"] / (r["heap_bytes"] / 2**30) for r in runs)
    else:
        s["objects_per_second_median"] = med(r["objects"] / r["seconds"] for r in runs)
        s["objects_per_cpu_second_median"] = med(r["objects"] / r["cpu"] for r in runs)
    reads = [r["read_seconds"] for r in runs if r.get("read_seconds") is not None]
    if reads:
        s["read_seconds_median"] = med(reads)
    phases = [r["phases"] for r in runs if r.get("phases")]
    if phases:
        s["phases_median"] = {k: med(p.get(k, 0.0) for p in phases) for k in phases[0]}
    return s


def line(name: str, kind: str, s: dict) -> str:
    head = (f"  {name:8} {s['seconds_per_gib_median']:.2f} s/GiB (CPU {s['cpu_per_gib_median']:.2f})" if kind == "gib"
            else f"  {name:8} {s['objects_per_second_median'] / 1e6:5.1f}M objects/s "
                 f"(CPU {s['objects_per_cpu_second_median'] / 1e6:.1f}M)")
    text = (f"{head}; runs {', '.join(f'{x:.2f}' for x in s['seconds'])} s; walk {s['walk_seconds_median']:.2f} s; "
            f"map {s['map_bytes_per_object']:.2f} B/object")
    if "read_seconds_median" in s:
        text += f", read and sorted in {s['read_seconds_median']:.2f} s"
    if "phases_median" in s:
        text += "; " + ", ".join(f"{k} {v:.3f}" for k, v in s["phases_median"].items() if v >= 0.0005)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--objects", type=int, default=2_000_000, help="objects in the walk-rate heap")
    ap.add_argument("--gib", type=float, default=1.0, help="heap size for the prepare_fork timing")
    ap.add_argument("--mixed", type=int, default=4_000_000, help="objects asked of tests/prepare_heap.py")
    ap.add_argument("--peer", help="a checkout built in place whose default prepare_fork is the peer")
    ap.add_argument("--sections", default="walk,gib,mixed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if sys.version_info < (3, 12):
        print("bench_prepare: needs CPython 3.12+", file=sys.stderr)
        return 2
    peer = os.path.abspath(args.peer) if args.peer else None
    if peer and not os.path.isdir(os.path.join(peer, "cowprof")):
        print(f"bench_prepare: {peer} is not a cowprof checkout", file=sys.stderr)
        return 2
    variants = [v for v in VARIANTS if v != "peer" or peer]
    sections = args.sections.split(",")
    result: dict = {"python": platform.python_version(), "repeat": args.repeat, "peer": peer}
    if "walk" in sections:
        walks = [run("objects", args.objects) for _ in range(args.repeat)]
        rates = [w["objects"] / w["seconds"] for w in walks]
        result["walk"] = {"objects": walks[0]["objects"], "rate_median": statistics.median(rates), "rates": rates}
    for kind, size in (("gib", args.gib), ("mixed", args.mixed)):
        if kind not in sections:
            continue
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.repeat):
            for v in variants:
                runs[v].append(run(kind, size, v, peer))
        result[kind] = {v: summary(r, kind) for v, r in runs.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Python {result['python']}, median of {args.repeat} (variants interleaved)")
    if "walk" in result:
        w = result["walk"]
        print(f"walk: {w['objects']:,} objects, median {w['rate_median'] / 1e6:.1f}M objects/s "
              f"(runs: {', '.join(f'{r / 1e6:.1f}M' for r in w['rates'])}; target >= 10M/s)")
    for kind, title in (("gib", "prepare_fork, {gib:.2f} GiB heap, {objects:,} objects (target with the map "
                                "<= 0.5 s/GiB):"),
                        ("mixed", "prepare_fork, mixed heap, {gib:.2f} GiB, {objects:,} objects (target >= 10M "
                                  "objects/s):")):
        if kind in result:
            first = result[kind]["map"]
            print(title.format(gib=first["heap_bytes"] / 2**30, objects=first["objects"]))
            for v, s in result[kind].items():
                print(line(v, kind, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
