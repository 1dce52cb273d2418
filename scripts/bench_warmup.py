#!/usr/bin/env python3
"""Benchmark of the zero-config warm-up and the residue fixes on a stock Django project.

A project made as a new user makes one (``django-admin startproject``, sqlite, ``migrate``), served
by gunicorn with ``-c python:cowprof.gunicorn --preload`` and 4 sync workers, in several modes
that switch cowprof's pieces on one by one through the environment; all modes' servers run side
by side and get the same requests (the admin login page, the admin index, an unknown path, the
login page with a ``next`` parameter) in interleaved batches. After the load, with the workers
alive: per worker copied/new/USS, total PSS, the master's RSS, server CPU per request (user+system
of master and workers during the load), the hook's own times and costs, and the top copied types
and causes (attribution). Modes (``--modes``, default all):

- ``baseline``: hook installed, nothing prepared, no warm-up (``COWPROF_PREPARE=0 COWPROF_WARMUP=0``);
- ``gc-freeze``: the gc docs' recipe in a user config (disable early, freeze in ``when_ready``,
  enable after fork), cowprof preparing nothing;
- ``prepare``: ``prepare_fork`` only (cowprof's default before the zero-config warm-up);
- ``hand-warm``: plus ``COWPROF_WARMUP`` set by hand to the three paths, app called directly;
- ``hand-warm+fill``: plus the allocator fill;
- ``zero-config-no-relocation``: the default without hot code relocation;
- ``zero-config-no-release``, ``zero-config-no-empty-pools``, ``zero-config-no-malloc-fill``: the
  default without, cumulatively, the fill of malloc's free chunks, of the empty pools, and the
  release of the type cache and free lists (the default before issue 14's second round);
- ``zero-config-no-settle``: the default with 3.14's LOAD_CONST_MORTAL loads left as they are;
- ``zero-config-fork-fill``: the default plus the (opt-in) fill right before each fork;
- ``zero-config-hugepages``: the default with the master's memory left open to transparent huge
  pages (``COWPROF_NO_HUGEPAGES=0``, the default before);
- ``zero-config``: the default (nothing set but the config module), on a first start;
- ``zero-config-second-start``: the same, after one start of the same app served the same load and
  stopped (its workers' learned hot code is relocated by the second master).

    .venv/py3.12/bin/python scripts/bench_warmup.py [--requests 6000] [--workers 4] [--modes ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]  # test helpers, the demo package
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-bench-heapmaps-"))

from djangoproj import make_project  # noqa: E402
from gunicorn_server import GunicornServer  # noqa: E402

from cowprof import attribution, heapmap, procfs  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from demo.loadgen import merge_results, run_load  # noqa: E402
from demo.run import tree_cpu_seconds  # noqa: E402

MIB = 1 << 20
HAND_PATHS = "/admin/login/,/admin/,/nothing-here/"
REQUEST_MIX = ["/admin/login/"] * 6 + ["/admin/", "/nothing-here/", "/admin/login/?next=/admin/"]
SECOND_START = "_second_start"  # not an environment variable: the bench starts, loads and stops it once first
_OFF = {"COWPROF_WARMUP_FRAMEWORK": "0", "COWPROF_RELOCATE_CODE": "0", "COWPROF_WARMUP_SERVER": "0",
        "COWPROF_FILL_FREE_BLOCKS": "0"}
GC_FREEZE_CONF = """
import gc
gc.disable()

def when_ready(server):
    gc.freeze()

def post_fork(server, worker):
    gc.enable()
"""


def modes(tmp: Path) -> dict[str, dict[str, str]]:
    conf = tmp / "gcfreeze.conf.py"
    conf.write_text(GC_FREEZE_CONF)
    return {
        "baseline": {"COWPROF_PREPARE": "0", "COWPROF_WARMUP": "0"},
        "gc-freeze": {"COWPROF_PREPARE": "0", "COWPROF_WARMUP": "0", "COWPROF_GUNICORN_CONFIG": str(conf)},
        "prepare": {"COWPROF_WARMUP": "0", "COWPROF_FILL_FREE_BLOCKS": "0"},
        "hand-warm": {**_OFF, "COWPROF_WARMUP": HAND_PATHS},
        "hand-warm+fill": {**_OFF, "COWPROF_WARMUP": HAND_PATHS, "COWPROF_FILL_FREE_BLOCKS": "1"},
        "zero-config-no-relocation": {"COWPROF_RELOCATE_CODE": "0"},
        "zero-config-no-release": {"COWPROF_RELEASE_CACHES": "0", "COWPROF_FILL_EMPTY_POOLS": "0",
                                   "COWPROF_FILL_MALLOC": "0"},
        "zero-config-no-empty-pools": {"COWPROF_FILL_EMPTY_POOLS": "0", "COWPROF_FILL_MALLOC": "0"},
        "zero-config-no-malloc-fill": {"COWPROF_FILL_MALLOC": "0"},
        "zero-config-no-settle": {"COWPROF_SETTLE_CONST_LOADS": "0"},
        "zero-config-fork-fill": {"COWPROF_FILL_BEFORE_FORK": "1"},
        "zero-config-hugepages": {"COWPROF_NO_HUGEPAGES": "0"},
        "zero-config-no-function-versions": {"COWPROF_VERSION_FUNCTIONS": "0"},
        "zero-config-no-key-tables": {"COWPROF_IMMORTAL_SHARED_KEYS": "0", "COWPROF_VERSION_KEYS": "0"},
        "zero-config": {},
        "zero-config-second-start": {SECOND_START: "1"},
    }


def summarize(name: str, server: GunicornServer, loads: list, cpu: float, heap: int, report_path: Path) -> dict:
    pages = scan(server.pid, keep_addresses=True)
    ws = pages.workers
    hook = json.loads(report_path.read_text()) if report_path.exists() else {}
    prep = hook.get("prepare") or {}
    warm = hook.get("warmup") or {}
    load = merge_results(loads)
    answered = sum(load.status.values())
    out = {
        "mode": name, "workers": len(ws), "answered": answered, "errors": load.errors,
        "copied_mean": sum(w.copied_bytes for w in ws) / len(ws), "copied_max": max(w.copied_bytes for w in ws),
        "new_mean": sum(w.new_bytes for w in ws) / len(ws), "uss_mean": sum(w.uss_bytes for w in ws) / len(ws),
        "pss_total": pages.master.pss_bytes + sum(w.pss_bytes for w in ws), "master_rss": pages.master.rss_bytes,
        "master_heap": heap, "cpu_ms_per_request": 1000 * cpu / answered if answered else 0.0,
        "prepare_s": prep.get("seconds"), "warmup_s": warm.get("seconds"), "filler_bytes": prep.get("filler_bytes", 0),
        "functions_versioned": prep.get("functions_versioned", 0),
        "relocated_bytes": (warm.get("relocation") or {}).get("bytes", 0), "late_imports": None,
    }
    try:
        attr = attribution.attribute(pages, heapmap.find_heapmap(server.pid), causes=True)
        out["types"] = attr.total_types()[:4]
        out["causes"] = (attr.total_causes() or [])[:3]
    except Exception as exc:  # noqa: BLE001 - baseline modes have no heap map
        out["types"] = out["causes"] = None
        out["attribution_error"] = str(exc)
    return out


def _top(items, total_workers: int) -> str:
    if not items:
        return "—"
    return ", ".join(f"{n} {b / total_workers / MIB:.2f}" for n, b in items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=6000, help="requests per mode (default 6000)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--modes", default=None, help="comma-separated subset of the modes")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cowprof-bench-warmup-"))
    project = make_project(tmp / "project")
    all_modes = modes(tmp)
    chosen = [m.strip() for m in args.modes.split(",")] if args.modes else list(all_modes)
    unknown = [m for m in chosen if m not in all_modes]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(all_modes)}")
    paths = (REQUEST_MIX * (args.requests // len(REQUEST_MIX) + 1))[:args.requests]
    servers: dict[str, tuple[GunicornServer, Path]] = {}
    results = []
    try:
        for name in chosen:
            report = tmp / f"{name}.report.json"
            env = {**all_modes[name], "COWPROF_PREPARE_REPORT": str(report),
                   "COWPROF_PRELOAD_DIR": str(tmp / "preload" / name)}
            if env.pop(SECOND_START, None):
                first = GunicornServer(project, "mysite.wsgi:application", args.workers, env, tmp / f"{name}.first.log")
                try:
                    first.wait_ready()
                    run_load("127.0.0.1", first.port, paths, concurrency=4, deadline=300)
                finally:
                    first.stop()
            servers[name] = (GunicornServer(project, "mysite.wsgi:application", args.workers, env, tmp / f"{name}.log"),
                             report)
        trees, heaps = {}, {}
        for name, (server, _report) in servers.items():
            trees[name] = server.wait_ready()
            heaps[name] = procfs.read_smaps_rollup(server.pid).anonymous
        loads: dict[str, list] = {n: [] for n in servers}
        cpu = dict.fromkeys(servers, 0.0)
        batches = [(i, min(i + args.batch, len(paths))) for i in range(0, len(paths), args.batch)]
        for k, (lo, hi) in enumerate(batches):
            order = list(servers)[k % len(servers):] + list(servers)[:k % len(servers)]
            for name in order:
                server = servers[name][0]
                before = tree_cpu_seconds(trees[name])
                loads[name].append(run_load("127.0.0.1", server.port, paths[lo:hi], concurrency=4, deadline=300))
                cpu[name] += tree_cpu_seconds(trees[name]) - before
        time.sleep(1.0)
        for name, (server, report) in servers.items():
            results.append(summarize(name, server, loads[name], cpu[name], heaps[name], report))
    finally:
        for server, _report in servers.values():
            server.stop()
    base = next((r for r in results if r["mode"] == "baseline"), None)
    print(f"stock Django project ({_django_version()}), {args.workers} sync workers, "
          f"{args.requests:,} requests per mode in interleaved batches of {args.batch}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| mode | copied/worker MiB (max) | new MiB | USS MiB | total PSS MiB | master RSS MiB | "
          "CPU ms/req | prepare s | warm-up s | filler KiB | relocated KiB | top types (MiB/worker) | top causes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu_base = base["cpu_ms_per_request"] if base else 0.0
        ratio = f" ({r['cpu_ms_per_request'] / cpu_base:.2f}×)" if cpu_base else ""
        print(f"| {r['mode']} | {r['copied_mean'] / MIB:.2f} ({r['copied_max'] / MIB:.2f}) | "
              f"{r['new_mean'] / MIB:.2f} | "
              f"{r['uss_mean'] / MIB:.2f} | {r['pss_total'] / MIB:.1f} | {r['master_rss'] / MIB:.1f} | "
              f"{r['cpu_ms_per_request']:.2f}{ratio} | {_num(r['prepare_s'])} | {_num(r['warmup_s'])} | "
              f"{r['filler_bytes'] / 1024:.0f} | {r['relocated_bytes'] / 1024:.0f} | "
              f"{_top(r['types'], r['workers'])} | {_top(r['causes'], r['workers'])} |")
        if r["errors"] or r["answered"] != args.requests:
            print(f"  note: {r['mode']}: {r['answered']} answered, {r['errors']} errors")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def _num(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _django_version() -> str:
    import django

    return f"Django {django.get_version()}"


if __name__ == "__main__":
    sys.exit(main())
