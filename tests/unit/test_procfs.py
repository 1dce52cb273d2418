"""Parsers and readers of cowprof.procfs on fixture files (tests/unit/fixtures/procfs) and /proc."""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

from cowprof import procfs
from cowprof.procfs import pagemap
from cowprof.errors import AccessDenied, CowprofError, ProcessGone

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "procfs")
KB = 1024
P = procfs.PAGE_SIZE


# ------------------------------------------------------------------------------------ maps


def test_maps_fixture_parsed_fields():
    maps = procfs.read_maps(4242, FIX)
    assert len(maps) == 11
    m = maps[1]
    assert (m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path) == (
        0x555555558000, 0x55555555C000, "rw-p", 0x4000, "fe:00", 1234, "/usr/bin/python3.12")
    assert m.writable and m.private and m.file_backed and m.size == 16 * KB
    assert maps[2].path == "" and not maps[2].file_backed
    assert maps[3].path == "[heap]" and not maps[3].file_backed
    assert maps[7].perms == "rw-s" and not maps[7].private
    assert maps[8].path == "[anon:cpython:pymalloc]"
    assert maps[-1].start == 0xFFFFFFFFFF600000


def test_maps_odd_lines_skipped_and_paths_kept():
    maps = procfs.read_maps(4244, FIX)
    # garbage, empty, end<start and the truncated last line are dropped
    assert [(m.start, m.path) for m in maps] == [
        (0x555555554000, "/opt/my app/bin/python (deleted)"),
        (0x7FFFF7A00000, ""),
        (0x7FFFF7C00000, "/memfd:jit (deleted)"),
    ]
    assert maps[2].dev == "103:02"


def test_maps_of_zombie_is_process_gone():
    with pytest.raises(ProcessGone):
        procfs.read_maps(4243, FIX)


def test_missing_pid_is_process_gone_with_pid():
    with pytest.raises(ProcessGone) as ei:
        procfs.read_maps(999999, FIX)
    assert ei.value.pid == 999999 and ei.value.exit_code == 3


@pytest.mark.parametrize("euid", [1000, 0])
def test_permission_error_is_access_denied_naming_what_is_needed(monkeypatch, euid):
    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(procfs, "open", denied, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    with pytest.raises(AccessDenied) as ei:
        procfs.read_maps(4242, FIX)
    msg = str(ei.value)
    assert "process 4242" in msg and "\n" not in msg
    if euid:
        assert "same user" in msg and "or as root" in msg
    else:  # root is not told to run as root
        assert "even as root" in msg and "run cowprof" not in msg and "or as root" not in msg


def test_other_oserror_is_a_cowprof_error(monkeypatch):
    def eio(*_a, **_k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(procfs, "open", eio, raising=False)
    with pytest.raises(CowprofError, match="cannot read"):
        procfs.read_maps(4242, FIX)


# ----------------------------------------------------------------------- smaps and rollup


def test_rollup_fixture_values_in_bytes():
    c = procfs.read_smaps_rollup(4242, FIX)
    assert c.rss == 1780 * KB and c.pss == 960 * KB
    assert c.uss == (4 + 252) * KB  # private clean + private dirty
    assert c.swap == 12 * KB and c.swap_pss == 12 * KB and c.anonymous == 1684 * KB


def test_smaps_sum_equals_rollup_on_fixture():
    entries = procfs.read_smaps(4242, FIX)
    assert len(entries) == 11
    assert [m for m, _c in entries] == procfs.read_maps(4242, FIX)
    roll = procfs.read_smaps_rollup(4242, FIX)
    for name in ("rss", "pss", "shared_clean", "shared_dirty", "private_clean", "private_dirty", "swap"):
        assert sum(getattr(c, name) for _m, c in entries) == getattr(roll, name), name
    heap = entries[3][1]
    assert heap.rss == 600 * KB and heap.uss == 200 * KB


def test_smaps_truncated_and_odd_lines():
    entries = procfs.read_smaps(4244, FIX)
    assert [m.path for m, _c in entries] == ["", "/memfd:jit (deleted)"]
    first, last = entries[0][1], entries[1][1]
    assert (first.rss, first.pss, first.private_dirty, first.shared_dirty) == (100 * KB, 50 * KB, 50 * KB, 50 * KB)
    assert (last.rss, last.pss, last.private_clean) == (16 * KB, 16 * KB, 0)  # truncated line ignored


def test_rollup_truncated_and_headerless():
    c = procfs.read_smaps_rollup(4244, FIX)
    assert (c.rss, c.pss, c.uss, c.shared_dirty) == (116 * KB, 66 * KB, 66 * KB, 0)


def test_empty_rollup_is_process_gone():
    with pytest.raises(ProcessGone):
        procfs.read_smaps_rollup(4243, FIX)
    with pytest.raises(ProcessGone):
        procfs.read_smaps(4243, FIX)


def test_rollup_falls_back_to_smaps_when_absent(tmp_path):
    root = tmp_path / "proc"
    shutil.copytree(FIX, root)
    os.unlink(root / "4242" / "smaps_rollup")
    assert procfs.read_smaps_rollup(4242, str(root)) == procfs.read_smaps_rollup(4242, FIX)


# ------------------------------------------------------------------------------------ stat


def test_stat_fields():
    st = procfs.read_stat(4242, FIX)
    assert (st.pid, st.comm, st.state, st.ppid, st.starttime_ticks) == (4242, "python3.12", "S", 4200, 12345)
    assert st.start_stack == 140737488349184 and st.start_brk == 93824994344960
    assert not st.zombie and procfs.read_stat(4243, FIX).zombie


def test_stat_comm_with_parentheses_and_short_line():
    st = procfs.read_stat(4244, FIX)
    assert st.comm == "we) ird (name)" and st.state == "S" and st.ppid == 4242
    assert st.start_stack == 0 and st.start_brk == 0  # fields missing from the short line


def test_stat_garbage_is_process_gone():
    with pytest.raises(ProcessGone):
        procfs.parse_stat(1, b"")
    with pytest.raises(ProcessGone):
        procfs.parse_stat(1, b"1 (x")


def test_start_time_from_btime_and_ticks():
    assert procfs.boot_time(FIX) == 1763770000.0
    assert procfs.start_time(4242, FIX) == pytest.approx(1763770000 + 12345 / os.sysconf("SC_CLK_TCK"))


# --------------------------------------------------------------------------------- pagemap


def _entries(present=False, swapped=False, file=False, excl=False, pfn=0):
    e = pfn
    e |= (1 << 63) if present else 0
    e |= (1 << 62) if swapped else 0
    e |= (1 << 61) if file else 0
    e |= (1 << 56) if excl else 0
    return e


def _pagemap_root(tmp_path, pid, entries_at):
    """A fixture root whose <pid>/pagemap holds ``entries_at`` {vaddr: entry} (sparse file)."""
    root = tmp_path / "proc"
    (root / str(pid)).mkdir(parents=True)
    with open(root / str(pid) / "pagemap", "wb") as f:
        for addr, e in entries_at.items():
            f.seek((addr // P) * 8)
            f.write(int(e).to_bytes(8, "little"))
    return str(root)


def test_pagemap_read_and_decode(tmp_path):
    base = 0x7F0000000000
    ents = {
        base: _entries(present=True, excl=True, pfn=0x1234),
        base + P: _entries(present=True, file=True, pfn=0x42),
        base + 2 * P: _entries(swapped=True, pfn=0x777),  # swap entry bits are not a PFN
        base + 4 * P: _entries(present=True, pfn=(1 << 55) - 1),
    }
    root = _pagemap_root(tmp_path, 77, ents)
    arr = procfs.read_pagemap(77, base, base + 5 * P, root)
    assert arr.dtype == np.uint64 and arr.shape == (5,)
    b = procfs.decode(arr)
    assert b.present.tolist() == [True, True, False, False, True]
    assert b.swapped.tolist() == [False, False, True, False, False]
    assert b.file.tolist() == [False, True, False, False, False]
    assert b.exclusive.tolist() == [True, False, False, False, False]
    assert b.pfn.tolist() == [0x1234, 0x42, 0, 0, (1 << 55) - 1]


def test_pagemap_read_ranges_concatenates_with_offsets(tmp_path):
    a, b = 0x10000000, 0x20000000
    root = _pagemap_root(tmp_path, 78, {a + P: _entries(present=True, pfn=5), b: _entries(present=True, pfn=9),
                                        b + 3 * P: 0})
    with procfs.Pagemap(78, root) as pm:
        out, offs = pm.read_ranges([(a, a + 2 * P), (b, b + 4 * P)])
    assert offs.tolist() == [0, 2, 6]
    assert (out & procfs.PM_PFN_MASK).tolist() == [0, 5, 9, 0, 0, 0]


def test_pagemap_big_read_is_chunked(tmp_path, monkeypatch):
    monkeypatch.setattr(pagemap, "PAGEMAP_CHUNK", 3)
    base = 0x30000000
    ents = {base + i * P: _entries(present=True, pfn=i + 1) for i in range(10)}
    root = _pagemap_root(tmp_path, 79, ents)
    arr = procfs.read_pagemap(79, base, base + 10 * P, root)
    assert (arr & procfs.PM_PFN_MASK).tolist() == list(range(1, 11))


def test_pagemap_read_past_end_is_process_gone(tmp_path):
    root = _pagemap_root(tmp_path, 80, {0x1000: _entries(present=True)})
    with pytest.raises(ProcessGone):
        procfs.read_pagemap(80, 0x100000, 0x101000, root)
    with pytest.raises(ProcessGone):
        procfs.read_pagemap(81, 0, P, root)  # no such pid


def test_own_pagemap_sees_touched_pages_present_and_exclusive():
    buf = np.ones(64 * P // 8, dtype=np.uint64)
    start = buf.ctypes.data // P * P + P  # whole pages inside the buffer
    arr = procfs.read_pagemap(os.getpid(), start, start + 32 * P)
    b = procfs.decode(arr)
    assert b.present.all() and b.exclusive.all() and not b.file.any()
    if procfs.pfns_visible():
        assert (b.pfn != 0).all()
    else:
        assert (b.pfn == 0).all()


# ------------------------------------------------------------------------------ kpagecount


def _kpagecount_root(tmp_path, n):
    root = tmp_path / "kroot"
    root.mkdir()
    counts = (np.arange(n, dtype=np.uint64) * 7 + 3) % 11
    counts.tofile(root / "kpagecount")
    return str(root), counts


@pytest.mark.parametrize("max_reads, threads", [(16384, 1), (16384, 3), (4096, 2), (3, 1), (1, 1)])
def test_kpagecount_random_pfns_with_duplicates(tmp_path, monkeypatch, max_reads, threads):
    monkeypatch.setattr(pagemap, "KPAGECOUNT_MAX_READS", max_reads)
    root, counts = _kpagecount_root(tmp_path, 200_000)
    rng = np.random.default_rng(1)
    pfns = np.concatenate([rng.integers(0, 200_000, 5000), np.arange(1000, 1100), [0, 199_999, 5, 5]]).astype(np.uint64)
    got = procfs.read_kpagecount(pfns, root, threads=threads)
    assert got.dtype == np.int64 and got.shape == pfns.shape
    assert (got == counts[pfns.astype(np.int64)].astype(np.int64)).all()


def test_kpagecount_empty_and_past_end(tmp_path):
    root, counts = _kpagecount_root(tmp_path, 100)
    assert procfs.read_kpagecount(np.array([], dtype=np.uint64), root).size == 0
    got = procfs.read_kpagecount(np.array([99, 100, 5000], dtype=np.uint64), root)
    assert got.tolist() == [int(counts[99]), 0, 0]


def test_kpagecount_unreadable_is_access_denied_or_missing(tmp_path):
    assert not procfs.kpagecount_readable(str(tmp_path))
    with pytest.raises(CowprofError):
        procfs.read_kpagecount(np.array([1], dtype=np.uint64), str(tmp_path))


def test_kpagecount_real_when_root():
    if not procfs.kpagecount_readable():
        pytest.skip("/proc/kpagecount not readable (needs root)")
    buf = np.ones(16 * P // 8, dtype=np.uint64)
    start = buf.ctypes.data // P * P + P
    b = procfs.decode(procfs.read_pagemap(os.getpid(), start, start + 8 * P))
    if not procfs.pfns_visible():
        pytest.skip("PFNs hidden")
    # our private, written pages are mapped exactly once
    assert procfs.read_kpagecount(b.pfn).tolist() == [1] * 8


# ------------------------------------------------------------------ rights, exe, cmdline, pids


def test_pfn_probes_agree():
    """The stack-page probe (no numpy) answers what the probe on a freshly written page answers."""
    assert procfs.pfns_visible() == pagemap.pfns_visible_in_new_page()
    procfs.pfn_access.cache_clear()
    assert procfs.pfn_access() == (procfs.kpagecount_readable() and procfs.pfns_visible())


def _proc_dir(tmp_path, pid, cmdline: bytes, state: str = "S"):
    root = tmp_path / "proc"
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(cmdline)
    (d / "stat").write_bytes(f"{pid} (x) {state} 1 ".encode() + b"0 " * 48 + b"\n")
    return str(root), d


@pytest.mark.parametrize("raw, expected", [
    (b"python\0-m\0app\0", ["python", "-m", "app"]),
    (b"gunicorn: master [app]", ["gunicorn:", "master", "[app]"]),  # rewritten without NULs
    (b"gunicorn: worker [app]\0", ["gunicorn:", "worker", "[app]"]),  # spaces, one trailing NUL
    (b"a b\0c\0", ["a b", "c"]),
    (b"", []),
])
def test_cmdline_split_like_psutil(tmp_path, raw, expected):
    root, _ = _proc_dir(tmp_path, 90, raw)
    assert procfs.read_cmdline(90, root) == expected


def test_empty_cmdline_of_a_zombie_is_process_gone(tmp_path):
    root, _ = _proc_dir(tmp_path, 91, b"", state="Z")
    with pytest.raises(ProcessGone):
        procfs.read_cmdline(91, root)


def test_exe_link(tmp_path):
    root, d = _proc_dir(tmp_path, 92, b"x\0")
    os.symlink(sys.executable, d / "exe")
    assert procfs.read_exe(92, root) == sys.executable
    os.unlink(d / "exe")
    os.symlink("/nonexistent/python (deleted)", d / "exe")
    assert procfs.read_exe(92, root) == "/nonexistent/python"
    os.unlink(d / "exe")
    assert procfs.read_exe(92, root) == ""  # no link, the process is there: a kernel thread
    with pytest.raises(ProcessGone):
        procfs.read_exe(93, root)
    assert procfs.read_exe(os.getpid()) == os.path.realpath(sys.executable)


def test_list_pids(tmp_path):
    root, _ = _proc_dir(tmp_path, 95, b"")
    (tmp_path / "proc" / "12").mkdir()
    (tmp_path / "proc" / "self").mkdir()
    assert procfs.list_pids(root) == [12, 95]
    assert os.getpid() in procfs.list_pids()
