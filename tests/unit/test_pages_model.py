"""``pages.scan`` on a synthetic /proc, against a page-by-page reference classifier.

A small physical model generates a pre-fork tree: the master's pages, workers that still share
some of them, copied some, dropped some, allocated new ones and have mappings of their own, and
master pages that diverged after fork (the workers keep sharing the original). From it come
consistent ``maps``, ``pagemap`` (exclusive bit = mapped once), ``kpagecount``, ``stat`` and
``smaps_rollup`` files. ``reference()`` classifies every page with plain Python loops from the
rules in the ``cowprof.pages`` docstring; the vectorized scan must agree exactly, in both modes,
with the identity and the searched worker-to-master index, gap-merged pagemap reads and a short
read's fallback.
"""
from __future__ import annotations

import os
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from cowprof import pages, procfs
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

    def __init__(self, seed: int, workers: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.next_pfn = 1000
        self.maps: dict[int, list[tuple[int, int, str, str]]] = {}
        self.pages: dict[int, dict[int, tuple[int, bool]]] = {}
        lib = "/usr/lib/x86_64-linux-gnu/libfake.so"
        # the master's mappings: text (read-only, ignored), .data (file pages + CoW'd anon), .bss,
        # a small gap, pymalloc-like anonymous arenas, [heap], a shared mapping (ignored), [stack]
        base = 0x10000000
        layout = [
            (base, 8, "r-xp", lib), (base + 8 * P, 4, "rw-p", lib), (base + 12 * P, 3, "rw-p", ""),
            (base + 20 * P, 64, "rw-p", ""), (base + 90 * P, 40, "rw-p", ""),  # gaps of 5 and 6 pages
            (base + 4000 * P, 50, "rw-p", "[heap]"),  # a big gap: a separate read
            (base + 5000 * P, 6, "rw-s", "/dev/shm/x"), (base + 9000 * P, 10, "rw-p", "[stack]"),
        ]
        self.maps[MASTER] = list((s, s + n * P, perms, path) for s, n, perms, path in layout)
        m = {}
        for s, e, perms, path in self.maps[MASTER]:
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
                wmaps.append((base + 7000 * P, base + 7030 * P, "rw-p", ""))
                wmaps = [x for x in wmaps if x[3] != "[stack]" or i != 3]
            self.maps[pid] = wmaps
            w = {}
            for s, e, perms, path in wmaps:
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
        for pid, maps in self.maps.items():
            d = os.path.join(root, str(pid))
            os.makedirs(d)
            with open(os.path.join(d, "maps"), "w") as f:
                for s, e, perms, path in maps:
                    inode = 77 if path.startswith("/") else 0
                    f.write(f"{s:x}-{e:x} {perms} 00000000 fe:00 {inode}          {path}\n".rstrip() + "\n")
            with open(os.path.join(d, "pagemap"), "wb") as f:
                for a, (pfn, file) in self.pages[pid].items():
                    f.seek(a // P * 8)
                    f.write(_entry(True, self.count[pfn] == 1, file, pfn).to_bytes(8, "little"))
                end = max(e for _s, e, _p, _path in maps)
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

    def reference(self, pfn_mode: bool) -> dict:
        """Every page classified one by one (see the cowprof.pages docstring)."""
        m = self.pages[MASTER]
        region = {}  # (pid, addr) -> region name
        for pid, maps in self.maps.items():
            parsed = procfs.parse_maps("".join(
                f"{s:x}-{e:x} {perms} 00000000 fe:00 {77 if path.startswith('/') else 0} {path}\n"
                for s, e, perms, path in maps).encode())
            prev = None
            for mp in parsed:
                if mp.writable and mp.private:
                    name = pages.REGIONS[pages.region_of(mp, prev)]
                    for a in range(mp.start, mp.end, P):
                        region[(pid, a)] = name
                prev = mp

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
    m = pages._read_pages(MASTER, root, cache)
    same = pages._read_pages(model.workers[0], root, cache)
    other = pages._read_pages(model.workers[1], root, cache)
    assert pages._master_index(same.layout, m.layout) is None
    idx = pages._master_index(other.layout, m.layout)
    assert idx is not None and idx.size == other.layout.size and (idx == m.layout.size).any()


def test_gap_merged_reads_and_the_short_read_fallback(tmp_path, monkeypatch):
    model, root = _model(tmp_path, monkeypatch, 5, 2)
    cache = pages._Cache()
    proc = pages._read_pages(MASTER, root, cache)
    layout = proc.layout
    # .data + .bss are adjacent, the arenas 5 and 6 pages apart: one read; [heap] and [stack] apart
    assert len(layout.ranges) == 6 and len(layout.plan()) == 3
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
