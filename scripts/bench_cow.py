#!/usr/bin/env python3
"""Benchmark of the fix itself: what a forked child that reads a whole mixed heap copies.

A fresh interpreter builds a mixed heap (tests/prepare_heap.py: instances with dicts, atomic dicts,
tuples, str, float, functions), optionally prepares it, forks, and the child reads every object twice
and collects; the child's growth in private dirty memory over the heap's size is the copied share.
Modes, measured in the same run: ``cowprof`` (prepare_fork), ``baseline`` (nothing) and ``gc.freeze``
(the gc module's recipe). Target (issue: CPython versions): cowprof <= 3%, baseline > 30%.

    .venv/py3.12/bin/python scripts/bench_cow.py [--objects 4000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HEAP_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "prepare_heap.py")
MODES = {"cowprof": "prepare", "baseline": "baseline", "gc.freeze": "freeze"}


def run(mode: str, objects: int) -> dict:
    proc = subprocess.run([sys.executable, HEAP_SCRIPT, MODES[mode], str(objects)], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"bench_cow: {mode} run failed: {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["child_status"] != 0:
        raise SystemExit(f"bench_cow: the {mode} child exited with {out['child_status']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=4_000_000, help="heap size in objects (4M: ~225 MB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode, interleaved")
    args = ap.parse_args()
    shares: dict[str, list[float]] = {m: [] for m in MODES}
    heap: list[int] = []
    for _ in range(args.repeat):
        for mode in MODES:
            out = run(mode, args.objects)
            heap.append(out["heap_bytes"])
            shares[mode].append(out["child_dirty_growth_bytes"] / out["heap_bytes"])
    print(f"CPython {platform.python_version()}, heap {statistics.median(heap) / 1e6:.0f} MB "
          f"({args.objects:,} objects requested), {args.repeat} runs per mode")
    for mode, vals in shares.items():
        print(f"  {mode:10s} child copied {statistics.median(vals):6.1%} of the heap "
              f"(runs: {', '.join(f'{v:.1%}' for v in vals)})")
    ok = statistics.median(shares["cowprof"]) <= 0.03 and min(shares["baseline"]) > 0.30
    print("  target (cowprof <= 3%, baseline > 30%):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
