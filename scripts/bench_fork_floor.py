#!/usr/bin/env python3
"""Benchmark: what a forked child copies by merely existing: the floor under every pre-fork worker.

A master loads the stock Django project of ``bench_warmup.py`` (its WSGI application imported, as
``gunicorn --preload`` does), prepares in one of three modes, forks ``--children`` children, and
each child runs only what ``os.fork()`` itself runs in a child (CPython's ``PyOS_AfterFork_Child``
and the at-fork handlers of threading, random, logging, ...) plus the mode's after-fork call,
then blocks in ``os.read``: it serves nothing. cowprof's page scan of the tree, taken from this
process, gives per child the copied pages by region and, with the cowprof mode's heap map, by
type and cause. Modes: ``baseline`` (nothing), ``gc-freeze`` (the ``gc`` documentation's recipe:
``gc.freeze()`` before the fork, ``gc.enable()`` in the child) and ``cowprof``
(``cowprof.prepare_fork()`` / ``cowprof.after_fork()``, default settings, no warm-up).

Any worker copies at least this much before it does anything of its own, so it bounds the
targets stated as a share of the master (issue 14's "≤ 1% of the master's RSS").

    .venv/py3.12/bin/python scripts/bench_fork_floor.py [--children 4] [--modes baseline,gc-freeze,cowprof]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

MODES = ("baseline", "gc-freeze", "cowprof")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def master(mode: str, project: str, children: int) -> None:
    """The master (run in a process of its own): load, prepare, fork, report, wait for stdin."""
    import gc

    sys.path.insert(0, project)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    if mode == "gc-freeze":
        gc.disable()
    from mysite.wsgi import application  # noqa: F401 - the preloaded app, as gunicorn --preload has it

    import cowprof

    report = None
    if mode == "cowprof":
        report = cowprof.prepare_fork()
    elif mode == "gc-freeze":
        gc.freeze()
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)  # so that the master closing its end is end-of-file here
            if mode == "cowprof":
                cowprof.after_fork()
            elif mode == "gc-freeze":
                gc.enable()
            os.write(ready_w, b".")
            os.read(hold_r, 1)  # blocks until the master closes its end
            os._exit(0)
        pids.append(pid)
    for _ in pids:
        os.read(ready_r, 1)
    extra = {"heapmap": report.heapmap_path, "prepare_seconds": round(report.seconds, 3)} if report else {}
    print("READY " + json.dumps({"master": os.getpid(), "children": pids, **extra}), flush=True)
    sys.stdin.readline()
    os.close(hold_w)
    for pid in pids:
        os.waitpid(pid, 0)


def measure(mode: str, project: str, children: int, heapmaps: str) -> dict[str, object]:
    from cowprof.pages import scan
    from cowprof.tree import find_tree

    env = {**os.environ, "COWPROF_HEAPMAP_DIR": heapmaps, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--master", mode, "--project", project,
                             "--children", str(children)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"bench_fork_floor: {mode}: the master did not start ({line!r})")
        info = json.loads(line[6:])
        time.sleep(0.5)  # nothing runs in the children now; let the master settle too
        tree = find_tree(info["master"])
        report = scan(tree, keep_addresses=mode == "cowprof")
        row: dict[str, object] = {"mode": mode, "children": len(report.workers),
                                  "master_rss_bytes": report.master.rss_bytes,
                                  "copied_bytes": [w.copied_bytes for w in report.workers],
                                  "regions": {k: round(sum(w.regions[k].copied_bytes for w in report.workers)
                                                       / len(report.workers))
                                              for k in report.workers[0].regions},
                                  "prepare_seconds": info.get("prepare_seconds")}
        if mode == "cowprof":
            row.update(_attribution(report, tree))
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return row


def _attribution(report, tree) -> dict[str, object]:
    from cowprof import attribution, heapmap
    from cowprof.errors import CowprofError

    try:
        attr = attribution.attribute(report, heapmap.find_heapmap(tree.master), causes=True)
    except (CowprofError, OSError) as err:
        return {"attribution_error": str(err)}
    n = len(report.workers)
    return {"top_types": [(name, b / n) for name, b in attr.total_types()[:4]],
            "top_causes": [(name, b / n) for name, b in (attr.total_causes() or [])[:3]]}


def markdown(rows: list[dict[str, object]]) -> str:
    head = ("| mode | copied/child KiB mean (max) | pages | % of master RSS | by region, KiB/child | "
            "top types (KiB/child) | top causes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        copied = r["copied_bytes"]
        assert isinstance(copied, list) and isinstance(r["master_rss_bytes"], int)
        mean = sum(copied) / len(copied)
        regions = ", ".join(f"{k} {v / 1024:.0f}" for k, v in r["regions"].items() if v)  # type: ignore[union-attr]
        types = ", ".join(f"{n} {b / 1024:.0f}" for n, b in r.get("top_types") or []) or "—"  # type: ignore[attr-defined]
        causes = ", ".join(f"{n} {b / 1024:.0f}" for n, b in r.get("top_causes") or []) or "—"  # type: ignore[attr-defined]
        lines.append(f"| {r['mode']} | {mean / 1024:.0f} ({max(copied) / 1024:.0f}) | {mean / PAGE:.0f} | "
                     f"{100 * mean / r['master_rss_bytes']:.2f}% of {r['master_rss_bytes'] / MB:.1f} MiB | "
                     f"{regions} | {types} | {causes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--children", type=int, default=4)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: %(default)s")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--master", choices=MODES, help=argparse.SUPPRESS)  # internal: run as the master
    p.add_argument("--project", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.master:
        master(args.master, args.project, args.children)
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"bench_fork_floor: --modes takes modes from {', '.join(MODES)}")
    if args.children < 2:
        raise SystemExit("bench_fork_floor: --children must be 2 or more (with one, the master's own writes "
                         "after the fork would count as the child's)")
    from djangoproj import make_project

    work = Path(tempfile.mkdtemp(prefix="cowprof-bench-floor-"))
    heapmaps = work / "heapmaps"
    heapmaps.mkdir(mode=0o700)
    project = make_project(work / "project")
    started = time.time()
    rows = [measure(mode, project, args.children, str(heapmaps)) for mode in modes]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"stock Django project preloaded, {args.children} children that serve nothing, Python "
          f"{platform.python_version()}; {when}, {time.time() - started:.0f} s\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
