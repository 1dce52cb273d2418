"""``pages.scan`` on a synthetic /proc, against a page-by-page reference classifier.

A small physical model generates a pre-fork tree: the master's pages, workers that still share
some of them, copied some, dropped some, allocated new ones and have mappings of their own, and
master pages that diverged after fork (the workers keep sharing the original). From it come
consistent ``maps``, ``pagemap`` (exclusive bit = mapped once), ``kpagecount``, ``stat`` and
``smaps_rollup`` files. ``reference()`` classifies every page with plain Python loops from the
rules in the ``cowprof.pages`` docstring; the vectorized scan must agree exactly, in both modes,
with the identity and the searched worker-to-master index, gap-merged pagemap reads and a short
read's fallback, and the regions of a library's ``.bss`` read from its ELF program headers.
"""
from __future__ import annotations

import os
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from elfimage import elf_image

from cowprof import _parallel, classify, elf, pages, procfs
from cowprof.errors import ProcessGone
from cowprof.tree import Tree

P = procfs.PAGE_SIZE
MASTER = 500
BTIME = 1_700_000_000


def _entry(present: bool, excl: bool = False, file: bool = False, pfn: int = 0) -> int:
    e = 0
    if present:
        e |= 1 << 63 | pfn
    if excl:
        e |= 1 << 56
    if file:
        e |= 1 << 61
    return e


class Model:
    """Processes as {pid: {page address: (pfn, file page)}} plus their maps lines."""

    LIB = "/usr/lib/x86_64-linux-gnu/libfake.so"  # written under each process's root/
    GONE = "/usr/lib/x86_64-linux-gnu/libgone.so"  # never written: unreadable
    BASE = 0x10000000
    # text at file offset 0, data at 8 pages (4 pages of file, memsz to 5 pages + 7 bytes): the
    # image ends at 14 pages, so of the anonymous mapping at 12 pages the first 2 are its .bss
    LIB_IMAGE = elf_image([(0, 0, 8 * P, 8 * P), (8 * P, 8 * P, 4 * P - 100, 5 * P + 7)])
    BSS_END = BASE + 14 * P

    def __init__(self, seed: int, workers: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.next_pfn = 1000
        self.maps: dict[int, list[tuple[int, int, str, str, int]]] = {}
        self.pages: dict[int, dict[int, tuple[int, bool]]] = {}
        lib = self.LIB
        # the master's mappings: text (read-only, ignored), .data (file pages + CoW'd anon), an
        # anonymous mapping after it that starts with the library's .bss (2 pages, see LIB_IMAGE),
        # another library whose file cannot be read (its data and the anonymous mapping after it
        # are "file", the fallback), pymalloc-like anonymous arenas, [heap], a shared mapping
        # (ignored), [stack]
        base = self.BASE
        layout = [
            (base, 8, "r-xp", lib, 0), (base + 8 * P, 4, "rw-p", lib, 8 * P), (base + 12 * P, 3, "rw-p", "", 0),
            (base + 16 * P, 2, "rw-p", self.GONE, 0), (base + 18 * P, 2, "rw-p", "", 0),
            (base + 25 * P, 64, "rw-p", "", 0), (base + 95 * P, 40, "rw-p", "", 0),  # gaps of 5 and 6 pages
            (base + 4000 * P, 50, "rw-p", "[heap]", 0),  # a big gap: a separate read
            (base + 5000 * P, 6, "rw-s", "/dev/shm/x", 0), (base + 9000 * P, 10, "rw-p", "[stack]", 0),
        ]
        self.maps[MASTER] = list((s, s + n * P, perms, path, off) for s, n, perms, path, off in layout)
        m = {}
        for s, e, perms, path, _off in self.maps[MASTER]:
            for a in range(s, e, P):
                if rng.random() < 0.85:
                    m[a] = (self._pfn(), path == lib and rng.random() < 0.5)
        inherited = dict(m)
        self.pages[MASTER] = m
        self.workers = []
        for i in range(workers):
            pid = MASTER + 1 + i
            self.workers.append(pid)
            wmaps = list(self.maps[MASTER])
            if i % 2 == 1:  # a mapping of its own (new memory) and one of the master's unmapped
                wmaps.append((base + 7000 * P, base + 7030 * P, "rw-p", "", 0))
                wmaps = [x for x in wmaps if x[3] != "[stack]" or i != 3]
            self.maps[pid] = wmaps
            w = {}
            for s, e, perms, path, _off in wmaps:
                for a in range(s, e, P):
                    r = rng.random()
                    if a in inherited and r < 0.55:
                        w[a] = inherited[a]  # still the master's page
                    elif a in inherited and r < 0.8:
                        # copied (or dropped and faulted again); in the library's data, some are
                        # clean file pages read in again, which only this worker maps: new
                        w[a] = (self._pfn(), path == lib and r > 0.72)
                    elif a not in inherited and r < 0.6:
                        w[a] = (self._pfn(), path == lib and r < 0.1)  # new
            self.pages[pid] = w
        # the master writes some of its pages after fork: it gets a copy, the workers keep the original
        for a in list(m):
            if rng.random() < 0.08:
                m[a] = (self._pfn(), False)
        # a few master pages dropped after fork (workers keep theirs)
        for a in list(m):
            if rng.random() < 0.02:
                del m[a]
        self.count = Counter(pfn for pid in self.pages for pfn, _f in self.pages[pid].values())

    def _pfn(self) -> int:
        self.next_pfn += self.rng.randint(1, 40)
        return self.next_pfn

    def write(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "stat"), "w") as f:
            f.write(f"cpu 1 2 3 4\nbtime {BTIME}\n")
        with open(os.path.join(root, "kpagecount"), "wb") as f:
            for pfn, n in self.count.items():
                f.seek(pfn * 8)
                f.write(n.to_bytes(8, "little"))
        image_root = os.path.join(root, "image-root")
        lib_file = image_root + self.LIB
        os.makedirs(os.path.dirname(lib_file))
        with open(lib_file, "wb") as f:
            f.write(self.LIB_IMAGE)
        self.inode = {self.LIB: os.stat(lib_file).st_ino, self.GONE: 4242}
        for pid, maps in self.maps.items():
            d = os.path.join(root, str(pid))
            os.makedirs(d)
            os.symlink(image_root, os.path.join(d, "root"))  # as /proc/PID/root points to its root
            with open(os.path.join(d, "maps"), "w") as f:
                f.write(self.maps_text(pid))
            with open(os.path.join(d, "pagemap"), "wb") as f:
                for a, (pfn, file) in self.pages[pid].items():
                    f.seek(a // P * 8)
                    f.write(_entry(True, self.count[pfn] == 1, file, pfn).to_bytes(8, "little"))
                end = max(e for _s, e, _p, _path, _off in maps)
                f.truncate(end // P * 8)
            fields = ["S", str(MASTER if pid != MASTER else 1)] + ["0"] * 44
            fields[19] = str(100 + pid)  # field 22: start time
            with open(os.path.join(d, "stat"), "w") as f:
                f.write(f"{pid} (python3) {' '.join(fields)}\n")
            rss = len(self.pages[pid]) * P // 1024
            with open(os.path.join(d, "smaps_rollup"), "w") as f:
                f.write(f"00400000-7fff00000000 ---p 00000000 00:00 0    [rollup]\nRss: {rss} kB\n"
                        f"Pss: {rss // 2} kB\nPrivate_Dirty: {rss // 3} kB\nSwap: 0 kB\n")

    # ------------------------------------------------------------------------------ reference

    def maps_text(self, pid: int) -> str:
        return "".join(f"{s:x}-{e:x} {perms} {off:08x} fe:00 {self.inode.get(path, 0)}          {path}".rstrip() + "\n"
                       for s, e, perms, path, off in self.maps[pid])

    def region_name(self, perms: str, path: str, a: int, prev_path: str | None) -> str | None:
        """The region of page ``a`` of a mapping, from the model's own layout (None: not classified)."""
        if perms != "rw-p":
            return None
        if path == "":
            if prev_path == self.LIB and a < self.BSS_END:
                return "file"  # the library's .bss
            return "file" if prev_path == self.GONE else "python"  # no headers: the whole mapping
        return {"[heap]": "heap", "[stack]": "stack"}.get(path, "file")

    def reference(self, pfn_mode: bool) -> dict:
        """Every page classified one by one (see the cowprof.pages docstring)."""
        m = self.pages[MASTER]
        region = {}  # (pid, addr) -> region name
        for pid, maps in self.maps.items():
            prev_end, prev_path = None, None
            for s, e, perms, path, _off in maps:
                adjacent = prev_path if prev_end == s else None
                for a in range(s, e, P):
                    name = self.region_name(perms, path, a, adjacent)
                    if name is not None:
                        region[(pid, a)] = name
                prev_end, prev_path = e, path

        def excl(pid, a):
            return self.count[self.pages[pid][a][0]] == 1

        workers = {}
        at = defaultdict(list)  # master page address -> [(worker, its class)]
        for pid in self.workers:
            regions = defaultdict(lambda: [0, 0, 0])
            tally = [0, 0, 0]
            copied = []
            sharers = Counter()
            same_n = 0
            for a, (pfn, file) in self.pages[pid].items():
                if (pid, a) not in region:
                    continue
                same = pfn_mode and a in m and m[a][0] == pfn
                same_n += same
                if not excl(pid, a) or same:
                    c = 0
                    sharers[min(self.count[pfn], pages.SHARERS_MAX)] += P
                elif (MASTER, a) in region and a in m and not file:
                    c = 1
                    copied.append(a)
                else:
                    c = 2
                tally[c] += 1
                regions[region[(pid, a)]][c] += P
                if (MASTER, a) in region:
                    at[a].append((pid, c))
            workers[pid] = dict(tally=tally, regions=regions, copied=sorted(copied), sharers=sharers,
                                same=same_n)
        mt = [0, 0, 0]
        mregions = defaultdict(lambda: [0, 0, 0])
        ambiguous = 0
        diverged = []
        for a, (pfn, file) in m.items():
            if (MASTER, a) not in region:
                continue
            if not excl(MASTER, a):
                c = 0
            elif file:
                c = 2
            elif any(c2 == 0 for _p, c2 in at[a]):
                c = 1
                diverged.append(a)
            elif at[a]:
                ambiguous += 1
                continue
            else:
                c = 2
            mt[c] += 1
            mregions[region[(MASTER, a)]][c] += P
        for pid, w in workers.items():
            w["ambiguous"] = sum(1 for a in w["copied"] if a in m and excl(MASTER, a) and len(at[a]) == 1)
        return dict(workers=workers, master=dict(tally=mt, regions=mregions, ambiguous=ambiguous,
                                                 diverged=sorted(diverged)))


def _model(tmp_path, monkeypatch, seed: int, workers: int, pfn_mode: bool = False) -> tuple[Model, str]:
    """A model tree written under ``tmp_path``, and scans told which mode they are in."""
    model = Model(seed, workers=workers)
    root = str(tmp_path / "proc")
    model.write(root)
    elf.clear_cache()  # inode numbers of earlier tests' files may be reused
    monkeypatch.setattr(pages, "_pfn_mode", lambda privileged, procfs_root: pfn_mode)
    return model, root


def _check(report: pages.PageReport, ref: dict, pfn_mode: bool) -> None:
    mr = ref["master"]
    assert report.master.shared_bytes == mr["tally"][0] * P
    assert report.master.diverged_bytes == mr["tally"][1] * P
    assert report.master.new_bytes == mr["tally"][2] * P
    assert report.master.ambiguous_bytes == mr["ambiguous"] * P
    for name in pages.REGIONS:
        r = report.master.regions[name]
        assert [r.shared_bytes, r.copied_bytes, r.new_bytes] == mr["regions"].get(name, [0, 0, 0]), name
    assert sorted(report.master.diverged_addrs.tolist()) == mr["diverged"]
    assert [w.pid for w in report.workers] == sorted(ref["workers"])
    for w in report.workers:
        wr = ref["workers"][w.pid]
        assert [w.shared_bytes, w.copied_bytes, w.new_bytes] == [n * P for n in wr["tally"]], w.pid
        for name in pages.REGIONS:
            r = w.regions[name]
            assert [r.shared_bytes, r.copied_bytes, r.new_bytes] == wr["regions"].get(name, [0, 0, 0]), name
        assert sorted(w.copied_addrs.tolist()) == wr["copied"]
        assert w.ambiguous_bytes == wr["ambiguous"] * P
        if pfn_mode:
            assert w.sharers == dict(wr["sharers"])
            assert w.shared_with_master_bytes == wr["same"] * P
        else:
            assert w.sharers is None and w.shared_with_master_bytes is None


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("pfn_mode", [False, True])
def test_scan_matches_the_page_by_page_reference(tmp_path, monkeypatch, seed, pfn_mode):
    model, root = _model(tmp_path, monkeypatch, seed, 4, pfn_mode)
    ref = model.reference(pfn_mode)
    assert ref["master"]["tally"][1] and ref["master"]["ambiguous"]  # the model exercises both
    assert any(w["tally"][1] for w in ref["workers"].values())
    tree = Tree(MASTER, tuple(model.workers))
    _check(pages.scan(tree, procfs_root=root, keep_addresses=True), ref, pfn_mode)
    # the same through a Scanner: cached layouts, reused buffers and index, twice
    sc = pages.Scanner(procfs_root=root)
    for _ in range(2):
        sc._last = None
        _check(sc.scan(tree, keep_addresses=True), ref, pfn_mode)


def test_workers_with_the_masters_ranges_and_without(tmp_path, monkeypatch):
    """Even workers have the master's very ranges (identity index), odd ones do not."""
    model, root = _model(tmp_path, monkeypatch, 7, 2)
    cache = pages._Cache()
    m = classify.read_pages(MASTER, root, cache)
    same = classify.read_pages(model.workers[0], root, cache)
    other = classify.read_pages(model.workers[1], root, cache)
    assert classify.master_index(same.layout, m.layout) is None
    idx = classify.master_index(other.layout, m.layout)
    assert idx is not None and idx.size == other.layout.size and (idx == m.layout.size).any()


def test_gap_merged_reads_and_the_short_read_fallback(tmp_path, monkeypatch):
    model, root = _model(tmp_path, monkeypatch, 5, 2)
    cache = pages._Cache()
    proc = classify.read_pages(MASTER, root, cache)
    layout = proc.layout
    # .data, .bss and the rest of its anonymous mapping (python), the other library's data and
    # anonymous mapping are adjacent, the arenas 5 and 6 pages apart: one read; [heap], [stack] apart
    assert len(layout.ranges) == 9 and len(layout.plan()) == 3
    expected = np.concatenate([procfs.read_pagemap(MASTER, s, e, root) for s, e in layout.ranges])
    assert np.array_equal(proc.entries, expected)
    real = procfs.Pagemap.readv
    calls = []

    def short(self, buffers, offset):
        calls.append(offset)
        return real(self, buffers[:-1], offset) if len(calls) == 1 else real(self, buffers, offset)

    monkeypatch.setattr(procfs.Pagemap, "readv", short)
    layout.entries[:] = 0
    with procfs.Pagemap(MASTER, root) as pm:
        assert np.array_equal(layout.read(pm), expected)
    assert len(calls) == 1  # the fallback read range by range
    ref = model.reference(False)
    _check(pages.scan(Tree(MASTER, tuple(model.workers)), procfs_root=root, keep_addresses=True), ref, False)


def test_a_scan_reads_each_process_stat_once(tmp_path, monkeypatch):
    """scan() and a Scanner's rescan read every process's /proc/PID/stat once (before this branch:
    the master's two or three times, each worker's twice through a Scanner). The master's exit
    check at the end is a pidfd on /proc (tests/integration/test_pages.py); for this fixture root
    it would read stat again, so here it is a stand-in that reads nothing."""
    model, root = _model(tmp_path, monkeypatch, 4, 3)
    tree = Tree(MASTER, tuple(model.workers))

    class NoExit(procfs.ExitWatch):
        def exited(self) -> bool:
            return False

    monkeypatch.setattr(procfs, "ExitWatch", NoExit)
    reads: Counter = Counter()
    real = procfs.read_stat

    def counted(pid, procfs_root="/proc"):
        reads[pid] += 1
        return real(pid, procfs_root)

    monkeypatch.setattr(procfs, "read_stat", counted)
    pages.scan(tree, procfs_root=root)
    assert reads == {pid: 1 for pid in (MASTER, *model.workers)}
    sc = pages.Scanner(procfs_root=root)
    for _ in range(2):
        reads.clear()
        sc._last = None  # a full rescan each time
        sc.scan(tree)
        assert reads == {pid: 1 for pid in (MASTER, *model.workers)}


def test_scans_on_one_thread_and_on_several_agree(tmp_path, monkeypatch):
    model, root = _model(tmp_path, monkeypatch, 5, 4, True)
    tree = Tree(MASTER, tuple(model.workers))
    ref = model.reference(True)
    for threads in (1, 3):
        monkeypatch.setattr(_parallel, "READ_THREADS", threads)
        monkeypatch.setattr(pages, "in_threads", lambda jobs, first=None, threads=threads:
                            _parallel.in_threads(jobs, first, threads))
        _check(pages.scan(tree, procfs_root=root, keep_addresses=True), ref, True)


def test_a_worker_whose_stat_the_scanner_could_not_read_is_gone(tmp_path, monkeypatch):
    model, root = _model(tmp_path, monkeypatch, 6, 3)
    tree = Tree(MASTER, tuple(model.workers))
    victim = model.workers[1]
    real = procfs.read_stat

    def gone_once(pid, procfs_root="/proc"):
        if pid == victim:
            raise ProcessGone(pid)
        return real(pid, procfs_root)

    monkeypatch.setattr(procfs, "read_stat", gone_once)
    rep = pages.Scanner(procfs_root=root).scan(tree)
    assert rep.gone == [victim] and victim not in [w.pid for w in rep.workers]
    assert len(rep.workers) == len(model.workers) - 1
