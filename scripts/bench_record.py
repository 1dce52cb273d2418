#!/usr/bin/env python3
"""Benchmark of ``cowprof record``'s CPU per sample, with and without ``--by``.

Starts an app of tests/attribution_apps.py (default: ``floats``, ``--n`` mortal floats that every
worker reads, so each worker copies the whole float heap) twice: prepared (it saves a heap map)
and with ``--no-cowprof`` (the objects are read from its memory). Then runs the loop of ``cowprof
record`` in this process (``cowprof.commands.record.record_loop``: Sampler, RecordWriter,
Attributor) for ``--samples`` samples per variant, the variants interleaved round by round, and reports the CPU
time (``time.process_time``) of the first sample (which loads the heap map or reads the master's
memory) and the median of the others:

* ``pages``: ``record`` without ``--by`` (the peer);
* ``--by type`` / ``--by cause`` / ``--by type --by function``: with the master's heap map;
* ``--by type, map re-read``: what every sample would cost without the Attributor's reuse (the heap
  map found and joined from scratch per sample, as ``snapshot --by type`` does);
* ``memory --by type``: the master without cowprof, its objects read from its memory.

Each variant runs twice: ``idle`` (the real Scanner: an idle tree is not rescanned, the previous
report and its attribution stand) and ``changing`` (every sample a fresh page scan, as on a busy
server: the attribution is joined again, the map is still kept).

    .venv/py3.12/bin/python scripts/bench_record.py [--n 1000000 --samples 8 --rounds 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-bench-heapmaps-"))

from attribution_apps import App  # noqa: E402

from cowprof import attribution, heapmap  # noqa: E402
from cowprof.commands.record import record_loop  # noqa: E402
from cowprof.attributor import Attributor, SampleAttribution  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from cowprof.record import RecordWriter  # noqa: E402
from cowprof.sampler import Sampler  # noqa: E402

MIB = 1 << 20


class Rescan(Attributor):
    """The peer without reuse: find the heap map and join it from scratch every sample."""

    def attribute(self, report):  # type: ignore[override]
        t0 = time.perf_counter()
        hm = heapmap.find_heapmap(self.master)
        return SampleAttribution(attribution.attribute(report, hm, causes=False), None, None,
                                 seconds=time.perf_counter() - t0)


def run(master: int, variant: str, changing: bool, samples: int, directory: str) -> tuple[float, float, float]:
    """(CPU of the first sample, median CPU of the others, copied MiB) of one recording."""
    by = {"pages": None, "type": {}, "cause": {"causes": True}, "function": {"functions": True},
          "rescan": {}, "memory": {}}[variant]
    keep = by is not None
    fresh = (lambda tree, _p: scan(tree, keep_addresses=keep)) if changing else None
    sampler = Sampler(master, interval=0.05, count=samples, keep_addresses=keep, scan=fresh)
    att = None
    if by is not None:
        att = (Rescan if variant == "rescan" else Attributor)(sampler.master, **by)
    cpu: list[float] = []
    copied = [0]
    mark = [time.process_time()]

    def on_sample(sample):
        now = time.process_time()
        cpu.append(now - mark[0])
        mark[0] = now
        if sample.report is not None:
            copied[0] = sum(w.copied_bytes for w in sample.report.workers)

    path = os.path.join(directory, f"{variant}-{int(changing)}-{time.monotonic_ns()}.jsonl")
    with RecordWriter(path, target={"pid": master}) as writer:
        record_loop(sampler, writer, on_sample, attributor=att, top=20)
        writer.close("count")
    os.unlink(path)
    return cpu[0], statistics.median(cpu[1:]), copied[0] / MIB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=("floats", "gc", "strhash"), default="floats")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {args.scenario} n={args.n:,}, "
          f"{args.workers} workers, {args.samples} samples per recording, {args.rounds} rounds interleaved, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            App(args.scenario, n=args.n, workers=args.workers, timeout=600) as prepared, \
            App(args.scenario, n=args.n, workers=args.workers, timeout=600, cowprof=False) as bare:
        variants = ["pages", "type", "rescan", "cause", "function", "memory"]
        for _round in range(args.rounds):
            for changing in (False, True):
                for v in variants:
                    master = bare.master if v == "memory" else prepared.master
                    results.setdefault((v, changing), []).append(run(master, v, changing, args.samples, tmp))
    labels = {"pages": "pages (no --by), the peer", "type": "--by type", "rescan": "--by type, map re-read each sample",
              "cause": "--by cause", "function": "--by type --by function", "memory": "memory --by type (no heap map)"}
    print(f"\n| variant | tree | first sample CPU (s) | CPU per later sample (ms) | x peer | copied MiB |")
    print("|---|---|---|---|---|---|")
    for changing in (False, True):
        peer = statistics.median(r[1] for r in results[("pages", changing)])
        for v in labels:
            rs = results[(v, changing)]
            first = statistics.median(r[0] for r in rs)
            later = statistics.median(r[1] for r in rs)
            print(f"| {labels[v]} | {'changing' if changing else 'idle'} | {first:.3f} | {later * 1e3:.1f} "
                  f"| {later / peer if peer else float('nan'):.1f} | {rs[-1][2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
