#!/usr/bin/env python3
"""Benchmark of ``cowprof export``: CPU the exporter costs, as % of one core, and scrape latency.

Starts the bundled sample app under gunicorn (4 workers, preloaded, loopback) — idle, or busy with
``--load N`` client threads from a separate process (the bundled load generator, loopback only,
stopping by itself) — then ``python -m cowprof export MASTER --port 0 --interval S`` (the port is
read from its log line), scrapes ``/metrics`` every ``--scrape-every`` seconds for ``--duration``
seconds and reads the exporter's CPU times (psutil, user + system) after a warm-up. Every process
it starts is stopped by PID at the end.

    .venv/py3.12/bin/python scripts/bench_export.py [--interval 5] [--duration 30] [--load 0] [--sample-mb MB]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_top import LOAD, start_sample_app, stop  # noqa: E402

_SERVING = re.compile(r"serving http://[^:]+:(\d+)/metrics")


def _port_from_log(proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Read the exporter's stderr until it says where it serves; keep draining it afterwards."""
    found: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stderr:
            m = _SERVING.search(line)
            if m and not found:
                found.append(int(m.group(1)))
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout):
        raise SystemExit("the exporter did not start serving in time")
    return found[0]


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sample-mb", type=float, default=None, help="SAMPLE_APP_MB (default: the app's)")
    ap.add_argument("--interval", type=float, default=5.0, help="the exporter's --interval")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--scrape-every", type=float, default=0.5)
    ap.add_argument("--load", type=int, default=0, metavar="THREADS", help="client threads keeping the app busy")
    ap.add_argument("--load-lead", type=float, default=20.0, help="seconds of load before the exporter starts")
    args = ap.parse_args(argv)

    from demo.run import free_port

    port = free_port()
    server, master = start_sample_app(args.workers, args.sample_mb, port)
    load = exporter = None
    try:
        if args.load:
            seconds = args.load_lead + args.warmup + args.duration + 30
            load = subprocess.Popen([sys.executable, "-c", LOAD, ROOT, str(port), str(args.load), str(seconds)],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(args.load_lead)
        exporter = subprocess.Popen([sys.executable, "-m", "cowprof", "export", str(master), "--port", "0",
                                     "--bind", "127.0.0.1", "--interval", str(args.interval)],
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{_port_from_log(exporter)}/metrics"
        pexp = psutil.Process(exporter.pid)
        time.sleep(args.warmup)
        c0 = sum(pexp.cpu_times()[:2])
        t0 = time.monotonic()
        latencies, scans, reads, drifts = [], set(), set(), []
        while time.monotonic() - t0 < args.duration:
            s = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read().decode()
            latencies.append(1000 * (time.perf_counter() - s))
            scans.add(_metric(body, "cowprof_last_scan_timestamp_seconds"))
            reads.add(_metric(body, "cowprof_pages_read_timestamp_seconds"))
            drifts.append(_metric(body, "cowprof_pages_drift_bytes"))
            time.sleep(args.scrape_every)
        c1 = sum(pexp.cpu_times()[:2])
        t1 = time.monotonic()
        rss = pexp.memory_info().rss
        pct = 100.0 * (c1 - c0) / (t1 - t0)
        master_proc = psutil.Process(master)
        tree_rss = sum(p.memory_info().rss for p in (master_proc, *master_proc.children()))
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; sample app"
              f"{f' (SAMPLE_APP_MB={args.sample_mb:g})' if args.sample_mb else ''}, master + {args.workers} "
              f"workers, RSS of the tree {tree_rss / 2**20:.0f} MiB, "
              f"{f'busy ({args.load} client threads)' if args.load else 'idle'}")
        print(f"cowprof export --interval {args.interval:g}: {pct:.2f}% of one core over {t1 - t0:.1f} s; "
              f"{len(latencies)} scrapes every {args.scrape_every:g} s, latency median "
              f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms; "
              f"{len(scans - {None})} distinct scan timestamps; exporter RSS {rss / 2**20:.0f} MiB")
        known = [d for d in drifts if d is not None]
        if known:  # an exporter with a page-table tolerance (issue 17)
            print(f"page tables read {len(reads - {None})} times (distinct cowprof_pages_read_timestamp_seconds); "
                  f"cowprof_pages_drift_bytes max {max(known) / 2**20:.2f} MiB, median "
                  f"{statistics.median(known) / 2**20:.2f} MiB")
        return 0
    finally:
        stop(exporter)
        stop(load)
        if load is not None and load.stdout is not None:
            out = load.stdout.read().strip()
            if out:
                print(out)
        stop(server)


if __name__ == "__main__":
    sys.exit(main())
