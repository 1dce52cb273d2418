"""cowprof.pages.scan on real forked trees (tests/forktree_prog.py) with known writes.

Every CoW assertion has a baseline that fails the same bar: a tree whose workers wrote nothing,
pages the master (not the worker) wrote, or RSS where PSS is expected.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
from forktree import ForkTree, unprivileged_python

from cowprof import pages, procfs
from cowprof.errors import AccessDenied, BadInput, NotAPreforkTree, ProcessGone
from cowprof.pages import PageReport, scan
from cowprof.tree import Tree

P = procfs.PAGE_SIZE
K = 13  # pages each worker writes in the master's buffer
M = 40  # fresh pages each worker touches
MW = 5  # pages the master writes after fork
MODES = [pytest.param(None, id="auto"), pytest.param(False, id="exclusive-bit")]


def _in(addrs: np.ndarray | None, lo: int, size: int) -> list[int]:
    assert addrs is not None
    a = np.asarray(addrs, dtype=np.uint64)
    return sorted(int(x) for x in a[(a >= lo) & (a < lo + size)])


@pytest.fixture(scope="module")
def tree():
    with ForkTree(workers=2, master_mb=16, write_pages=K, new_pages=M, master_write_pages=MW) as t:
        yield t


@pytest.fixture(scope="module")
def quiet_tree():
    """Baseline: same shape, the workers write nothing to the buffer."""
    with ForkTree(workers=2, master_mb=16, write_pages=0, new_pages=0, master_write_pages=MW) as t:
        yield t


@pytest.mark.parametrize("privileged", MODES)
def test_copied_is_exactly_the_k_written_pages(tree, quiet_tree, privileged):
    rep = scan(tree.master_pid, privileged=privileged, keep_addresses=True)
    assert rep.mode == ("exclusive-bit" if privileged is False else ("pfn" if rep.privileged else "exclusive-bit"))
    assert sorted(w.pid for w in rep.workers) == sorted(tree.worker_pids) and rep.gone == []
    for w in rep.workers:
        assert _in(w.copied_addrs, tree.buf_addr, tree.buf_size) == sorted(tree.written_addrs)
        assert len(w.copied_addrs) * P == w.copied_bytes >= K * P
        assert w.new_bytes >= M * P and w.regions["python"].new_bytes >= M * P
        assert w.regions["python"].copied_bytes >= K * P
        assert w.shared_bytes >= tree.buf_size - K * P
        # the fresh mapping is new, never copied
        naddr, nsize = tree.new_mappings[w.pid]
        assert nsize == M * P and _in(w.copied_addrs, naddr, nsize) == []
    # baseline: nothing written by the workers -> nothing copied in the buffer (fails "== K")
    base = scan(quiet_tree.master_pid, privileged=privileged, keep_addresses=True)
    for w in base.workers:
        assert _in(w.copied_addrs, quiet_tree.buf_addr, quiet_tree.buf_size) == []
        assert w.new_bytes < M * P or w.regions["python"].new_bytes < M * P


@pytest.mark.parametrize("privileged", MODES)
def test_master_writes_are_its_divergence_not_the_workers_copies(tree, privileged):
    rep = scan(tree.master_pid, privileged=privileged, keep_addresses=True)
    mw = sorted(tree.master_written_addrs)
    assert len(mw) == MW
    # the master's own post-fork writes are its diverged pages; workers still share the originals
    assert _in(rep.master.diverged_addrs, tree.buf_addr, tree.buf_size) == mw
    assert rep.master.diverged_bytes >= MW * P
    for w in rep.workers:
        assert not set(mw) & set(_in(w.copied_addrs, tree.buf_addr, tree.buf_size))
    # both workers wrote the K pages: the master's originals there are exclusive -> ambiguous
    assert rep.master.ambiguous_bytes >= K * P
    assert all(w.ambiguous_bytes == 0 or w.ambiguous_bytes < w.copied_bytes for w in rep.workers)


@pytest.mark.parametrize("privileged", MODES)
def test_one_worker_tree_cannot_tell_master_writes_apart(privileged):
    # documented limit: with one worker, a page the master wrote looks copied by the worker
    with ForkTree(workers=1, master_mb=4, write_pages=K, master_write_pages=MW) as t:
        rep = scan(t.master_pid, privileged=privileged, keep_addresses=True)
        (w,) = rep.workers
        got = _in(w.copied_addrs, t.buf_addr, t.buf_size)
        assert got == sorted(t.written_addrs + t.master_written_addrs)
        # with one worker, a copy is ambiguous wherever the master's page is exclusive too; only where
        # the master still shares its page (e.g. the zero page, read but never written) is the copy
        # known to be the worker's
        master_shares = [a for a in np.asarray(w.copied_addrs).tolist()
                         if not procfs.decode(procfs.read_pagemap(t.master_pid, a, a + P)).exclusive[0]]
        assert not set(master_shares) & set(got)
        assert w.ambiguous_bytes == w.copied_bytes - len(master_shares) * P
        assert _in(rep.master.diverged_addrs, t.buf_addr, t.buf_size) == []
        assert rep.master.ambiguous_bytes >= (K + MW) * P


def test_modes_agree_and_pfn_extras(tree):
    if not (procfs.kpagecount_readable() and procfs.pfns_visible()):
        pytest.skip("PFN mode needs root")
    pfn = scan(tree.master_pid, privileged=True)
    bit = scan(tree.master_pid, privileged=False)
    assert pfn.mode == "pfn" and pfn.privileged and bit.mode == "exclusive-bit" and not bit.privileged
    for a, b in zip(pfn.workers, bit.workers):
        # same pages, read twice: only the interpreter's own churn between the scans may differ
        assert abs(a.copied_bytes - b.copied_bytes) <= 64 * P
        assert b.shared_with_master_bytes is None and b.sharers is None
        assert a.shared_with_master_bytes >= tree.buf_size - (K + MW) * P
        # master + 2 workers map the untouched buffer pages; the master-written ones only the 2 workers
        assert a.sharers[3] >= tree.buf_size - (K + MW) * P
        assert a.sharers[2] >= MW * P
        assert sum(a.sharers.values()) == a.shared_bytes


def test_forced_privileged_without_rights_is_access_denied(monkeypatch):
    monkeypatch.setattr(procfs, "kpagecount_readable", lambda root="/proc": False)
    procfs.pfn_access.cache_clear()
    try:
        with pytest.raises(AccessDenied, match="root"):
            pages._pfn_mode(True, "/proc")
        assert pages._pfn_mode(None, "/proc") is False
    finally:
        procfs.pfn_access.cache_clear()


def test_rights_are_probed_once(monkeypatch):
    calls = []

    def probe(root="/proc"):
        calls.append(root)
        return False

    monkeypatch.setattr(procfs, "kpagecount_readable", probe)
    procfs.pfn_access.cache_clear()
    try:
        assert [pages._pfn_mode(None, "/proc") for _ in range(3)] == [False] * 3
        assert calls == ["/proc"]
    finally:
        procfs.pfn_access.cache_clear()


def test_uss_pss_match_smaps_within_one_page_per_mapping(tree):
    rep = scan(tree.master_pid)
    procs = [(rep.master.pid, rep.master)] + [(w.pid, w) for w in rep.workers]
    for pid, p in procs:
        smaps = procfs.read_smaps(pid)
        tol = len(smaps) * P
        uss = sum(c.uss for _m, c in smaps)
        pss = sum(c.pss for _m, c in smaps)
        assert abs(p.uss_bytes - uss) <= tol
        assert abs(p.pss_bytes - pss) <= tol
        assert abs(p.rss_bytes - sum(c.rss for _m, c in smaps)) <= tol
        # baseline: RSS is not PSS (the shared buffer is counted whole), it fails the same bar
        assert abs(p.rss_bytes - pss) > tol


def test_classes_cover_every_present_writable_private_page(tree):
    rep = scan(tree.master_pid, privileged=False)
    for w in rep.workers:
        assert w.shared_bytes + w.copied_bytes + w.new_bytes == sum(
            r.shared_bytes + r.copied_bytes + r.new_bytes for r in w.regions.values())
        assert set(w.regions) == set(pages.REGIONS)
        assert w.regions["heap"].shared_bytes + w.regions["heap"].copied_bytes > 0
        assert w.regions["stack"].shared_bytes + w.regions["stack"].copied_bytes > 0
        assert w.regions["file"].shared_bytes + w.regions["file"].copied_bytes > 0
        # writable private pages are part of RSS
        assert w.shared_bytes + w.copied_bytes + w.new_bytes <= w.rss_bytes
    m = rep.master
    assert m.shared_bytes + m.diverged_bytes + m.new_bytes + m.ambiguous_bytes == sum(
        r.shared_bytes + r.copied_bytes + r.new_bytes for r in m.regions.values()) + m.ambiguous_bytes


def test_python_heap_refcount_writes_are_copied():
    with ForkTree(workers=2, master_mb=1, heap_mb=8, touch_heap=True) as touched, \
            ForkTree(workers=2, master_mb=1, heap_mb=8, touch_heap=False) as untouched:
        t = scan(touched.master_pid, privileged=False)
        u = scan(untouched.master_pid, privileged=False)
        for w in t.workers:
            assert w.regions["python"].copied_bytes >= 4 << 20  # most of the 8 MiB of objects
        for w in u.workers:  # baseline: same heap, not iterated
            assert w.regions["python"].copied_bytes < 2 << 20


def test_worker_gone_before_reading_is_reported(monkeypatch):
    with ForkTree(workers=3, master_mb=2, write_pages=K) as t:
        victim = t.worker_pids[1]
        real = pages._read_worker

        def kill_then_read(pid, *args):
            if pid == victim:
                t.kill_worker(pid)
            return real(pid, *args)

        monkeypatch.setattr(pages, "_read_worker", kill_then_read)
        rep = scan(Tree(t.master_pid, tuple(sorted(t.worker_pids))), keep_addresses=True)
        assert rep.gone == [victim]
        assert sorted(w.pid for w in rep.workers) == sorted(p for p in t.worker_pids if p != victim)
        for w in rep.workers:
            assert _in(w.copied_addrs, t.buf_addr, t.buf_size) == sorted(t.written_addrs)


@pytest.mark.parametrize("stage", ["pagemap-open", "pagemap-read"])
def test_worker_exiting_mid_scan_is_gone_not_an_exception(monkeypatch, stage):
    with ForkTree(workers=2, master_mb=2) as t:
        victim = t.worker_pids[0]
        if stage == "pagemap-open":
            real_init = procfs.Pagemap.__init__

            def init(self, pid, procfs_root="/proc"):
                if pid == victim and victim in t.worker_pids:
                    t.kill_worker(pid)
                real_init(self, pid, procfs_root)

            monkeypatch.setattr(procfs.Pagemap, "__init__", init)
        else:
            real_readv = procfs.Pagemap.readv

            def readv(self, buffers, offset):
                if self.pid == victim and victim in t.worker_pids:
                    t.kill_worker(self.pid)  # the fd is open, the mm goes away
                return real_readv(self, buffers, offset)

            monkeypatch.setattr(procfs.Pagemap, "readv", readv)
        rep = scan(t.master_pid)
        assert rep.gone == [victim]
        assert [w.pid for w in rep.workers] == t.worker_pids


def test_stale_tree_with_dead_worker_and_dead_master():
    with ForkTree(workers=2, master_mb=1) as t:
        stale = Tree(t.master_pid, tuple(sorted(t.worker_pids)))
        dead = t.worker_pids[0]
        t.kill_worker(dead)
        assert scan(stale).gone == [dead]
        # a worker PID reused by an unrelated process is not read as a worker
        reused = Tree(t.master_pid, (t.worker_pids[0], os.getpid()))
        rep = scan(reused)
        assert rep.gone == [os.getpid()] and [w.pid for w in rep.workers] == [t.worker_pids[0]]
        t.stop()
        with pytest.raises(ProcessGone):
            scan(stale)


def test_bad_targets_are_clear_errors():
    with pytest.raises(BadInput):
        scan("123")  # type: ignore[arg-type]
    with pytest.raises(NotAPreforkTree):
        scan(os.getpid())  # pytest: no forked children, parent did not fork it
    with pytest.raises(ProcessGone):
        scan(2**22 + 4321)


def test_json_round_trip_and_documented_keys(tree):
    rep = scan(tree.master_pid, keep_addresses=True)
    d = json.loads(json.dumps(rep.to_dict()))
    assert set(d) >= {"version", "taken_at", "privileged", "mode", "page_size", "scan_seconds", "master",
                      "workers", "gone"}
    assert set(d["master"]) >= {"pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes",
                                "diverged_bytes", "regions"}
    for w in d["workers"]:
        assert set(w) >= {"pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes", "shared_bytes",
                          "copied_bytes", "new_bytes", "regions"}
        assert set(w["regions"]) == set(pages.REGIONS)
        assert "copied_addrs" not in w
    back = PageReport.from_dict(d)
    assert back.to_dict() == d
    assert back.workers[0].copied_addrs is None
    with pytest.raises(BadInput):
        PageReport.from_dict({**d, "version": 99})
    with pytest.raises(BadInput):
        PageReport.from_dict({"version": 1})
    assert scan(tree.master_pid).workers[0].copied_addrs is None


def test_truly_unprivileged_scan_of_own_users_tree():
    py, why = unprivileged_python()
    if py is None:
        pytest.skip(why)
    code = (
        "import json, sys\nfrom cowprof.pages import scan\n"
        "r = scan(int(sys.argv[1]), keep_addresses=True)\n"
        "print(json.dumps({'mode': r.mode, 'privileged': r.privileged, 'gone': r.gone,"
        " 'copied': {w.pid: [int(a) for a in w.copied_addrs] for w in r.workers},"
        " 'diverged': [int(a) for a in r.master.diverged_addrs]}))\n"
    )
    with ForkTree(workers=2, master_mb=4, write_pages=K, master_write_pages=MW, user=(65534, 65534),
                  python=py) as t:
        assert os.stat(f"/proc/{t.master_pid}").st_uid == 65534
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c", code,
                            str(t.master_pid)], cwd="/", capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        out = json.loads(r.stdout)
        assert out["mode"] == "exclusive-bit" and out["privileged"] is False and out["gone"] == []
        assert sorted(int(p) for p in out["copied"]) == sorted(t.worker_pids)
        for addrs in out["copied"].values():
            assert _in(np.array(addrs, dtype=np.uint64), t.buf_addr, t.buf_size) == sorted(t.written_addrs)
        assert _in(np.array(out["diverged"], dtype=np.uint64), t.buf_addr, t.buf_size) == sorted(
            t.master_written_addrs)


# --- Scanner: repeated scans that reuse what cannot have changed -------------------------------

_ON_DEMAND = r"""
import ctypes, mmap, os, sys
PAGE = mmap.PAGESIZE
buf = mmap.mmap(-1, 256 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
view = ctypes.c_char.from_buffer(buf)
addr = ctypes.addressof(view)
del view
if hasattr(mmap, "MADV_NOHUGEPAGE"):
    buf.madvise(mmap.MADV_NOHUGEPAGE)
for i in range(256):
    buf[i * PAGE] = 1
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    done = 0
    while True:
        n = int(os.read(r, 16) or b"0")   # write n more pages of the inherited buffer
        if not n:
            os._exit(0)
        for i in range(done, done + n):
            buf[i * PAGE] = 2
        done += n
        print("WROTE", done, flush=True)
os.close(r)
print("READY", pid, addr, flush=True)
for line in sys.stdin:                   # the test says how many pages the worker writes next
    os.write(w, line.strip().encode())
os.write(w, b"0")
os.waitpid(pid, 0)
"""


def test_scanner_reuses_an_unchanged_tree_and_sees_every_change():
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _ON_DEMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY"
        tree, buf = Tree(proc.pid, (int(ready[1]),)), int(ready[2])
        sc = pages.Scanner(privileged=False)

        def copied() -> int:  # the worker's copies of the master's buffer pages
            return len(_in(sc.scan(tree, keep_addresses=True).workers[0].copied_addrs, buf, 256 * P))

        def settled() -> int:
            """Scan until a scan is answered from the previous report: right after printing, either
            process may still fault on its way back to its blocking read."""
            before = sc.unchanged
            for _ in range(100):
                n = copied()
                if sc.unchanged > before:
                    return n
                time.sleep(0.02)
            raise AssertionError("the tree never stopped faulting")

        assert settled() == 0  # nothing happened: the previous report again
        for n, total in ((7, 7), (30, 37)):
            real = sc.scans - sc.unchanged
            proc.stdin.write(f"{n}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["WROTE", str(total)]
            assert copied() == total  # the worker faulted: a real scan, not the previous report
            assert sc.scans - sc.unchanged == real + 1
            assert settled() == total
        # everything but PSS, which also divides library pages shared with unrelated processes
        def without_pss(r: PageReport) -> list[dict]:
            return [{k: v for k, v in w.items() if k != "pss_bytes"} for w in r.to_dict()["workers"]]

        assert without_pss(scan(tree, privileged=False)) == without_pss(sc.scan(tree))
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_scanner_tolerance_reuses_a_report_within_its_bound():
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _ON_DEMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        ready = proc.stdout.readline().split()
        tree, buf = Tree(proc.pid, (int(ready[1]),)), int(ready[2])
        # 0.1% of this small tree is less than the floor: up to 64 pages of change are tolerated
        sc = pages.Scanner(privileged=False, tolerance=0.001)
        exact = pages.Scanner(privileged=False)

        def write(n: int, total: int) -> None:
            proc.stdin.write(f"{n}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["WROTE", str(total)]

        def copied(report) -> int:
            return len(_in(report.workers[0].copied_addrs, buf, 256 * P))

        write(1, 1)  # the worker's first run after fork copies pages of the interpreter too
        first, drift = sc.read(tree, keep_addresses=True)
        assert copied(first) == 1 and drift == 0
        write(7, 8)
        reused, drift = sc.read(tree, keep_addresses=True)
        assert reused.taken_at == first.taken_at and copied(reused) == 1  # the old page data...
        assert 7 <= drift <= sc.MIN_TOLERANCE_PAGES  # ...with a bound that covers the change
        result = exact.read(tree, keep_addresses=True)
        assert copied(result.report) == 8 and result.drift_pages == 0
        assert copied(sc.scan(tree, keep_addresses=True)) == 1  # scan(): read() without the bound
        write(100, 108)  # more than the tolerance: a real scan
        fresh, drift = sc.read(tree, keep_addresses=True)
        assert copied(fresh) == 108 and drift == 0 and fresh.taken_at > first.taken_at
        # max_age: a report older than that is not reused, however small the change
        young = pages.Scanner(privileged=False, tolerance=0.001, max_age=0.0)
        young.scan(tree, keep_addresses=True)
        write(3, 111)
        result = young.read(tree, keep_addresses=True)
        assert copied(result.report) == 111 and result.drift_pages == 0
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_scanner_drift_counts_faults_and_refuses_shrinking():
    sc = pages.Scanner(tolerance=0.01)
    then = {1: (0, 5, 100, 0, 1000, 50), 2: (1, 6, 10, 0, 1000, 40)}
    # faults count; a grown address space (nothing touched yet) and resident counts do not
    assert sc._drift(then, {1: (0, 5, 103, 1, 1000, 52), 2: (1, 6, 10, 0, 2000, 30)}) == 3 + 1
    assert sc._drift(then, {1: (0, 5, 100, 0, 999, 50), 2: then[2]}) is None  # unmapped: rescan
    with pytest.raises(ValueError):
        pages.Scanner(tolerance=1.5)


def test_tree_watcher_follows_workers_that_exit():
    from cowprof.tree import TreeWatcher, find_tree

    with ForkTree(workers=3, master_mb=2) as t:
        tw = TreeWatcher()
        first = tw.find(t.worker_pids[0])  # any PID of the tree
        assert first == find_tree(t.master_pid) and first.master == t.master_pid
        assert tw.find(t.master_pid) is first  # same children: the same answer, no process-table walk
        victim = sorted(t.worker_pids)[1]
        t.kill_worker(victim)
        after = tw.find(t.master_pid)
        assert victim not in after.workers and len(after.workers) == 2


def test_scans_of_a_real_tree_read_each_stat_once(monkeypatch):
    """With the master's exit seen through a pidfd: one /proc/PID/stat read per process and scan."""
    with ForkTree(workers=2, master_mb=2) as t:
        tree = Tree(t.master_pid, tuple(sorted(t.worker_pids)))
        reads = []
        real = procfs.read_stat
        monkeypatch.setattr(procfs, "read_stat", lambda pid, root="/proc": reads.append(pid) or real(pid, root))
        scan(tree)
        assert sorted(reads) == sorted([t.master_pid, *t.worker_pids])
        sc = pages.Scanner()
        sc.scan(tree)
        reads.clear()
        sc._last = None
        sc.scan(tree)
        assert sorted(reads) == sorted([t.master_pid, *t.worker_pids])


def test_exit_watch_sees_a_zombie_and_a_reaped_process(tmp_path):
    import subprocess as sp

    child = sp.Popen(["sleep", "30"])
    with procfs.ExitWatch(child.pid) as w:
        assert not w.exited()
        child.kill()
        deadline = time.monotonic() + 10
        while not w.exited() and time.monotonic() < deadline:  # a zombie until reaped below
            time.sleep(0.01)
        assert w.exited() and child.poll() is not None and w.exited()
    with procfs.ExitWatch(child.pid) as w:  # reaped: gone
        assert w.exited()
    root = tmp_path / "proc"
    (root / "77").mkdir(parents=True)
    (root / "77" / "stat").write_bytes(b"77 (x) S 1 " + b"0 " * 48)
    with procfs.ExitWatch(77, str(root)) as w:  # another procfs root: stat read again
        assert not w.exited()
        (root / "77" / "stat").write_bytes(b"77 (x) Z 1 " + b"0 " * 48)
        assert w.exited()
