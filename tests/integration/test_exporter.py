"""End to end: a real forked tree, the exporter as a real subprocess on a loopback port, scrapes
parsed with prometheus_client's own text parser and checked against a direct page report.

The exporter is started with ``port=0`` (the kernel picks a free port, no race with other tests)
and the port is read from its "serving http://127.0.0.1:PORT/metrics" log line. Every process a
test starts is stopped by PID in a ``finally``/fixture; SIGTERM must end the exporter with exit 0.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from cowprof.errors import BadInput, NotAPreforkTree, ProcessGone
from cowprof.exporter import serve
from cowprof.pages import scan
from cowprof.tree import find_tree
from exporter_proc import ExporterProc
from forktree import ForkTree

PAGE = os.sysconf("SC_PAGE_SIZE")
SLACK = 8 * PAGE  # pages a sleeping worker's interpreter may still copy between two scans


@pytest.fixture
def start_exporter(tmp_path):
    started: list[ExporterProc] = []

    def start(pid: int | None, **kw) -> ExporterProc:
        exp = ExporterProc(tmp_path / f"exporter{len(started)}.log", pid, **kw)
        started.append(exp)
        return exp

    yield start
    for exp in started:
        exp.stop()


def _value(fams: dict, name: str) -> float | None:
    fam = fams.get(name)
    if fam is None or not fam.samples:
        return None
    assert len(fam.samples) == 1, fam.samples
    return fam.samples[0].value


def _by_pid(fams: dict, name: str) -> dict[int, float]:
    fam = fams.get(name)
    return {int(s.labels["pid"]): s.value for s in fam.samples} if fam is not None else {}


def _all_pids(fams: dict) -> set[int]:
    return {int(s.labels["pid"]) for f in fams.values() for s in f.samples if "pid" in s.labels}


def _close(a: float, b: float, *, rel: float = 0.02, abs_: float = 256 * 1024) -> bool:
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def _rel(attr: str) -> float:
    """PSS also divides the library pages the tree shares with every other process on the machine,
    so it moves between two scans as unrelated processes start and exit: give it more room."""
    return 0.05 if attr == "pss_bytes" else 0.02


# ---------------------------------------------------------------------------------------------

def test_two_scrapes_match_a_direct_page_report(start_exporter):
    K, N = 1000, 30  # pages every worker copies on write (of 4096) / allocates fresh
    with ForkTree(workers=2, master_mb=16, write_pages=K, new_pages=N) as tree:
        exp = start_exporter(tree.master_pid)
        first = exp.scrape()
        # a later scan must have happened before the second scrape: scans are periodic
        t1 = _value(first, "cowprof_last_scan_timestamp_seconds")
        second = exp.scrape_until(
            lambda f: (_value(f, "cowprof_last_scan_timestamp_seconds") or 0) > t1,
            what="a second scan")
        direct = scan(find_tree(tree.master_pid))
        workers = {w.pid: w for w in direct.workers}
        assert sorted(workers) == sorted(tree.worker_pids)

        for fams in (first, second):
            assert _value(fams, "cowprof_up") == 1
            assert _value(fams, "cowprof_master_pid") == tree.master_pid
            assert _value(fams, "cowprof_workers") == 2
            assert fams["cowprof_scrape_errors"].samples[0].name == "cowprof_scrape_errors_total"
            assert fams["cowprof_scrape_errors"].samples[0].value == 0
            assert 0 < _value(fams, "cowprof_scan_duration_seconds") < 30
            assert _all_pids(fams) == set(tree.worker_pids)

            copied = _by_pid(fams, "cowprof_worker_copied_bytes")
            new = _by_pid(fams, "cowprof_worker_new_bytes")
            for pid, w in workers.items():
                # The fixture's writes are done before READY; only the sleeping interpreter may
                # still copy a page or two (seen on 3.11), hence a few pages of slack.
                assert abs(copied[pid] - w.copied_bytes) <= SLACK, (pid, copied[pid], w.copied_bytes)
                assert abs(new[pid] - w.new_bytes) <= SLACK, (pid, new[pid], w.new_bytes)
                # and they are what the fixture did: K pages copied (plus the interpreter's own
                # few hundred KiB), N fresh pages; shared (~12 MiB) or RSS would fail this bar
                assert K * PAGE <= copied[pid] < K * PAGE + 2 * 1024 * 1024
                assert new[pid] >= N * PAGE
                for metric, attr in (("cowprof_worker_rss_bytes", "rss_bytes"),
                                     ("cowprof_worker_pss_bytes", "pss_bytes"),
                                     ("cowprof_worker_uss_bytes", "uss_bytes"),
                                     ("cowprof_worker_shared_bytes", "shared_bytes")):
                    got = _by_pid(fams, metric)[pid]
                    assert _close(got, getattr(w, attr), rel=_rel(attr)), (metric, pid, got, getattr(w, attr))
                assert _by_pid(fams, "cowprof_worker_start_time_seconds")[pid] == pytest.approx(
                    w.started_at, abs=1.0)
            assert _close(_value(fams, "cowprof_master_rss_bytes"), direct.master.rss_bytes)
            assert _close(_value(fams, "cowprof_master_pss_bytes"), direct.master.pss_bytes, rel=_rel("pss_bytes"))
        # baseline for the bars above: shared is far from copied, so a swapped field fails them
        assert all(abs(w.shared_bytes - w.copied_bytes) > 2 * 1024 * 1024 + SLACK
                   for w in workers.values())
        assert exp.stop() == 0
    log = exp.log()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", log, re.M), log  # timestamped lines
    assert "stopping on SIGTERM" in log


def test_a_killed_worker_disappears_from_the_next_scrape(start_exporter):
    with ForkTree(workers=3, master_mb=8) as tree:
        exp = start_exporter(tree.master_pid, interval=0.2, cli=True)
        before = exp.scrape()
        victim = tree.worker_pids[0]
        assert _all_pids(before) == set(tree.worker_pids) and victim in _all_pids(before)
        tree.kill_worker(victim)
        killed_at = time.time()
        after = exp.scrape_until(
            lambda f: (_value(f, "cowprof_last_scan_timestamp_seconds") or 0) > killed_at,
            what="a scan after the kill")
        assert victim not in _all_pids(after)
        assert _all_pids(after) == set(tree.worker_pids)
        assert _value(after, "cowprof_workers") == 2
        assert _value(after, "cowprof_up") == 1
        assert exp.stop() == 0
    assert f"exited {victim}" in exp.log()


def _kill_master(tree: ForkTree) -> None:
    """SIGKILL the master we started (its workers follow, PDEATHSIG), and reap it."""
    os.kill(tree.master_pid, signal.SIGKILL)
    tree.stop()


def test_reattaches_to_the_master_named_by_the_pidfile(start_exporter, tmp_path):
    pidfile = tmp_path / "master.pid"
    with ForkTree(workers=2, master_mb=8) as old:
        pidfile.write_text(f"{old.master_pid}\n")
        exp = start_exporter(None, pidfile=str(pidfile))
        assert _value(exp.scrape(), "cowprof_master_pid") == old.master_pid
        _kill_master(old)
    # a scan that the kill interrupts first logs "scan failed" (up 0 too); the detach follows
    gone = f"master PID {old.master_pid} exited"
    down = exp.scrape_until(lambda f: _value(f, "cowprof_up") == 0 and gone in exp.log(), what="the detach")
    assert not _all_pids(down) and _value(down, "cowprof_master_pid") is None
    with ForkTree(workers=3, master_mb=8) as new:
        pidfile.write_text(f"{new.master_pid}\n")
        up = exp.scrape_until(lambda f: _value(f, "cowprof_master_pid") == new.master_pid
                              and _value(f, "cowprof_up") == 1, what="reattach")
        assert _all_pids(up) == set(new.worker_pids)
        assert _value(up, "cowprof_workers") == 3
        assert f"reattached to master PID {new.master_pid}" in exp.log()
        assert exp.stop() == 0


def test_reattaches_by_the_masters_command_line(start_exporter):
    with ForkTree(workers=2, master_mb=8) as old:
        exp = start_exporter(old.worker_pids[0])  # a worker's PID finds the master too
        assert _value(exp.scrape(), "cowprof_master_pid") == old.master_pid
        _kill_master(old)
    exp.scrape_until(lambda f: _value(f, "cowprof_up") == 0, what="cowprof_up 0")
    with ForkTree(workers=2, master_mb=8) as new:  # same arguments: same command line
        up = exp.scrape_until(lambda f: _value(f, "cowprof_master_pid") == new.master_pid
                              and _value(f, "cowprof_up") == 1, what="reattach")
        assert _all_pids(up) == set(new.worker_pids)
        assert f"reattached to master PID {new.master_pid}" in exp.log()
        assert exp.stop(signal.SIGINT) == 0
    assert "stopping on SIGINT" in exp.log()


def test_port_in_use_is_bad_input():
    with ForkTree(workers=1, master_mb=4) as tree, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BadInput, match=f"^port {port} on 127.0.0.1 is already in use$"):
            serve(tree.master_pid, port=port)


def test_bad_pids_are_one_line_errors():
    p = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(NotAPreforkTree):  # alive, but no workers
            serve(p.pid, port=0)
    finally:
        p.kill()
        p.wait()
    with pytest.raises(ProcessGone):  # reaped just above
        serve(p.pid, port=0)


def test_cli_port_in_use_is_one_line_exit_2():
    with ForkTree(workers=1, master_mb=4) as tree, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "cowprof", "export", str(tree.master_pid),
                              "--port", str(port)], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"cowprof: port {port} on 127.0.0.1 is already in use"]
