#!/usr/bin/env python3
"""Benchmark and accuracy check of attribution from outside (cowprof.remote) on the sample app.

Starts the sample app under gunicorn in the demo's ``baseline`` mode (preload_app, nothing prepared;
the master saves a measurement-only heap map after loading the app), sends the demo's requests,
then on the live tree times, best of ``--repeat``: the page scan with addresses, the by-type join
with the saved heap map, and the objects read from the master's memory (``heapmap_from_memory``)
plus the same join. Prints both tables side by side and the largest per-type difference in % of
the copied bytes (the accuracy bar: 5%).

    .venv/py3.12/bin/python scripts/bench_remote.py [--heap-mb 190 --workers 4 --requests 20000]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the demo package
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-bench-heapmaps-"))

from cowprof import attribution, functions, heapmap  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from cowprof.remote import heapmap_from_memory  # noqa: E402
from cowprof.remote.target import Memory  # noqa: E402
from demo.run import DemoConfig, run_mode, sample_request_paths  # noqa: E402

MIB = 1 << 20


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def compare(from_map: attribution.Attribution, from_mem: attribution.Attribution, rows: int = 12) -> float:
    """Print both by-type tables; returns the largest |difference| of a type in % of copied bytes."""
    a, b = dict(from_map.total_types()), dict(from_mem.total_types())
    copied = sum(w.copied_bytes for w in from_map.workers)
    worst = 0.0
    names = sorted(set(a) | set(b), key=lambda t: -max(a.get(t, 0), b.get(t, 0)))
    print(f"{'type':44s} {'heap map MiB':>12s} {'memory MiB':>11s} {'diff':>8s}")
    for i, t in enumerate(names):
        d = (b.get(t, 0) - a.get(t, 0)) / copied * 100
        if t not in (attribution.NO_OBJECT, attribution.UNKNOWN_MEMORY):
            worst = max(worst, abs(d))
        if i < rows:
            print(f"{t[:44]:44s} {a.get(t, 0) / MIB:12.2f} {b.get(t, 0) / MIB:11.2f} {d:+7.2f}%")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heap-mb", type=float, default=190.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = replace(DemoConfig(), heap_mb=args.heap_mb, workers=args.workers, requests=args.requests,
                  out_dir=tempfile.mkdtemp(prefix="cowprof-bench-remote-"))
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, sample app {cfg.heap_mb:g} MB heap, "
          f"{cfg.workers} workers, {cfg.requests:,} requests, baseline mode, best of {args.repeat}")
    out: dict[str, float] = {}

    def collect(result, tree) -> None:
        t_scan, report = best(lambda: scan(tree, keep_addresses=True), args.repeat)
        hm = heapmap.find_heapmap(tree.master)
        t_map, from_map = best(lambda: attribution.attribute(report, hm, causes=False), args.repeat)
        t_mem, from_mem = best(lambda: attribution.attribute(report, heapmap_from_memory(report), causes=False),
                               args.repeat)
        rhm = heapmap_from_memory(report)
        with Memory(tree.master) as mem:
            t_fn, fa = best(lambda: functions.by_function(report, rhm, mem, rhm.interpreter), 1)
        copied = sum(w.copied_bytes for w in report.workers)
        print(f"page scan:            {t_scan:.3f}s  (copied {copied / MIB:.0f} MiB in {len(report.workers)} workers)")
        print(f"by type, heap map:    {t_map:.3f}s  ({len(hm):,} records)")
        print(f"by type, from memory: {t_mem:.3f}s  ({len(rhm):,} allocations on copied pages: "
              f"{rhm.found.pool_pages:,} pool pages, {rhm.found.chunk_pages:,} malloc-chunk pages, "
              f"{rhm.found.other_pages:,} other)")
        print(f"by function (names):  {t_fn:.3f}s  (code objects {fa.code_bytes / MIB:.1f} MiB)")
        out["worst"] = compare(from_map, from_mem)
        unknown = sum(w.unknown_bytes for w in from_mem.workers)
        print(f"largest per-type difference: {out['worst']:.2f}% of copied bytes; unknown {unknown / copied:.1%}")
        print("top functions:", ", ".join(f"{f.name} {b / MIB:.2f} MiB" for f, b in fa.functions[:3]))

    paths = sample_request_paths(cfg.requests, seed=cfg.seed)
    run_mode("baseline", cfg, paths, collect=collect, keep_addresses=True)
    return 0 if out.get("worst", 100.0) <= 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
