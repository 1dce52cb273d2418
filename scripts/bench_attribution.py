#!/usr/bin/env python3
"""Benchmark of attribution: by type (heap map join) and by cause (page diffs) on a big tree.

Starts an app of tests/attribution_apps.py (``--scenario floats``: ``--n`` mortal floats in
GC-untracked dicts that every worker reads, so each copies the whole float heap and the pages come
back identical; ``gc``: ``--n`` tracked objects whose GC headers a collection in every worker
rewrites, about 2 changed words per 48 bytes to classify), then times, best
of ``--repeat``: loading the heap map, the page scan with addresses, ``by_type`` alone and the full
``attribute`` (by type + by cause, which reads every copied page of every worker and its original).
Prints one line per step with seconds, records, copied MiB and MiB/s for the by-cause step.

    .venv/py3.12/bin/python scripts/bench_attribution.py [--scenario floats --n 2000000 --workers 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-bench-heapmaps-"))

from attribution_apps import App  # noqa: E402

from cowprof import attribution, heapmap  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from cowprof.tree import find_tree  # noqa: E402

MIB = 1 << 20


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=("floats", "gc", "strhash"), default="floats")
    ap.add_argument("--n", type=int, default=2_000_000, help="objects of the scenario in the master's heap")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {args.scenario} n={args.n:,}, "
          f"{args.workers} workers, best of {args.repeat}")
    t0 = time.perf_counter()
    with App(args.scenario, n=args.n, workers=args.workers, timeout=300) as app:
        print(f"app ready in {time.perf_counter() - t0:.1f}s (build, prepare_fork, workers read)")
        tree = find_tree(app.master)
        t_load, hm = best(lambda: heapmap.find_heapmap(tree.master), args.repeat)
        t_scan, report = best(lambda: scan(tree, keep_addresses=True), args.repeat)
        copied = sum(w.copied_bytes for w in report.workers)
        t_type, types = best(lambda: attribution.by_type(report, hm), args.repeat)
        t_all, attr = best(lambda: attribution.attribute(report, hm, causes=True), args.repeat)
    print(f"heap map load:  {t_load:.3f}s  ({len(hm):,} records)")
    print(f"page scan:      {t_scan:.3f}s  (mode {report.mode}, copied {copied / MIB:.0f} MiB in "
          f"{len(report.workers)} workers)")
    print(f"by type:        {t_type:.3f}s  ({copied / MIB / t_type:.0f} MiB copied/s)")
    print(f"type + cause:   {t_all:.3f}s  ({copied / MIB / t_all:.0f} MiB copied/s; reads each copied page "
          "and its original)")
    print("top types:", ", ".join(f"{t} {b / MIB:.0f} MiB" for t, b in attr.total_types()[:3]))
    print("top causes:", ", ".join(f"{c} {b / MIB:.0f} MiB" for c, b in (attr.total_causes() or [])[:3]))
    del types
    return 0


if __name__ == "__main__":
    sys.exit(main())
