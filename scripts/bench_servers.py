#!/usr/bin/env python3
"""Benchmark: real servers x frameworks x fork recipe, per-worker copied memory and server CPU.

One table: each cell (gunicorn sync / gthread / UvicornWorker / gunicorn's own ASGI worker, uWSGI,
Celery prefork with Redis, a multiprocessing fork Pool; running the Django, Flask, FastAPI,
Celery and multiprocessing fixtures of tests/serverapps) in each mode: ``baseline`` (the app
preloaded, nothing else), ``gc-freeze`` (the ``gc`` documentation's recipe) and ``cowprof``
(docs/servers.md's recipe for that server, default settings). Within a cell the modes' servers run side
by side and get the same requests (or tasks) in interleaved batches, so whatever else runs on the
machine slows every mode alike (tests/prefork_servers.py, ``run_cell``). After the load, with the
workers still running, cowprof's page scan gives per worker the copied bytes (mean, max, and the
worst worker in % of the master's RSS), and the total PSS of master + workers; server CPU is the
user + system time of the master and its workers during the load, per request (requests/s depends
on how keep-alive connections spread over workers, CPU per request does not).

Targets (issue 14, per cell, for ``cowprof``): worst worker ≤ 1% of the master's RSS and ≤ 1/5 of
the baseline's worst; CPU per request ≤ 1.03x the baseline's. The column "before load" gives
the least and the most a worker had copied once every mode's workers were up and one had
answered the readiness probe, before any load: what starting a worker costs, which no load
reduces. ``--attribution`` adds the top three copied types and causes of the cowprof mode (its
heap map), as ``cowprof snapshot --by type|cause`` would show. Every server (and Redis) it
starts is stopped by PID before it exits.

    .venv/py3.12/bin/python scripts/bench_servers.py [--cells gunicorn-sync/django,uwsgi/flask]
        [--modes baseline,gc-freeze,cowprof] [--workers 4] [--requests 3000] [--attribution]
        [--env cowprof:COWPROF_WARMUP=/,/health] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-bench-heapmaps-"))

from prefork_servers import ALL_CELLS, MB, MODES, Cell, ModeRun, make_databases, run_cell  # noqa: E402

from cowprof.errors import CowprofError  # noqa: E402
from demo.run import collect_attribution  # noqa: E402

TARGET_PCT_OF_MASTER = 1.0
TARGET_OF_BASELINE = 1 / 5
TARGET_CPU_RATIO = 1.03
#: load units per mode: web requests, Celery tasks, multiprocessing tasks (each reads all its data)
DEFAULT_LOAD = {"celery": 1000, "mp-pool": 1000}


def _parse_env(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        mode, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or mode not in MODES or not key:
            raise SystemExit(f"bench_servers: --env wants MODE:NAME=VALUE with MODE in {', '.join(MODES)}, "
                             f"got {item!r}")
        out.setdefault(mode, {})[key] = value
    return out


def _cells(spec: str) -> list[Cell]:
    if spec == "all":
        return list(ALL_CELLS)
    cells = []
    for part in spec.split(","):
        server, _, app = part.strip().partition("/")
        try:
            cells.append(Cell(server, app))
        except ValueError as err:
            raise SystemExit(f"bench_servers: {err}") from None
    return cells


def _row(run: ModeRun, base: ModeRun | None) -> dict[str, object]:
    row = run.summary()
    row["pss_over_master_rss"] = round(run.total_pss / run.pages.master.rss_bytes, 3) if run.pages else None
    if base is not None and base is not run:
        row["copied_max_over_baseline"] = round(run.copied_max / base.copied_max, 3) if base.copied_max else None
        row["cpu_over_baseline"] = (round(run.cpu_ms_per_request / base.cpu_ms_per_request, 3)
                                    if base.cpu_ms_per_request else None)
    return row


def _verdict(row: dict[str, object]) -> str:
    if row["mode"] != "cowprof":
        return ""
    marks = ["≤1%: " + ("yes" if row["copied_max_pct_of_master_rss"] <= TARGET_PCT_OF_MASTER else "no")]
    if row.get("copied_max_over_baseline") is not None:
        marks.append("≤1/5: " + ("yes" if row["copied_max_over_baseline"] <= TARGET_OF_BASELINE else "no"))
    if row.get("cpu_over_baseline") is not None:
        marks.append("CPU ≤1.03×: " + ("yes" if row["cpu_over_baseline"] <= TARGET_CPU_RATIO else "no"))
    return ", ".join(marks)


def _boot(row: dict[str, object]) -> str:
    least, most = row.get("boot_copied_min_bytes"), row.get("boot_copied_max_bytes")
    rss = row["master_rss_bytes"]
    if not isinstance(least, int) or not isinstance(most, int) or not isinstance(rss, int) or not rss:
        return "—"
    return f"{least / MB:.2f}–{most / MB:.2f} ({100.0 * least / rss:.1f}–{100.0 * most / rss:.1f}%)"


def markdown(rows: list[dict[str, object]]) -> str:
    head = ("| cell | mode | copied/worker MiB mean (max) | worst worker, % master RSS | "
            "before load MiB, least–most (% RSS) | vs baseline | "
            "total PSS MiB | CPU ms/req | vs baseline | targets |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        vs = r.get("copied_max_over_baseline")
        cpu = r.get("cpu_over_baseline")
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['copied_mean_bytes'] / MB:.1f} ({r['copied_max_bytes'] / MB:.1f}) | "
            f"{r['copied_max_pct_of_master_rss']:.1f}% of {r['master_rss_bytes'] / MB:.0f} | {_boot(r)} | "
            f"{'' if vs is None else f'{vs:.2f}×'} | {r['total_pss_bytes'] / MB:.0f} | "
            f"{r['cpu_ms_per_request']:.2f} | {'' if cpu is None else f'{cpu:.2f}×'} | {_verdict(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="all", help="comma-separated server/app cells, or 'all' (default): "
                   + ", ".join(map(str, ALL_CELLS)))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: %(default)s")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--requests", type=int, default=3000, help="requests per mode for the web cells")
    p.add_argument("--batch", type=int, default=250, help="requests per interleaved batch")
    p.add_argument("--concurrency", type=int, default=4, help="client threads for the web cells")
    p.add_argument("--attribution", action="store_true", help="top copied types and causes of the cowprof mode")
    p.add_argument("--env", action="append", default=[], metavar="MODE:NAME=VALUE",
                   help="extra environment for one mode's servers (repeatable)")
    p.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise SystemExit(f"bench_servers: --modes takes distinct modes from {', '.join(MODES)}")
    if args.workers < 1 or args.requests < 1 or args.batch < 1:
        raise SystemExit("bench_servers: --workers, --requests and --batch must be positive")
    cells = _cells(args.cells)
    mode_env = _parse_env(args.env)
    work = Path(tempfile.mkdtemp(prefix="cowprof-bench-servers-"))
    databases = make_databases(work)
    started = time.time()
    rows: list[dict[str, object]] = []

    def collect(run: ModeRun, tree) -> None:
        if args.attribution and run.mode == "cowprof":
            collect_attribution(run, tree)  # type: ignore[arg-type] - needs .pages and .extras only

    for cell in cells:
        print(f"# {cell} ...", file=sys.stderr, flush=True)
        try:
            runs = run_cell(cell, modes, work, requests=DEFAULT_LOAD.get(cell.server, args.requests),
                            batch=args.batch, workers=args.workers, concurrency=args.concurrency, env=databases,
                            mode_env=mode_env, keep_addresses=args.attribution, scan_boot=True,
                            collect=collect,
                            load_deadline=600.0)
        except CowprofError as err:
            print(f"bench_servers: {cell}: {err}", file=sys.stderr)
            return 1
        base = next((r for r in runs if r.mode == "baseline"), None)
        for run in runs:
            if run.ok != run.requested:
                print(f"  note: {run.cell} {run.mode}: {run.ok}/{run.requested} ok ({run.first_error})",
                      file=sys.stderr)
            rows.append(_row(run, base))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"Python {platform.python_version()}, {args.workers} workers, {args.requests} requests per mode "
          f"(Celery {DEFAULT_LOAD['celery']} tasks, mp-pool {DEFAULT_LOAD['mp-pool']} tasks), modes "
          f"{', '.join(modes)}; {when}, {time.time() - started:.0f} s; load average {os.getloadavg()[0]:.1f}\n")
    print(markdown(rows))
    if args.attribution:
        print()
        for r in rows:
            if r.get("top_types") or r.get("attribution_error"):
                types = ", ".join(f"{n} {b / MB:.1f}" for n, b in r.get("top_types") or [])
                causes = ", ".join(f"{n} {b / MB:.1f}" for n, b in r.get("top_causes") or [])
                print(f"- {r['cell']} {r['mode']}: top types (MiB, all workers) {types or '—'}; "
                      f"top causes {causes or '—'}{'; ' + str(r['attribution_error']) if r.get('attribution_error') else ''}")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "workers": args.workers,
                                         "requests": args.requests, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
