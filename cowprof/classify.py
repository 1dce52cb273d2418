"""The numpy half of a scan: each process's pagemap entries, read into reused arrays, and the
vectorized classification of every page (see :mod:`cowprof.pages` for the classes and modes).

:mod:`cowprof.pages` imports this module while its threads already read the tree's text files,
so numpy's import runs alongside the kernel's page-table walks.
"""
from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any

import numpy as np

from . import procfs
from ._parallel import READ_THREADS
from .pagereport import SHARERS_MAX, MasterPages, RegionPages, WorkerPages
from .procfs import pagemap
from .regions import REGIONS, region_ranges

if TYPE_CHECKING:
    from .pages import _Cache

_NR = len(REGIONS)


# The top byte of a pagemap entry (entry >> 56) holds every flag the classification needs: the
# classification works on that byte (8x less memory traffic than the entries), adding per-page
# facts in bits the mask leaves free, and tests each class with one mask-and-compare.
_T_EXCL = 0x01  # bit 56: exclusively mapped (mapcount 1)
_T_FILE = 0x20  # bit 61: file page or shared anonymous
_T_PRESENT = 0x80  # bit 63
_T_USED = _T_PRESENT | _T_FILE | _T_EXCL
_K_MASTER = 0x02  # worker page: the master has a present page at its address
#                   master page: some worker still shares the page at its address
_K_SAME = 0x04  # worker page (pfn mode): it is the master's very page (same PFN)
#                 master page: some worker has a present page at its address
# (mask, value): the page is in the class when key & mask == value. A worker page is shared when
# present and not (exclusive and not the master's very page), new when present and neither.
_W_COPIED = (_T_USED | _K_MASTER | _K_SAME, _T_PRESENT | _T_EXCL | _K_MASTER)  # anon, exclusive, master has one
_W_NOT_SHARED = (_T_EXCL | _K_SAME, _T_EXCL)
_M_SHARED = (_T_PRESENT | _T_EXCL, _T_PRESENT)
_M_DIVERGED = (_T_USED | _K_MASTER, _T_PRESENT | _T_EXCL | _K_MASTER)  # anon, exclusive, a worker shares
_M_AMBIGUOUS = (_T_USED | _K_MASTER | _K_SAME, _T_PRESENT | _T_EXCL | _K_SAME)  # ... workers there, none shares
assert (_K_MASTER, _K_SAME) == (1 << 1, 1 << 2)  # the scan sets them with shifts
_TOP_BYTE = 7 if sys.byteorder == "little" else 0
#: read across gaps of at most this many pages between two mappings (into a scratch buffer): one
#: read syscall instead of two, for a few cheap page-table entries
_GAP_PAGES = 64
_IOV_MAX = 1024


def _is(key: np.ndarray, test: tuple[int, int], tmp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``key & mask == value`` into ``out`` (bool), with ``tmp`` (uint8) as scratch."""
    np.bitwise_and(key, np.uint8(test[0]), out=tmp)
    np.equal(tmp, np.uint8(test[1]), out=out)
    return out


class _Buffers:
    """Work arrays of one layout, reused by every scan of a :class:`Scanner` while the layout
    stands: a scan allocates (and the kernel zero-fills) next to nothing."""

    def __init__(self, n: int) -> None:
        self.top = np.empty(n, dtype=np.uint8)
        self.key = np.empty(n, dtype=np.uint8)
        self.tmp = np.empty(n, dtype=np.uint8)
        self.present = np.empty(n, dtype=bool)
        self.shared = np.empty(n, dtype=bool)
        self.copied = np.empty(n, dtype=bool)
        self.mask = np.empty(n, dtype=bool)
        self._ext: dict[str, np.ndarray] = {}

    def ext(self, name: str, dtype: Any = np.uint8) -> np.ndarray:
        """A master-side array with one extra slot (see master_index), zeroed."""
        a = self._ext.get(name)
        if a is None:
            a = self._ext[name] = np.zeros(self.top.size + 1, dtype=dtype)
        else:
            a.fill(0)
        return a


class _Layout:
    """The writable private mappings of one ``/proc/PID/maps`` content: where their pages go in the
    concatenated pagemap array (grouped by region, so a region is one slice), and a read plan that
    reads them in few syscalls.

    Kept (by :class:`Scanner`) while ``maps`` reads the same, together with the array the entries
    are read into, so a repeated scan allocates nothing for them."""

    def __init__(self, raw: bytes, split: list[tuple[int, int, int]]) -> None:
        self.raw = raw
        ranges = [(s, e) for s, e, _r in split]
        regions = [r for _s, _e, r in split]
        order = sorted(range(len(ranges)), key=lambda i: (regions[i], ranges[i][0]))
        self.ranges = [ranges[i] for i in order]
        self.starts = np.array([s >> procfs.PAGE_SHIFT for s, _e in self.ranges], dtype=np.int64)
        counts = np.array([(e - s) >> procfs.PAGE_SHIFT for s, e in self.ranges], dtype=np.int64)
        self.offsets = np.zeros(len(self.ranges) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.size = int(self.offsets[-1])
        sorted_regions = [regions[i] for i in order]
        offs = self.offsets.tolist()
        #: per region code, the [start, end) slice of its pages
        self.spans = [(offs[bisect_left(sorted_regions, r)], offs[bisect_right(sorted_regions, r)])
                      for r in range(_NR)]
        self.entries = np.empty(self.size, dtype=np.uint64)
        self._plan: list[tuple[int, list[memoryview], int]] | None = None
        self._buffers: _Buffers | None = None

    def buffers(self) -> _Buffers:
        if self._buffers is None:
            self._buffers = _Buffers(self.size)
        return self._buffers

    def count(self, mask: np.ndarray) -> list[int]:
        """Pages of each region where ``mask`` holds."""
        return [int(np.count_nonzero(mask[a:b])) if b > a else 0 for a, b in self.spans]

    def by_address(self) -> list[tuple[int, int, int]]:
        """(first page number, pages, offset in the concatenation) of each range, in address order."""
        return sorted(zip((s >> procfs.PAGE_SHIFT for s, _e in self.ranges),
                          np.diff(self.offsets).tolist(), self.offsets[:-1].tolist()))

    def plan(self) -> list[tuple[int, list[memoryview], int]]:
        """(file offset, buffers, bytes) per read: ranges separated by at most _GAP_PAGES pages are
        read in one preadv, the gap's entries going to a scratch buffer."""
        if self._plan is None:
            out = memoryview(self.entries).cast("B")
            scratch = memoryview(bytearray(_GAP_PAGES * 8))
            plan: list[tuple[int, list[memoryview], int]] = []
            end = -1  # first page number after the current read
            for first, n, o in self.by_address():
                if not n:
                    continue
                gap = first - end
                if plan and 0 <= gap <= _GAP_PAGES and len(plan[-1][1]) + 2 <= _IOV_MAX:
                    offset, buffers, nbytes = plan[-1]
                    if gap:
                        buffers.append(scratch[: gap * 8])
                    buffers.append(out[o * 8 : (o + n) * 8])
                    plan[-1] = (offset, buffers, nbytes + (gap + n) * 8)
                else:
                    plan.append((first * 8, [out[o * 8 : (o + n) * 8]], n * 8))
                end = first + n
            self._plan = plan
        return self._plan

    def read(self, pm: pagemap.Pagemap) -> np.ndarray:
        """The pagemap entries of every page of the ranges, concatenated (into ``self.entries``)."""
        for offset, buffers, nbytes in self.plan():
            if pm.readv(buffers, offset) != nbytes:
                # short read (not seen in practice): the careful per-range path
                for (s, _e), o, o2 in zip(self.ranges, self.offsets[:-1].tolist(), self.offsets[1:].tolist()):
                    if o2 > o:
                        pm.read_into(self.entries[o:o2], s)
                break
        return self.entries

    def vpns(self, idx: np.ndarray) -> np.ndarray:
        """Virtual page numbers of the pages at concatenated indexes ``idx``."""
        j = np.searchsorted(self.offsets, idx, side="right") - 1
        return self.starts[j] + (idx - self.offsets[j])


class _Proc:
    """One process's pages in one scan."""

    __slots__ = ("pid", "layout", "entries", "top")

    def __init__(self, pid: int, layout: _Layout, entries: np.ndarray, top: np.ndarray) -> None:
        self.pid = pid
        self.layout = layout
        self.entries = entries  # uint64 pagemap entry per page (the layout's buffer when cached)
        self.top = top  # uint8 per page: the entry's top byte & _T_USED

    def pfns(self) -> np.ndarray:
        """PFN per page, 0 where not present (or not visible)."""
        return np.where(self.top >= _T_PRESENT, self.entries & pagemap.PM_PFN_MASK, np.uint64(0))


def read_pages(pid: int, procfs_root: str, cache: _Cache | None = None, raw: bytes | None = None,
               split: list[tuple[int, int, int]] | None = None) -> _Proc:
    """One process's pagemap entries of its writable private mappings. ``raw``/``split``: its
    ``maps`` and their region split (``regions.region_ranges``) when the caller read them (``split``
    None: the layout in ``cache`` has these very maps); else both are read here."""
    if raw is None:
        raw = procfs.read_bytes(pid, "maps", procfs_root)
    layout = cache.layouts.get(pid) if cache is not None else None
    if layout is None or layout.raw != raw:
        if split is None:
            maps = procfs.parse_maps(raw)
            if not maps:
                raise procfs.no_memory(pid)
            split = region_ranges(maps, pid, procfs_root)
        layout = _Layout(raw, split)
        if cache is not None:
            cache.layouts[pid] = layout
    with pagemap.Pagemap(pid, procfs_root) as pm:
        entries = layout.read(pm)
    top = np.bitwise_and(entries.view(np.uint8)[_TOP_BYTE::8], np.uint8(_T_USED), out=layout.buffers().top)
    return _Proc(pid, layout, entries, top)


def master_index(w: _Layout, m: _Layout, cache: _Cache | None = None, pid: int = 0) -> np.ndarray | None:
    """For each page of ``w``, the index of the master's page at the same address, or ``m.size``
    (one past the master's pages: index arrays with one extra slot take it) where the master has no
    mapping. None when both have the very same ranges (the index is the identity)."""
    hit = cache.index.get(pid) if cache is not None else None
    if hit is not None and hit[0] is w and hit[1] is m:
        return hit[2]
    idx = None if w.ranges == m.ranges else _compute_master_index(w, m)
    if cache is not None:
        cache.index[pid] = (w, m, idx)
    return idx


def _compute_master_index(w: _Layout, m: _Layout) -> np.ndarray:
    idx = np.full(w.size, m.size, dtype=np.intp)
    by_address = m.by_address()
    m_starts = [r[0] for r in by_address]
    m_ends = [r[0] + r[1] for r in by_address]
    m_offs = [r[2] for r in by_address]
    for ws, wn, wo in w.by_address():
        we = ws + wn
        j = max(bisect_right(m_starts, ws) - 1, 0)
        while j < len(m_starts) and m_starts[j] < we:
            a, b = max(ws, m_starts[j]), min(we, m_ends[j])
            if a < b:
                idx[wo + a - ws : wo + b - ws] = np.arange(m_offs[j] + a - m_starts[j], m_offs[j] + b - m_starts[j])
            j += 1
    return idx


def _at(idx: np.ndarray | None, ext: np.ndarray) -> np.ndarray:
    """Per worker page, the value of a master-indexed array with one extra slot (see master_index)."""
    return ext[:-1] if idx is None else ext[idx]


def _regions(shared: list[int], copied: list[int], new: list[int], page: int) -> dict[str, RegionPages]:
    return {name: RegionPages(shared[r] * page, copied[r] * page, new[r] * page) for r, name in enumerate(REGIONS)}


class _Worker:
    __slots__ = ("pid", "started_at", "counters", "pages", "m_idx", "key", "present", "shared", "same",
                 "own_need", "own_counts")

    def __init__(self, pid: int, started_at: float, counters: procfs.MemCounters, pages: _Proc,
                 m_idx: np.ndarray | None) -> None:
        self.pid = pid
        self.started_at = started_at
        self.counters = counters
        self.pages = pages
        self.m_idx = m_idx  # see master_index
        self.key: np.ndarray | None = None  # uint8 per page: top byte | _K_MASTER | _K_SAME
        self.present: np.ndarray | None = None  # bool per page
        self.shared: np.ndarray | None = None  # bool per page: present and shared
        self.same: np.ndarray | None = None  # pfn mode: bool per page, it is the master's very page
        self.own_need: np.ndarray | None = None  # pfn mode: bool per page, shared but not the master's page
        self.own_counts: np.ndarray | None = None  # pfn mode: kpagecount of the own_need pages


def _addrs(pages: _Proc, mask: np.ndarray) -> np.ndarray:
    """Virtual addresses of the pages where ``mask`` holds, in address order."""
    vpns = pages.layout.vpns(np.flatnonzero(mask))
    vpns.sort()
    return vpns.astype(np.uint64) << np.uint64(procfs.PAGE_SHIFT)


def classify(master: _Proc, m_started: float, m_counters: procfs.MemCounters, workers: list[_Worker], *,
             pfn_mode: bool, procfs_root: str, keep_addresses: bool) -> tuple[MasterPages, list[WorkerPages]]:
    """The master's and each worker's pages by class and region (steps 2-5 of a scan)."""
    m_present, m_at_flag = _master_flags(master)
    m_counts_ext = _match_pfns(master, m_present, workers, procfs_root) if pfn_mode else None  # 2.
    seen_any, seen_shared, several = _key_workers(master, m_at_flag, workers)  # 3.
    master_pages = _master_pages(master, m_started, m_counters, m_present, seen_any, seen_shared,
                                 keep_addresses)  # 4.
    solo_own = _solo_own(master, seen_any, several)  # 5.
    return master_pages, [_worker_pages(w, solo_own, m_counts_ext, keep_addresses) for w in workers]


def _master_flags(master: _Proc) -> tuple[np.ndarray, np.ndarray]:
    """The master's present pages (bool), and ``_K_MASTER`` where it has one (master-indexed, extra slot)."""
    # Master-indexed arrays have one extra slot, where worker pages without a master mapping land.
    mb = master.layout.buffers()
    m_present = np.greater_equal(master.top, np.uint8(_T_PRESENT), out=mb.present)
    m_at_flag = mb.ext("at_flag")  # _K_MASTER where the master has a present page
    np.left_shift(m_present.view(np.uint8), 1, out=m_at_flag[:-1])  # _K_MASTER is bit 1
    return m_present, m_at_flag


def _match_pfns(master: _Proc, m_present: np.ndarray, workers: list[_Worker], procfs_root: str) -> np.ndarray:
    """Step 2 in pfn mode: each worker's ``same``/``own_need``/``own_counts``; the master's kpagecounts."""
    # 2. sharing is the exclusive bit (mapcount == 1). With root, also: is it the master's very
    #    page (same PFN), and kpagecount of the shared pages, read once per PFN (a worker page
    #    that is the master's page has the master's count), for the ``sharers`` histogram.
    m_top = master.top
    m_size = m_top.size
    m_pfn_ext = np.zeros(m_size + 1, dtype=np.uint64)
    m_pfn_ext[:-1] = master.pfns()
    m_need = m_present & (m_top & _T_EXCL == 0)
    need = [m_pfn_ext[:-1][m_need]]
    for w in workers:
        w_pfn = w.pages.pfns()  # 0 where not present, and the master's is 0 where it has no page
        w.same = (_at(w.m_idx, m_pfn_ext) == w_pfn) & (w_pfn != 0)
        w.own_need = (w.pages.top & (_T_PRESENT | _T_EXCL) == _T_PRESENT) & ~w.same
        need.append(w_pfn[w.own_need])
    parts = np.split(pagemap.read_kpagecount(np.concatenate(need), procfs_root, threads=READ_THREADS),
                     np.cumsum([a.size for a in need])[:-1])
    m_counts_ext = np.zeros(m_size + 1, dtype=np.int64)
    m_counts_ext[:-1][m_need] = parts[0]
    for w, c in zip(workers, parts[1:]):
        w.own_counts = c
    return m_counts_ext


def _key_workers(master: _Proc, m_at_flag: np.ndarray,
                 workers: list[_Worker]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3: each worker's key, present and shared pages; per master page seen_any, seen_shared, several."""
    # 3. workers: each page's key byte (flags of its entry, whether the master has a page there, in
    #    pfn mode whether it is the master's very page) decides its class. Per master page: whether
    #    some worker has a present page at its address (``seen_any``), still shares it
    #    (``seen_shared``), and whether more than one worker has one (``several``).
    mb = master.layout.buffers()
    seen_any = mb.ext("seen_any")[:-1]
    seen_shared = mb.ext("seen_shared")[:-1]
    several = mb.ext("several")[:-1]
    m_tmp = mb.tmp
    scratch = mb.ext("scratch")
    for w in workers:
        wb = w.pages.layout.buffers()
        key = wb.key
        if w.m_idx is None:
            np.bitwise_or(w.pages.top, m_at_flag[:-1], out=key)
        else:
            np.take(m_at_flag, w.m_idx, out=key)
            key |= w.pages.top
        if w.same is not None:
            key |= w.same.view(np.uint8) << np.uint8(2)  # _K_SAME is bit 2
        w.key = key
        w.present = np.greater_equal(key, np.uint8(_T_PRESENT), out=wb.present)
        w.shared = _is(key, _W_NOT_SHARED, wb.tmp, wb.shared)
        np.logical_not(w.shared, out=w.shared)
        w.shared &= w.present
        p = _at_master(w.present.view(np.uint8), w.m_idx, scratch)
        np.bitwise_and(seen_any, p, out=m_tmp)
        several |= m_tmp
        seen_any |= p
        seen_shared |= _at_master(w.shared.view(np.uint8), w.m_idx, scratch)
    return seen_any, seen_shared, several


def _at_master(a: np.ndarray, m_idx: np.ndarray | None, scratch: np.ndarray) -> np.ndarray:
    """A worker-indexed array laid out per master page (in ``scratch``, with the extra slot), 0 elsewhere."""
    if m_idx is None:
        return a
    scratch.fill(0)
    scratch[m_idx] = a  # indexes are unique within one worker (the extra slot aside)
    return scratch[:-1]


def _master_pages(master: _Proc, m_started: float, m_counters: procfs.MemCounters, m_present: np.ndarray,
                  seen_any: np.ndarray, seen_shared: np.ndarray, keep_addresses: bool) -> MasterPages:
    """Step 4: the master's pages by class (shared, diverged, ambiguous, new) and region."""
    # 4. the master: its exclusive anonymous pages at addresses workers still have are its own
    #    post-fork copies when a worker still shares the original ("diverged"); when every worker
    #    there is exclusive too, who wrote first is unknowable ("ambiguous")
    page = procfs.PAGE_SIZE
    mb = master.layout.buffers()
    m_tmp = mb.tmp
    m_key = mb.key
    np.left_shift(seen_shared, 1, out=m_key)  # _K_MASTER
    np.left_shift(seen_any, 2, out=m_tmp)  # _K_SAME
    m_key |= m_tmp
    m_key |= master.top
    m_layout = master.layout
    m_all = m_layout.count(m_present)
    m_shared = m_layout.count(_is(m_key, _M_SHARED, m_tmp, mb.mask))
    m_amb = m_layout.count(_is(m_key, _M_AMBIGUOUS, m_tmp, mb.mask))
    diverged = _is(m_key, _M_DIVERGED, m_tmp, mb.mask)
    m_div = m_layout.count(diverged)
    m_new = [a - s - d - x for a, s, d, x in zip(m_all, m_shared, m_div, m_amb)]
    return MasterPages(
        pid=master.pid, started_at=m_started, rss_bytes=m_counters.rss, pss_bytes=m_counters.pss,
        uss_bytes=m_counters.uss, swap_bytes=m_counters.swap,
        diverged_bytes=sum(m_div) * page,
        regions=_regions(m_shared, m_div, m_new, page),
        ambiguous_bytes=sum(m_amb) * page,
        shared_bytes=sum(m_shared) * page,
        new_bytes=sum(m_new) * page,
        diverged_addrs=_addrs(master, diverged) if keep_addresses else None,
    )


def _solo_own(master: _Proc, seen_any: np.ndarray, several: np.ndarray) -> np.ndarray:
    """Step 5's input: the master's own pages where exactly one worker has a page (bool, extra slot)."""
    # the master's own (exclusive) pages where exactly one worker has a page: a copy there is
    # that worker's alone, and nobody can tell whether the master or the worker wrote first
    mb = master.layout.buffers()
    m_tmp = mb.tmp
    solo_own = mb.ext("solo_own", bool)
    _is(master.top, (_T_PRESENT | _T_EXCL, _T_PRESENT | _T_EXCL), m_tmp, solo_own[:-1])
    np.bitwise_xor(several, np.uint8(1), out=m_tmp)
    m_tmp &= seen_any
    solo_own[:-1] &= m_tmp.view(bool)
    return solo_own


def _worker_pages(w: _Worker, solo_own: np.ndarray, m_counts_ext: np.ndarray | None,
                  keep_addresses: bool) -> WorkerPages:
    """Step 5: one worker's totals, regions, ambiguity and pfn-mode extras."""
    assert w.key is not None and w.present is not None and w.shared is not None  # set by step 3
    page = procfs.PAGE_SIZE
    layout = w.pages.layout
    wb = layout.buffers()
    copied = _is(w.key, _W_COPIED, wb.tmp, wb.copied)
    n_all, n_shared, n_copied = layout.count(w.present), layout.count(w.shared), layout.count(copied)
    n_new = [a - s - c for a, s, c in zip(n_all, n_shared, n_copied)]
    amb = 0
    if sum(n_copied):
        if w.m_idx is None:
            np.logical_and(copied, solo_own[:-1], out=wb.mask)
        else:
            np.take(solo_own, w.m_idx, out=wb.mask)
            wb.mask &= copied
        amb = int(np.count_nonzero(wb.mask))
    swm = sharers = None
    if w.same is not None and w.own_need is not None and m_counts_ext is not None:
        swm = int(np.count_nonzero(w.same)) * page
        sharers = _sharers(w, m_counts_ext)
    return WorkerPages(
        pid=w.pid, started_at=w.started_at, rss_bytes=w.counters.rss, pss_bytes=w.counters.pss,
        uss_bytes=w.counters.uss, swap_bytes=w.counters.swap,
        shared_bytes=sum(n_shared) * page, copied_bytes=sum(n_copied) * page,
        new_bytes=sum(n_new) * page, regions=_regions(n_shared, n_copied, n_new, page),
        ambiguous_bytes=amb * page, shared_with_master_bytes=swm, sharers=sharers,
        copied_addrs=_addrs(w.pages, copied) if keep_addresses else None,
    )


def _sharers(w: _Worker, m_counts_ext: np.ndarray) -> dict[int, int]:
    """Pfn mode: bytes of the worker's shared pages by mapcount (folded at ``SHARERS_MAX``)."""
    assert w.key is not None and w.shared is not None and w.same is not None and w.own_need is not None
    full = np.ones(w.key.size, dtype=np.int64)  # exclusive: mapped once
    full[w.same] = _at(w.m_idx, m_counts_ext)[w.same]
    full[w.own_need] = w.own_counts
    hist = np.bincount(np.clip(full[w.shared], 0, SHARERS_MAX), minlength=1)
    return {int(k): int(v) * procfs.PAGE_SIZE for k, v in enumerate(hist) if v}
