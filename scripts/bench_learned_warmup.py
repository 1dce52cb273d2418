#!/usr/bin/env python3
"""Benchmark: learned warm-up (``COWPROF_WARMUP=learned``) against the zero-config warm-up and a
warm-up configured by hand, on the fixture apps of tests/serverapps under gunicorn.

Per cell, each variant is a cowprof-mode server of tests/prefork_servers.py, loaded with the same
requests (the catalog's mix: list, product, category and API pages), scanned after the load with
its workers alive:

- ``zero-config``: the hook with nothing configured (a first start);
- ``learned-first``: ``COWPROF_WARMUP=learned`` on a first start (nothing learned yet: its workers
  count the paths they serve and write them at their exit);
- ``learned-second``: the same app started again after that: its warm-up requests the learned paths;
- ``by-hand``: ``COWPROF_WARMUP`` naming one path of each kind of page of the mix (what a user who
  reads docs/servers.md would set).

Variants run one after the other (the second start needs the first one stopped); the copies they
are compared on hardly depend on the machine's load. Every server it starts is stopped by PID.

    .venv/py3.12/bin/python scripts/bench_learned_warmup.py [--cells gunicorn-sync/flask,gunicorn-sync/django]
        [--workers 4] [--requests 3000] [--json out.json]
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

from prefork_servers import APPS, MB, Cell, ModeRun, make_databases, run_cell  # noqa: E402

#: one path of each kind of page the catalog's request mix has (tests/serverapps/catalog_data.py)
BY_HAND = {"django": "/?page=1,/products/1/,/categories/oak-goods/,/api/products/1,/health,/admin/login/",
           "flask": "/?page=1,/products/1/,/categories/oak-goods/,/api/products/1,/health"}
VARIANTS = ("zero-config", "learned-first", "learned-second", "by-hand")


def _row(variant: str, run: ModeRun, warmup: dict) -> dict:
    workers = run.pages.workers if run.pages is not None else []
    return {"variant": variant, "copied_mean": run.copied_mean, "copied_max": run.copied_max,
            "uss_mean": sum(w.uss_bytes for w in workers) / max(len(workers), 1),
            "total_pss": run.total_pss, "cpu_ms_per_request": run.cpu_ms_per_request,
            "answered": run.ok, "requested": run.requested,
            "warmup_paths": len((warmup.get("warmup") or {}).get("paths") or ()),
            "warmup_seconds": (warmup.get("warmup") or {}).get("seconds"),
            "learned_paths": len(warmup.get("learned_paths") or ())}


def bench_cell(cell: Cell, work: Path, *, workers: int, requests: int) -> list[dict]:
    (work / "db").mkdir(parents=True)
    env = make_databases(work / "db")
    rows = []
    for variant in VARIANTS:
        extra = {**env, "COWPROF_PRELOAD_DIR": str(work / "preload"), "COWPROF_APP_KEY": f"bench-{cell.app}",
                 "COWPROF_PREPARE_REPORT": str(work / f"{variant}.json")}
        if variant.startswith("learned"):
            extra["COWPROF_WARMUP"] = "learned"
        elif variant == "by-hand":
            extra["COWPROF_WARMUP"] = BY_HAND[cell.app]
        else:
            extra["COWPROF_APP_KEY"] = f"bench-{cell.app}-zero"
        runs = run_cell(cell, ["cowprof"], work / variant, requests=requests, workers=workers, env=extra)
        report = json.loads((work / f"{variant}.json").read_text())
        rows.append(_row(variant, runs[0], report))
        time.sleep(0.5)  # the stopped workers' exit records are written by now (run_cell waited for them)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="gunicorn-sync/flask,gunicorn-sync/django")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    cells = [Cell(*c.split("/")) for c in args.cells.split(",") if c]
    for cell in cells:
        if cell.app not in BY_HAND or APPS[cell.app].kind != "wsgi" or not cell.server.startswith("gunicorn"):
            raise SystemExit(f"bench_learned_warmup: {cell}: only gunicorn cells of the WSGI fixtures "
                             f"({', '.join(BY_HAND)}) learn paths")
    started = time.time()
    out = []
    with tempfile.TemporaryDirectory(prefix="cowprof-bench-learned-") as tmp:
        for cell in cells:
            for row in bench_cell(cell, Path(tmp) / str(cell).replace("/", "-"), workers=args.workers,
                                  requests=args.requests):
                out.append({"cell": str(cell), **row})
    print(f"Python {platform.python_version()}, {args.workers} workers, {args.requests} requests per variant; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {time.time() - started:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| cell | variant | copied/worker MiB mean (max) | USS/worker MiB | total PSS MiB | CPU ms/req "
          "| warm-up paths (learned) | warm-up s | answered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['cell']} | {r['variant']} | {r['copied_mean'] / MB:.2f} ({r['copied_max'] / MB:.2f}) | "
              f"{r['uss_mean'] / MB:.2f} | {r['total_pss'] / MB:.0f} | {r['cpu_ms_per_request']:.2f} | "
              f"{r['warmup_paths']} ({r['learned_paths']}) | {r['warmup_seconds'] or 0:.2f} | "
              f"{r['answered']}/{r['requested']} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
