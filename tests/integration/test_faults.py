"""Fault injection: the master or a worker is SIGKILLed at every /proc read point of every command.

For each command (snapshot, snapshot --by type, snapshot --by cause, top for one refresh, record
for one sample, export for one scan) a first run on a live tree lists the read points: every
(process, /proc file) the command touches (tests/faults.py). Then, for each point and each target
(the master, reaped at once so that its /proc directory disappears; the master left a zombie; a
worker), a fresh tree (tests/treefarm.py) is started and the command runs again, in this process
through ``cowprof.cli.main``, while the target is SIGKILLed right before the first and right
before the last touch of that file, whichever process the file belongs to.

Every run must end with a documented exit code and a one-line message, never a traceback:

* master killed: exit 3 naming the master (``snapshot``; ``top``, ``record`` and ``export`` before
  their first sample), or, once ``top``/``record``/``export`` are running, exit 0 with the line
  saying the master exited (``record`` then holds no sample and an end line ``target-exited``);
* worker killed: exit 0, with or without that worker (it may have been read before it died), and
  with a by-cause view for it when ``--by cause`` lists it.

The baseline: the same matrix on cowprof before this test existed failed (exit 5 "not part of a
pre-fork tree" while the tree was found, exit 2 "no current heap map" while it was looked up, and
exit 0 with "master (assumed unchanged)" while --by cause read the master's memory).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from attribution_apps import app_python
from faults import ProcTouches
from forktree import _gone
from treefarm import FarmTree, TreeFarm
from cowprof import cli, elf, exporter
from cowprof.record import read_record

COMMANDS = ("snapshot", "by-type", "by-cause", "top", "record", "export")
HEAPMAP_COMMANDS = ("by-type", "by-cause")
TARGETS = ("master", "master-zombie", "worker")


@dataclass
class Run:
    code: int
    out: str
    err: str
    record: str | None


def _kill_fn(tree: FarmTree, target: str) -> Callable[[], None]:
    """SIGKILL the target and wait until it is dead: reaped ("master"), a zombie ("master-zombie"),
    or a zombie or reaped by its master ("worker")."""
    pid = tree.workers[0] if target == "worker" else tree.master

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        if target == "master":
            tree.farm.reap(pid)
    return kill


def _argv(command: str, pid: int, tmp: str) -> list[str]:
    return {
        "snapshot": ["snapshot", str(pid), "--json"],
        "by-type": ["snapshot", str(pid), "--by", "type", "--json"],
        "by-cause": ["snapshot", str(pid), "--by", "cause", "--json"],
        "top": ["top", str(pid), "--iterations", "1"],
        "record": ["record", str(pid), "-o", os.path.join(tmp, "run.jsonl"), "--count", "1"],
        "export": ["export", str(pid), "--port", "0"],
    }[command]


def _run(command: str, tree: FarmTree, tmp: str, touches: ProcTouches) -> Run:
    elf.clear_cache()  # every run reads the libraries' program headers (else only the first would)
    out, err = io.StringIO(), io.StringIO()
    path = os.path.join(tmp, "run.jsonl")
    if os.path.exists(path):
        os.unlink(path)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), touches:
        code = cli.main(_argv(command, tree.master, tmp))
    return Run(code, out.getvalue(), err.getvalue(), path if os.path.exists(path) else None)


def _problems(command: str, target: str, tree: FarmTree, run: Run) -> list[str]:
    """What is wrong with this run's outcome (empty: as documented)."""
    bad = []
    master, worker = tree.master, tree.workers[0]
    err_lines = run.err.strip().splitlines()
    if "Traceback" in run.err or "Traceback" in run.out:
        return [f"traceback: {run.err[-800:]}"]
    if command != "export" and any(not line.startswith("cowprof: ") for line in err_lines):
        bad.append(f"stderr is not cowprof: lines: {run.err!r}")
    if command == "export" and any(" ERROR" in line or "scan failed" in line for line in err_lines):
        bad.append(f"export logged an error: {run.err!r}")
    if target.startswith("master"):
        if run.code == 3:
            if command == "export":
                if not any(f"process {master}" in line for line in err_lines):
                    bad.append(f"exit 3 without a line naming process {master}: {run.err!r}")
            elif len(err_lines) != 1 or str(master) not in err_lines[0]:
                bad.append(f"exit 3 without one line naming {master}: {run.err!r}")
            if run.record is not None:
                bad.append("a record file was created for a master that was already gone")
        elif run.code == 0 and command == "top":
            if f"cowprof: master {master} exited" not in err_lines:
                bad.append(f"top: exit 0 without 'master {master} exited': {run.err!r}")
        elif run.code == 0 and command == "record":
            rec = read_record(run.record) if run.record else None
            if rec is None or rec.samples or rec.end is None or rec.end["reason"] != "target-exited":
                bad.append(f"record: exit 0 but the file is not an empty target-exited recording: {run.err!r}")
        elif run.code == 0 and command == "export":
            if not any(f"master PID {master} exited" in line for line in err_lines):
                bad.append(f"export: exit 0 without 'master PID {master} exited': {run.err!r}")
        else:
            bad.append(f"exit {run.code} (expected 3{'' if command.startswith(('snap', 'by')) else ' or 0'}): "
                       f"{run.err!r} {run.out[-400:]!r}")
        return bad
    # a worker was killed: the command succeeds, with or without it (it may have been read
    # before it died)
    if run.code != 0:
        return [f"exit {run.code} (expected 0): {run.err!r}"]
    if command in ("snapshot", *HEAPMAP_COMMANDS):
        data = json.loads(run.out)
        if command == "snapshot" and data["master"]["pid"] != master:
            bad.append(f"wrong master in {data['master']}")
        for w in data["workers"]:
            if w["pid"] == worker and command == "by-cause" and w["causes"] is None:
                bad.append(f"killed worker {worker} has no causes")
    return bad


def _points(farm: TreeFarm, command: str, tmp: str) -> list[tuple[str, str, int]]:
    """(role, file, nth touch): the first and the last touch of each file of each role."""
    tree = farm.tree(heapmap=command in HEAPMAP_COMMANDS)
    try:
        t = ProcTouches({tree.master: "master", tree.workers[0]: "worker"})
        run = _run(command, tree, tmp, t)
    finally:
        tree.stop()
    assert run.code == 0 and "Traceback" not in run.err, run.err
    return [(role, name, nth) for role, name, n in t.points() for nth in sorted({1, n})]


# the files every command must be seen touching, so that the matrix cannot pass vacuously
REQUIRED = {("master", f) for f in ("stat", "exe", "maps", "smaps_rollup", "pagemap")} | {
    ("worker", f) for f in ("stat", "maps", "smaps_rollup", "pagemap")}
EXTRA = {"by-type": {("master", "environ")}, "by-cause": {("master", "environ"), ("master", "mem"),
                                                          ("worker", "mem")},
         "top": {("master", "task/*/children")},
         "record": {("master", "task/*/children"), ("master", "cmdline")}, "export": set(),
         "snapshot": set()}


@pytest.fixture(scope="module")
def farm():
    python = app_python()
    with TreeFarm(python) as f:
        f.heapmaps = python is not None
        yield f


@pytest.fixture
def one_scan_export(monkeypatch):
    """`cowprof export` scans once before serving; make its scan loop return at once, and its HTTP
    server notice the shutdown in 5 ms rather than 0.5 s."""
    monkeypatch.setattr(exporter.Exporter, "run", lambda self, interval, stop: None)
    serve_forever = exporter._MetricsServer.serve_forever
    monkeypatch.setattr(exporter._MetricsServer, "serve_forever",
                        lambda self, poll_interval=0.5: serve_forever(self, 0.005))


def _kill_run(farm: TreeFarm, command: str, tmp: str, target: str,
              point: tuple[str, str, int]) -> tuple[FarmTree, Run]:
    """Run ``command`` on a fresh tree, killing ``target`` at the touch ``point``. A later touch may
    not come in every run (the number of memory reads depends on the page layout, randomized per
    tree): then again at that run's last touch of the file, which a later run reaches more often."""
    role, name, nth = point
    for _attempt in range(10):
        tree = farm.tree(heapmap=command in HEAPMAP_COMMANDS)
        try:
            touches = ProcTouches({tree.master: "master", tree.workers[0]: "worker"},
                                  kill=(role, name, nth, _kill_fn(tree, target)))
            run = _run(command, tree, tmp, touches)
        finally:
            tree.stop()
        if touches.killed:
            return tree, run
        seen = dict(((r, n), k) for r, n, k in touches.points()).get((role, name), 0)
        assert 1 < seen < nth, (point, seen)
        nth = seen
    raise AssertionError(f"never reached {point}")


@pytest.mark.parametrize("command", COMMANDS)
def test_kill_at_every_read_point(command, farm, tmp_path, one_scan_export):
    if command in HEAPMAP_COMMANDS and not farm.heapmaps:
        pytest.skip("heap maps need a CPython 3.12+ master (no 3.12/3.13 venv found)")
    tmp = str(tmp_path)
    points = _points(farm, command, tmp)
    missing = (REQUIRED | EXTRA[command]) - {(role, name) for role, name, _ in points}
    assert not missing, (missing, points)
    failures = []
    for target in TARGETS:
        for role, name, nth in points:
            tree, run = _kill_run(farm, command, tmp, target, (role, name, nth))
            failures += [f"{command}: {target} killed at touch {nth} of the {role}'s {name}: {p}"
                         for p in _problems(command, target, tree, run)]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
