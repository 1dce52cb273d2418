"""The exporter's scan/reattach state machine against fake ``find_tree``/``scan`` functions but real
(``sleep``) processes as masters, so the liveness, PID-file and command-line logic is exercised for
real, in well under a second each."""
from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from cowprof.errors import NotAPreforkTree, ProcessGone
from cowprof.exporter import Exporter, MasterFinder, identify
from cowprof.pages import ScanResult
from cowprof.reporters.prometheus import metric_families
from conftest import MiB, master_dict, page_report, worker_dict


@pytest.fixture
def procs():
    """Start ``sleep`` processes (stand-in masters); kill and reap exactly those afterwards."""
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        p = subprocess.Popen(list(argv) or ["sleep", "60"], stdin=subprocess.DEVNULL)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


class FakeTree:
    """find_tree/scan stand-ins: masters listed in ``trees`` have the given workers."""

    def __init__(self) -> None:
        self.trees: dict[int, list[int]] = {}
        self.fail: Exception | None = None
        self.scans = 0

    def find_tree(self, pid: int):
        if identify(pid) is None:
            raise ProcessGone(pid)
        if not self.trees.get(pid):  # like cowprof.tree.find_tree: no workers, no tree
            raise NotAPreforkTree(f"PID {pid} has no workers")
        return SimpleNamespace(master=pid, workers=tuple(self.trees[pid]))

    def scan(self, tree):
        if self.fail is not None:
            raise self.fail
        self.scans += 1
        return ScanResult(page_report([worker_dict(pid, 2 * MiB) for pid in tree.workers],
                                      master=master_dict(tree.master)))


def _exporter(fake: FakeTree, pid: int, *, pidfile: str | None = None, cmdline: str | None = None):
    finder = MasterFinder(pidfile=pidfile, cmdline=cmdline, find_tree=fake.find_tree)
    return Exporter(identify(pid), finder, find_tree=fake.find_tree, scan=fake.scan)


def _kill(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()


def test_scan_publishes_and_a_worker_change_shows(procs):
    fake = FakeTree()
    m = procs()
    fake.trees[m.pid] = [11, 12]
    exp = _exporter(fake, m.pid)
    exp.step()
    report, status = exp.snapshot()
    assert status.up and status.scans_total == 1 and status.master_pid == m.pid
    assert sorted(w.pid for w in report.workers) == [11, 12]
    fake.trees[m.pid] = [12, 13]
    exp.step()
    report, status = exp.snapshot()
    assert sorted(w.pid for w in report.workers) == [12, 13] and status.scans_total == 2


def test_scan_errors_are_counted_and_clear_the_data(procs):
    fake = FakeTree()
    m = procs()
    fake.trees[m.pid] = [11]
    exp = _exporter(fake, m.pid)
    exp.step()
    fake.fail = PermissionError("boom")  # an unexpected error: logged, counted, loop goes on
    exp.step()
    exp.step()
    report, status = exp.snapshot()
    assert report is None and not status.up and status.scrape_errors_total == 2
    fake.fail = None
    exp.step()
    report, status = exp.snapshot()
    assert report is not None and status.up and status.scrape_errors_total == 2


def test_a_master_left_without_workers_is_up_with_zero_workers(procs):
    fake = FakeTree()
    m = procs()
    fake.trees[m.pid] = [11, 12]
    exp = _exporter(fake, m.pid)
    exp.step()
    fake.trees[m.pid] = []  # e.g. all workers recycled at once
    exp.step()
    report, status = exp.snapshot()
    assert status.up and status.scrape_errors_total == 0 and exp.master.pid == m.pid
    fams = {f.name: f for f in metric_families(report, status)}
    assert fams["cowprof_workers"].samples[0].value == 0
    assert fams["cowprof_worker_rss_bytes"].samples == []
    fake.trees[m.pid] = [13]
    exp.step()
    assert [w.pid for w in exp.snapshot()[0].workers] == [13]


def test_master_exit_detaches_then_pidfile_reattaches(procs, tmp_path, caplog):
    caplog.set_level("INFO", logger="cowprof.exporter")
    fake = FakeTree()
    old, new = procs(), procs()
    fake.trees[old.pid] = [11]
    fake.trees[new.pid] = [21, 22]
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{old.pid}\n")
    exp = _exporter(fake, old.pid, pidfile=str(pidfile))
    exp.step()
    assert exp.snapshot()[1].up
    _kill(old)
    exp.step()
    report, status = exp.snapshot()
    assert report is None and not status.up and exp.master is None
    exp.step()  # the PID file still names the dead master: keep waiting
    assert exp.master is None
    pidfile.write_text(f"{new.pid}\n")
    exp.step()
    report, status = exp.snapshot()
    assert exp.master.pid == new.pid and status.up
    assert sorted(w.pid for w in report.workers) == [21, 22]
    assert f"reattached to master PID {new.pid}" in caplog.text
    assert f"master PID {old.pid} exited" in caplog.text


def test_master_exit_then_reattach_by_command_line(procs):
    fake = FakeTree()
    # a command line nobody else runs, this test in another version's suite at the same time included
    argv = ["sleep", f"61.{os.getpid()}5"]
    old = procs(*argv)
    other = procs("sleep", f"61.{os.getpid()}25")  # different command line: never picked
    fake.trees[old.pid] = [11]
    fake.trees[other.pid] = [31]
    exp = _exporter(fake, old.pid)
    exp.step()
    _kill(old)
    exp.step()
    assert exp.master is None
    exp.step()
    assert exp.master is None  # nothing matches yet
    # the finder only takes processes started after the old master (by their start time in
    # which has clock-tick resolution): a restart takes longer than a tick, this test may not
    time.sleep(3 / os.sysconf("SC_CLK_TCK"))
    new = procs(*argv)
    exp.step()
    assert exp.master is None  # a match without workers is not a master
    fake.trees[new.pid] = [41]
    exp.step()
    assert exp.master is not None and exp.master.pid == new.pid
    assert [w.pid for w in exp.snapshot()[0].workers] == [41]


def test_reused_pid_is_not_the_old_master(procs):
    fake = FakeTree()
    m = procs()
    fake.trees[m.pid] = [11]
    exp = _exporter(fake, m.pid)
    # same PID, another start time: what a PID reuse after the master's exit looks like
    exp._master = exp._last_master = exp.master.replace(start_ticks=exp.master.start_ticks - 100)
    exp.step()
    assert exp.master is None and not exp.snapshot()[1].up
