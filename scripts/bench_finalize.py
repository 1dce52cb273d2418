#!/usr/bin/env python3
"""Benchmark of what keeping finalizable objects mortal and finalizing them at exit costs.

1. Copy-on-write cost: a master holds a 1M-object heap and N objects with a finalizer (open files,
   suspended generators, instances of a class with __del__, each held by a small dict); a forked
   child reads all of them once (as a worker serving requests would). Reported: the child's
   Private_Dirty growth, prepared (those objects and their holders stay mortal) against the same
   heap without the N objects, and against baseline (no prepare_fork).
2. Exit cost: how long the interpreter takes to exit (from the script's last line until the
   parent sees it gone) for a process that then created Y young objects, F of them with a
   finalizer, prepared against baseline (which finalizes the same objects in module teardown), and
   the part of it spent in cowprof.finalize.finalize_all (ordering and running the finalizers).

3. Walk overhead (--peer DIR): CPU seconds of the native walk (no heap map) on a 2.2M-object heap
   with a few hundred objects with a finalizer, this checkout's build against the build in DIR (a
   checkout of the code before this change, built in place), interleaved. CPU time of the walk
   thread, so that other load on the machine disturbs it less than wall time.

Each measurement runs in a fresh interpreter (the walk immortalizes the heap it runs in).

    .venv/py3.12/bin/python scripts/bench_finalize.py [--repeat 3] [--json] [--peer DIR [--walk-runs N]
                                                      [--walk-only]]
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
import time

CHILD = r"""
import gc, json, os, re, sys, tempfile, time
mode, n_final, n_young, f_young = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
DIRTY = re.compile(rb"^Private_Dirty:\s+(\d+) kB", re.M)

def private_dirty():
    with open("/proc/self/smaps_rollup", "rb") as f:
        return int(DIRTY.search(f.read()).group(1)) * 1024

class Rec:
    def __init__(self, i):
        self.ident, self.name, self.score = i + 1000, "rec-%d" % i, i * 0.5

class WithDel:
    def __init__(self, i):
        self.i = i
    def __del__(self):
        pass

def gen(i):
    yield i

heap = [(Rec(i), {"k": i * 1.5, "s": "v%d" % i}) for i in range(330_000)]
tmp = tempfile.mkdtemp(prefix="cowprof-bench-finalize-")
kinds = []
for i in range(n_final):
    k = i % 3
    obj = open(os.path.join(tmp, "f%d" % i), "w") if k == 0 else (gen(i) if k == 1 else WithDel(i))
    kinds.append({"obj": obj})
gc.collect()
import cowprof
from cowprof import finalize
t = time.perf_counter()
report = cowprof.prepare_fork(heapmap=False) if mode == "prepare" else None
prepare_s = time.perf_counter() - t
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    before = private_dirty()
    total = 0
    for rec, d in heap:          # read everything once: attribute and item loads, refcount traffic
        total += rec.ident + len(d["s"])
    for d in kinds:
        o = d["obj"]
        total += hash(o) & 1
    grown = private_dirty() - before
    os.write(w, json.dumps({"grown": grown}).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(r, 1 << 16))
young = [[i] for i in range(n_young)]
young_final = [open(os.path.join(tmp, "y%d" % i), "w") for i in range(f_young)]
untimed = finalize.finalize_all

def timed():  # what the exit hook calls, timed; the result goes to stderr (stdout is closed late)
    t = time.perf_counter()
    ran = untimed()
    sys.__stderr__.write(json.dumps({"finalize_s": time.perf_counter() - t, "ran": ran}) + "\n")
    sys.__stderr__.flush()
    return ran

finalize.finalize_all = timed
print(json.dumps({"tmp": tmp, "child_grown": child["grown"], "prepare_s": prepare_s,
                  "left_mortal": report.left_mortal if report else 0,
                  "with_finalizer": report.with_finalizer if report else 0, "end": time.time()}), flush=True)
"""


WALK = r"""
import gc, json, sys, time
class Rec:
    def __init__(self, i):
        self.ident, self.name, self.score = i + 1000, "rec-%d" % i, i * 0.5
class WithDel:
    def __del__(self):
        pass
heap = [(Rec(i), {"id": i, "city": "c%d" % i}, ("k%d" % i, i * 1.5)) for i in range(200_000)]
files = [{"f": open("/dev/null", "w"), "d": WithDel()} for _ in range(100)]
gc.collect()
from cowprof import _native
gc_head = sys.getsizeof([]) - [].__sizeof__()
t = time.thread_time()
r = _native.walk(gc_head=gc_head)
print(json.dumps({"cpu_s": time.thread_time() - t, "wall_s": r["seconds"], "objects": r["objects"]}))
"""


def walk_cpu(tree: str | None) -> dict:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, check=True, env=env,
                         cwd=tree or None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(mode: str, n_final: int, n_young: int = 0, f_young: int = 0) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(n_final), str(n_young), str(f_young)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the script's last line; the interpreter exits from here on
    proc.wait()
    gone = time.time()
    out = json.loads(line)
    err = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith("{")]
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, proc.returncode
    shutil.rmtree(out["tmp"])
    out["exit_s"] = gone - out["end"]
    out["finalize_s"] = err[0]["finalize_s"] if err else 0.0
    out["ran"] = err[0]["ran"] if err else 0
    return out


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--peer", help="a checkout whose in-place build is the walk's peer (section 3)")
    ap.add_argument("--walk-runs", type=int, default=5, help="walks per build in section 3")
    ap.add_argument("--walk-only", action="store_true", help="only section 3")
    args = ap.parse_args()
    if sys.version_info < (3, 12):
        print("bench_finalize: needs CPython 3.12+", file=sys.stderr)
        return 2
    rows = []
    cases = [] if args.walk_only else [("baseline", 0, 0, 0), ("prepare", 0, 0, 0),
                                       ("baseline", 3000, 0, 0), ("prepare", 3000, 0, 0),
                                       ("baseline", 0, 200_000, 0), ("prepare", 0, 200_000, 0),
                                       ("baseline", 3000, 200_000, 1000), ("prepare", 3000, 200_000, 1000)]
    for mode, n_final, n_young, f_young in cases:
        runs = [run(mode, n_final, n_young, f_young) for _ in range(args.repeat)]
        rows.append({"mode": mode, "finalizable_at_prepare": n_final, "young": n_young,
                     "young_finalizable": f_young, "child_grown_kib": median(runs, "child_grown") / 1024,
                     "prepare_s": median(runs, "prepare_s"), "exit_s": median(runs, "exit_s"),
                     "finalize_s": median(runs, "finalize_s"),
                     "finalizers_run": runs[0]["ran"], "left_mortal": runs[0]["left_mortal"],
                     "with_finalizer": runs[0]["with_finalizer"]})
    result: dict = {"python": platform.python_version(), "repeat": args.repeat, "rows": rows}
    if args.peer:
        walks: dict[str, list[dict]] = {"this": [], "peer": []}
        for _ in range(args.walk_runs):
            walks["peer"].append(walk_cpu(os.path.abspath(args.peer)))
            walks["this"].append(walk_cpu(None))
        result["walk"] = {k: {"objects": v[0]["objects"], "cpu_s": [w["cpu_s"] for w in v],
                              "cpu_s_median": median(v, "cpu_s"), "cpu_s_min": min(w["cpu_s"] for w in v)}
                          for k, v in walks.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Python {result['python']} (median of {args.repeat}); heap: 1M objects")
    if rows:
        print("mode      final@prep    young  young-final  child copied  prepare_fork       exit  finalize_all"
              "    ran  left mortal")
    for r in rows:
        print(f"{r['mode']:9} {r['finalizable_at_prepare']:10,} {r['young']:8,} {r['young_finalizable']:12,} "
              f"{r['child_grown_kib']:8,.0f} KiB {r['prepare_s']:11.3f} s {r['exit_s'] * 1000:7.0f} ms "
              f"{r['finalize_s'] * 1000:10.1f} ms {r['finalizers_run']:6,} {r['left_mortal']:11,}")
    if "walk" in result:
        for k, w in result["walk"].items():
            print(f"walk CPU, {k} build: {w['objects']:,} objects, median {w['cpu_s_median']:.3f} s, "
                  f"min {w['cpu_s_min']:.3f} s "
                  f"({', '.join(f'{x:.3f}' for x in w['cpu_s'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
