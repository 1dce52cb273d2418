#!/usr/bin/env python3
"""Benchmark: ``cowprof snapshot PID --json`` against Debian's ``smem`` on the same fork tree.

Starts tests/forktree_prog.py: a master with a ``--buffer-mb`` MiB anonymous buffer its workers
keep sharing and a Python heap of ``--heap-mb`` MiB of small strings that every worker iterates
(refcount writes: the workers copy it), forked into ``--workers`` workers. Then runs, interleaved
``--repeat`` times, each as a whole process the way a user would:

* ``smem -c "pid uss pss" -P REGEX`` (the peer), REGEX matching this tree's command line only;
* ``cowprof snapshot MASTER --json`` in the PFN mode (root), when this runs as root;
* the same in the exclusive-bit mode: run with CAP_SYS_ADMIN dropped from the bounding set
  (``setpriv --bounding-set -sys_admin``), so pagemap shows no PFNs and cowprof falls back by
  itself, as for a user without root. smem is run that way too (it needs no capability).

For each: median wall and CPU time (user + system of the process and its children, from
``wait4``) and cowprof's own ``scan_seconds``. Target (issue 17): cowprof's wall time at most 1.5x
smem's, in both modes. Installs nothing: without ``smem`` on PATH it says so and times cowprof
alone (Debian: ``apt-get install smem``; scripts/bench_setup does it). Every process it starts is
stopped at the end (the tree by its PID; its workers die with it), which frees the tree's memory.

    .venv/py3.12/bin/python scripts/bench_vs_smem.py [--buffer-mb 512 --heap-mb 384 --workers 4 --repeat 5]
        [--cowprof "CMD ..."]  (default: the cowprof command next to this Python)
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from forktree import ForkTree  # noqa: E402

GIB = 1 << 30
DROP_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin", "--"]


def timed(cmd: list[str]) -> tuple[float, float, bytes]:
    """(wall seconds, CPU seconds of the process and its children, stdout) of one whole process.
    CPU from this process's children times around it (nothing else of ours is reaped meanwhile)."""
    before = os.times()
    t0 = time.perf_counter()
    # cwd "/": ``python -m`` puts the working directory first on sys.path
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, out


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    total += int(line.split()[1]) * 1024
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffer-mb", type=float, default=512, help="shared anonymous buffer of the master")
    ap.add_argument("--heap-mb", type=float, default=384, help="Python heap of the master, copied by every worker")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cowprof", action="append", default=[], metavar="[LABEL=]CMD",
                    help="a cowprof command line to time (repeatable, e.g. another checkout as "
                         "'main=env PYTHONPATH=../main python -m cowprof'; default: cowprof next to this Python)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = ap.parse_args(argv)

    # as installed: bytecode for every module (PYTHONDONTWRITEBYTECODE or a fresh checkout would
    # have each run compile cowprof's sources again); other checkouts: the directories on PYTHONPATH=
    for where in [ROOT, *re.findall(r"PYTHONPATH=(\S+)", " ".join(args.cowprof))]:
        compileall.compile_dir(os.path.join(os.path.abspath(where), "cowprof"), quiet=1)
    cowprofs = []  # (label, argv)
    for spec in args.cowprof or [os.path.join(os.path.dirname(sys.executable), "cowprof")]:
        label, eq, cmd = spec.partition("=")
        if not eq or " " in label:
            label, cmd = "cowprof", spec
        cowprofs.append((label, shlex.split(cmd)))
    smem = shutil.which("smem")
    print(f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    if smem is None:
        print("smem is not installed (Debian: apt-get install smem): timing cowprof alone, no ratio")
    modes = []
    if os.geteuid() == 0:
        modes.append(("pfn", []))
    if shutil.which("setpriv") or os.geteuid() != 0:
        modes.append(("exclusive-bit", DROP_SYS_ADMIN if os.geteuid() == 0 else []))
    else:
        print("setpriv (util-linux) is missing: no exclusive-bit run as root")

    t0 = time.perf_counter()
    # a --timeout no other tree on this machine uses tags this tree's command line for smem -P
    tag = f"{86400 + os.getpid() % 10000}.5"
    with ForkTree(workers=args.workers, master_mb=args.buffer_mb, heap_mb=args.heap_mb, touch_heap=True,
                  timeout=float(tag)) as t:
        pids = [t.master_pid, *t.worker_pids]
        rss = tree_rss(pids)
        print(f"tree: master {t.master_pid} + {len(t.worker_pids)} workers, buffer {args.buffer_mb:g} MiB shared, "
              f"heap {args.heap_mb:g} MiB copied by each worker; RSS of the tree {rss / GIB:.2f} GiB "
              f"(setup {time.perf_counter() - t0:.1f} s)")
        if rss < 4 * GIB:
            print("note: the tree's RSS is under the 4 GiB of issue 17's target")
        smem_cmd = [smem, "-c", "pid uss pss", "-P", rf"forktree_prog\.py.*--timeout {tag}"] if smem else None
        runs: dict[str, dict[str, list[float]]] = {}
        for rnd in range(args.repeat + 1):  # round 0 warms the page cache and is not counted
            for mode, prefix in modes:
                cases = []
                if smem_cmd is not None:
                    cases.append((f"smem [{mode}]", prefix + smem_cmd))
                for label, cowprof in cowprofs:
                    cases.append((f"{label} [{mode}]", prefix + cowprof + ["snapshot", str(t.master_pid), "--json"]))
                for name, cmd in cases:
                    wall, cpu, out = timed(cmd)
                    if rnd == 0:
                        if name.startswith("smem"):
                            listed = {int(line.split()[0]) for line in out.decode().splitlines()[1:] if line.strip()}
                            if listed != set(pids):
                                raise RuntimeError(f"smem listed {sorted(listed)}, not the tree {sorted(pids)}")
                        else:
                            rep = json.loads(out)
                            if rep["mode"] != mode:
                                raise RuntimeError(f"cowprof scanned in mode {rep['mode']}, not {mode}")
                        continue
                    r = runs.setdefault(name, {"wall": [], "cpu": [], "scan": []})
                    r["wall"].append(wall)
                    r["cpu"].append(cpu)
                    if not name.startswith("smem"):
                        r["scan"].append(json.loads(out)["scan_seconds"])
    # the tree is stopped (its memory freed) before the figures are printed
    summary: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        summary[name] = {k: statistics.median(v) for k, v in r.items() if v}
        scan = f", scan_seconds {summary[name]['scan']:.3f}" if "scan" in summary[name] else ""
        print(f"{name:24s} wall {summary[name]['wall']:.3f} s (min {min(r['wall']):.3f}, max {max(r['wall']):.3f}), "
              f"CPU {summary[name]['cpu']:.3f} s{scan}  [median of {len(r['wall'])}]")
    for mode, _prefix in modes:
        peer = summary.get(f"smem [{mode}]")
        for label, _cmd in cowprofs:
            ours = summary.get(f"{label} [{mode}]")
            if peer and ours:
                print(f"{mode}: {label} / smem = {ours['wall'] / peer['wall']:.2f}x wall, "
                      f"{ours['cpu'] / peer['cpu']:.2f}x CPU (target: at most 1.5x wall)")
    if args.json:
        print(json.dumps({"rss_bytes": rss, "load": os.getloadavg()[0], "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
