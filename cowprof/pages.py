"""Page-level accounting of a pre-fork tree: per worker, what is shared with the master, copied, new.

Only the present pages of **writable private mappings** are classified (read-only and shared
mappings cannot be copied-on-write). For a worker page at virtual address ``a``:

* **shared**: mapped by more than one process (pagemap exclusive bit clear); in PFN mode also when
  it is the master's very page (same PFN);
* **copied**: exclusive to the worker, anonymous, at an address where the master has a present
  page: the worker wrote to an inherited page and got its own copy;
* **new**: exclusive to the worker where the master has no page (memory allocated after fork), and
  clean file pages only this worker maps.

The master keeps writing after fork too. When it writes an inherited page it gets the copy and the
workers keep sharing the original among themselves, so those worker pages stay *shared* and the
master reports the page in ``diverged_bytes`` (its exclusive pages at addresses where some worker
still maps a shared page). When every worker with a page at that address is exclusive too, nobody
can tell from page tables alone who wrote (in a one-worker tree, the master or the worker; with
more, all workers or the master and all but one): the master counts it in ``ambiguous_bytes`` and
the worker as copied, with the worker's ``ambiguous_bytes`` counting its copied pages that no other
worker maps. See README.md.

Two modes: ``exclusive-bit`` (any user allowed to read the target's pagemap) and ``pfn`` (root:
PFNs and ``/proc/kpagecount``, which adds ``shared_with_master_bytes`` and the ``sharers``
histogram). The master's pagemap is read once per scan and joined with each worker's by address.
"""
from __future__ import annotations

import dataclasses
import os
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import procfs
from .errors import AccessDenied, BadInput, ProcessGone
from .tree import Tree, find_tree

VERSION = 1
REGIONS: tuple[str, ...] = ("python", "heap", "stack", "file", "other")
_R_PYTHON, _R_HEAP, _R_STACK, _R_FILE, _R_OTHER = range(5)
_NR = len(REGIONS)
_SHARED, _COPIED, _NEW = range(3)
#: mapcounts above this are folded into the last bucket of ``sharers``
SHARERS_MAX = 64
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------- results


@dataclass
class RegionPages:
    """Bytes of one region kind in one process."""

    shared_bytes: int = 0
    copied_bytes: int = 0
    new_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"shared_bytes": self.shared_bytes, "copied_bytes": self.copied_bytes, "new_bytes": self.new_bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegionPages:
        return cls(int(d.get("shared_bytes", 0)), int(d.get("copied_bytes", 0)), int(d.get("new_bytes", 0)))


def _regions_to_dict(regions: dict[str, RegionPages]) -> dict[str, dict[str, int]]:
    return {k: regions[k].to_dict() for k in REGIONS if k in regions}


def _regions_from_dict(d: dict[str, Any]) -> dict[str, RegionPages]:
    return {k: RegionPages.from_dict(v) for k, v in d.items()}


@dataclass
class MasterPages:
    """The master: whole-process counters and its own post-fork divergence.

    In ``regions``, ``shared_bytes`` are pages some worker still maps, ``copied_bytes`` the
    master's ``diverged`` pages and ``new_bytes`` its exclusive pages at addresses where no worker
    has a page (memory it allocated after fork, or that every worker dropped).
    """

    pid: int
    started_at: float
    rss_bytes: int
    pss_bytes: int
    uss_bytes: int
    swap_bytes: int
    diverged_bytes: int
    regions: dict[str, RegionPages]
    ambiguous_bytes: int = 0
    shared_bytes: int = 0
    new_bytes: int = 0
    diverged_addrs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "started_at": self.started_at, "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes, "uss_bytes": self.uss_bytes, "swap_bytes": self.swap_bytes,
            "shared_bytes": self.shared_bytes, "diverged_bytes": self.diverged_bytes,
            "ambiguous_bytes": self.ambiguous_bytes, "new_bytes": self.new_bytes,
            "regions": _regions_to_dict(self.regions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MasterPages:
        return cls(
            pid=int(d["pid"]), started_at=float(d.get("started_at", 0.0)), rss_bytes=int(d["rss_bytes"]),
            pss_bytes=int(d["pss_bytes"]), uss_bytes=int(d["uss_bytes"]), swap_bytes=int(d.get("swap_bytes", 0)),
            diverged_bytes=int(d.get("diverged_bytes", 0)), regions=_regions_from_dict(d.get("regions", {})),
            ambiguous_bytes=int(d.get("ambiguous_bytes", 0)), shared_bytes=int(d.get("shared_bytes", 0)),
            new_bytes=int(d.get("new_bytes", 0)),
        )


@dataclass
class WorkerPages:
    """One worker: whole-process counters and its pages by class and region."""

    pid: int
    started_at: float
    rss_bytes: int
    pss_bytes: int
    uss_bytes: int
    swap_bytes: int
    shared_bytes: int
    copied_bytes: int
    new_bytes: int
    regions: dict[str, RegionPages]
    ambiguous_bytes: int = 0
    shared_with_master_bytes: int | None = None  # pfn mode only
    sharers: dict[int, int] | None = None  # pfn mode only: mapcount -> bytes of shared pages
    copied_addrs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "started_at": self.started_at, "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes, "uss_bytes": self.uss_bytes, "swap_bytes": self.swap_bytes,
            "shared_bytes": self.shared_bytes, "copied_bytes": self.copied_bytes, "new_bytes": self.new_bytes,
            "ambiguous_bytes": self.ambiguous_bytes, "shared_with_master_bytes": self.shared_with_master_bytes,
            "sharers": None if self.sharers is None else {str(k): v for k, v in sorted(self.sharers.items())},
            "regions": _regions_to_dict(self.regions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerPages:
        swm = d.get("shared_with_master_bytes")
        sharers = d.get("sharers")
        return cls(
            pid=int(d["pid"]), started_at=float(d.get("started_at", 0.0)), rss_bytes=int(d["rss_bytes"]),
            pss_bytes=int(d["pss_bytes"]), uss_bytes=int(d["uss_bytes"]), swap_bytes=int(d.get("swap_bytes", 0)),
            shared_bytes=int(d["shared_bytes"]), copied_bytes=int(d["copied_bytes"]), new_bytes=int(d["new_bytes"]),
            regions=_regions_from_dict(d.get("regions", {})), ambiguous_bytes=int(d.get("ambiguous_bytes", 0)),
            shared_with_master_bytes=None if swm is None else int(swm),
            sharers=None if sharers is None else {int(k): int(v) for k, v in sharers.items()},
        )


@dataclass
class PageReport:
    """One scan of a tree. ``to_dict()`` is the documented, stable JSON (README.md)."""

    version: int
    taken_at: float
    privileged: bool
    mode: str  # "pfn" | "exclusive-bit"
    page_size: int
    scan_seconds: float
    master: MasterPages
    workers: list[WorkerPages]
    gone: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "taken_at": self.taken_at, "privileged": self.privileged,
            "mode": self.mode, "page_size": self.page_size, "scan_seconds": self.scan_seconds,
            "master": self.master.to_dict(), "workers": [w.to_dict() for w in self.workers],
            "gone": list(self.gone),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PageReport:
        """Rebuild a report from its JSON form; a wrong version or missing key raises BadInput."""
        try:
            version = int(d["version"])
            if version != VERSION:
                raise BadInput(f"unsupported page report version {version} (this cowprof reads {VERSION})")
            return cls(
                version=version, taken_at=float(d["taken_at"]), privileged=bool(d["privileged"]),
                mode=str(d["mode"]), page_size=int(d["page_size"]), scan_seconds=float(d.get("scan_seconds", 0.0)),
                master=MasterPages.from_dict(d["master"]),
                workers=[WorkerPages.from_dict(w) for w in d["workers"]], gone=[int(p) for p in d.get("gone", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a cowprof page report: {type(err).__name__}: {err}") from None


# ------------------------------------------------------------------------------ reading


def region_of(m: procfs.Mapping, prev: procfs.Mapping | None = None) -> int:
    """Region code of a mapping. An anonymous mapping right after a writable file mapping is that
    library's ``.bss`` (the loader maps the part past the file's end anonymous): ``file``."""
    p = m.path
    if p == "[heap]":
        return _R_HEAP
    if p.startswith("[stack"):
        return _R_STACK
    if p == "" or p.startswith("[anon:"):
        if p == "" and prev is not None and prev.end == m.start and prev.file_backed and prev.writable:
            return _R_FILE
        return _R_PYTHON
    if m.file_backed and not p.startswith(("/dev/", "/memfd:", "/SYSV")):
        return _R_FILE
    return _R_OTHER


@dataclass
class _Pages:
    """The pagemap of one process's writable private mappings, concatenated."""

    pid: int
    starts: np.ndarray  # int64 first virtual page number of each mapping
    offsets: np.ndarray  # int64, len(mappings) + 1: index of each mapping's first page
    region: np.ndarray  # int8 region code per mapping
    entries: np.ndarray  # uint64 pagemap entry per page
    maps_raw: bytes = b""  # the /proc/PID/maps content the ranges came from (a cache key)
    _page_region: np.ndarray | None = None

    def page_region(self) -> np.ndarray:
        if self._page_region is None:
            self._page_region = np.repeat(self.region, np.diff(self.offsets))
        return self._page_region

    def vpns(self, idx: np.ndarray) -> np.ndarray:
        """Virtual page numbers of the pages at concatenated indexes ``idx``."""
        j = np.searchsorted(self.offsets, idx, side="right") - 1
        return self.starts[j] + (idx - self.offsets[j])


def _writable_private(maps: list[procfs.Mapping]) -> tuple[list[tuple[int, int]], list[int]]:
    ranges, regions = [], []
    prev = None
    for m in maps:
        if m.writable and m.private and not m.path.startswith(("[vvar", "[vsyscall", "[vdso")):
            ranges.append((m.start, m.end))
            regions.append(region_of(m, prev))
        prev = m
    return ranges, regions


@dataclass
class _Cache:
    """What repeated scans of one tree reuse while the inputs are byte-for-byte the same."""

    # pid -> (maps content, writable private ranges, their first page numbers, region codes,
    #         per-page region codes or None until computed)
    maps: dict[int, tuple[bytes, list[tuple[int, int]], np.ndarray, np.ndarray, list[np.ndarray]]] = \
        field(default_factory=dict)
    # worker pid -> (worker maps, master maps, index of the master's page per worker page)
    index: dict[int, tuple[bytes, bytes, np.ndarray]] = field(default_factory=dict)

    def keep(self, pids: set[int]) -> None:
        for d in (self.maps, self.index):
            for pid in [p for p in d if p not in pids]:
                del d[pid]


def _read_pages(pid: int, procfs_root: str, cache: _Cache | None = None) -> _Pages:
    raw = procfs.read_bytes(pid, "maps", procfs_root)
    hit = cache.maps.get(pid) if cache is not None else None
    if hit is not None and hit[0] == raw:
        _raw, ranges, starts, regions, page_region = hit
    else:
        maps = procfs.parse_maps(raw)
        if not maps:
            raise procfs._no_memory(pid)
        ranges, region_list = _writable_private(maps)
        starts = np.array([s >> procfs.PAGE_SHIFT for s, _e in ranges], dtype=np.int64)
        regions = np.array(region_list, dtype=np.int8)
        page_region = []
        if cache is not None:
            cache.maps[pid] = (raw, ranges, starts, regions, page_region)
    with procfs.Pagemap(pid, procfs_root) as pm:
        entries, offsets = pm.read_ranges(ranges)
    pages = _Pages(pid, starts, offsets, regions, entries, raw)
    if page_region:
        pages._page_region = page_region[0]
    else:
        page_region.append(pages.page_region())  # computed once per maps content
    return pages


def _master_index(w: _Pages, m: _Pages, cache: _Cache | None = None) -> np.ndarray:
    """For each page of ``w``, the index of the master's page at the same address, or -1."""
    hit = cache.index.get(w.pid) if cache is not None else None
    if hit is not None and hit[0] == w.maps_raw and hit[1] == m.maps_raw:
        return hit[2]
    idx = _compute_master_index(w, m)
    if cache is not None:
        cache.index[w.pid] = (w.maps_raw, m.maps_raw, idx)
    return idx


def _compute_master_index(w: _Pages, m: _Pages) -> np.ndarray:
    idx = np.full(w.entries.size, -1, dtype=np.int64)
    m_starts = m.starts.tolist()
    m_ends = (m.starts + np.diff(m.offsets)).tolist()
    m_offs = m.offsets.tolist()
    for ws, wo, wn in zip(w.starts.tolist(), w.offsets[:-1].tolist(), np.diff(w.offsets).tolist()):
        we = ws + wn
        j = max(bisect_right(m_starts, ws) - 1, 0)
        while j < len(m_starts) and m_starts[j] < we:
            a, b = max(ws, m_starts[j]), min(we, m_ends[j])
            if a < b:
                idx[wo + a - ws : wo + b - ws] = np.arange(m_offs[j] + a - m_starts[j], m_offs[j] + b - m_starts[j])
            j += 1
    return idx


def _regions(region: np.ndarray, cls: np.ndarray, mask: np.ndarray, page: int) -> dict[str, RegionPages]:
    counts = np.bincount(region[mask].astype(np.int64) * 3 + cls[mask], minlength=_NR * 3).reshape(_NR, 3)
    return {name: RegionPages(*(int(c) * page for c in counts[r])) for r, name in enumerate(REGIONS)}


def _pfn_mode(privileged: bool | None, procfs_root: str) -> bool:
    can = procfs.kpagecount_readable(procfs_root) and procfs.pfns_visible(procfs_root)
    if privileged is None:
        return can
    if privileged and not can:
        raise AccessDenied(None, "the privileged (PFN) mode needs root (CAP_SYS_ADMIN): "
                                 "/proc/kpagecount and pagemap PFNs are not readable")
    return privileged


@dataclass
class _Worker:
    pid: int
    started_at: float
    counters: procfs.MemCounters
    pages: _Pages
    bits: procfs.PageBits
    m_idx: np.ndarray  # per page: index of the master's page at the same address, or -1
    counts: np.ndarray | None = None  # pfn mode: kpagecount of each present page
    same: np.ndarray | None = None  # pfn mode: per page, it is the master's page (same PFN)


def _started(st: procfs.Stat, btime: float) -> float:
    return btime + st.starttime_ticks / _CLK_TCK


def _read_worker(pid: int, master: _Pages, btime: float, procfs_root: str, cache: _Cache | None = None) -> _Worker:
    """Read one worker; ProcessGone when it exited or its PID now belongs to someone else."""
    st = procfs.read_stat(pid, procfs_root)
    if st.zombie or st.ppid != master.pid:
        raise ProcessGone(pid)
    counters = procfs.read_smaps_rollup(pid, procfs_root)
    wp = _read_pages(pid, procfs_root, cache)
    return _Worker(pid, _started(st, btime), counters, wp, procfs.decode(wp.entries),
                   _master_index(wp, master, cache))


def _addrs(pages: _Pages, mask: np.ndarray) -> np.ndarray:
    return pages.vpns(np.flatnonzero(mask)).astype(np.uint64) << np.uint64(procfs.PAGE_SHIFT)


def scan(target: int | Tree, *, privileged: bool | None = None, procfs_root: str = "/proc",
         keep_addresses: bool = False) -> PageReport:
    """Classify the pages of every live worker of a pre-fork tree (see the module doc).

    ``target``: any PID of the tree or a :class:`Tree`. ``privileged=None`` uses the PFN mode when
    this process can (root), ``False`` forces the exclusive-bit mode, ``True`` requires PFNs.
    ``keep_addresses`` keeps the virtual addresses of each worker's copied pages
    (``WorkerPages.copied_addrs``) and of the master's diverged pages (``diverged_addrs``).
    Workers that exit during the scan are listed in ``gone``; the master exiting raises
    :class:`ProcessGone`. For repeated scans of one tree, :class:`Scanner` does less work.
    """
    return _scan(_as_tree(target, procfs_root), privileged=privileged, procfs_root=procfs_root,
                 keep_addresses=keep_addresses, cache=None, t0=time.perf_counter())


def _as_tree(target: int | Tree, procfs_root: str) -> Tree:
    if isinstance(target, Tree):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return find_tree(target, procfs_root=procfs_root)
    raise BadInput(f"scan() needs a PID or a Tree, not {type(target).__name__}")


class Scanner:
    """Repeated scans of one pre-fork tree (``top``, ``record``, ``export``): the same reports as
    :func:`scan`, for less work.

    * When nothing in the tree can have changed since the previous scan, the previous report is
      returned again, re-stamped: same processes (PID and start time), and for each the same fault
      counters (every copy-on-write copy and every newly touched page is a page fault), address
      space size and resident pages (unmapping and swap-out are not faults), all from
      ``/proc/PID/stat`` (~20 µs per process). Not seen: pages another process outside the tree
      shares with it (a worker's own short-lived fork children), KSM merging pages.
    * Otherwise it scans, reusing the parsed mappings of a process while ``/proc/PID/maps`` reads
      the same, and the worker-to-master page index while both maps are unchanged.

    ``unchanged`` counts the scans answered from the previous report.
    """

    def __init__(self, *, privileged: bool | None = None, procfs_root: str = "/proc") -> None:
        self.privileged = privileged
        self.procfs_root = procfs_root
        self.unchanged = 0
        self.scans = 0
        self._cache = _Cache()
        self._last: tuple[tuple[Any, ...], bool, PageReport] | None = None

    def _state(self, tree: Tree) -> tuple[Any, ...] | None:
        out: list[Any] = [tree.master]
        for pid in (tree.master, *tree.workers):
            try:
                st = procfs.read_stat(pid, self.procfs_root)
            except ProcessGone:
                return None
            if st.zombie:
                return None
            out.append((pid, st.ppid, st.memory_state))
        return tuple(out)

    def scan(self, target: int | Tree, *, keep_addresses: bool = False) -> PageReport:
        t0 = time.perf_counter()
        tree = _as_tree(target, self.procfs_root)
        self.scans += 1
        state = self._state(tree)
        last = self._last
        if state is not None and last is not None and last[0] == state and last[1] == keep_addresses:
            self.unchanged += 1
            return dataclasses.replace(last[2], taken_at=time.time(), scan_seconds=time.perf_counter() - t0)
        report = _scan(tree, privileged=self.privileged, procfs_root=self.procfs_root,
                       keep_addresses=keep_addresses, cache=self._cache, t0=t0)
        self._cache.keep({tree.master, *tree.workers})
        self._last = (state, keep_addresses, report) if state is not None else None
        return report


def _scan(tree: Tree, *, privileged: bool | None, procfs_root: str, keep_addresses: bool,
          cache: _Cache | None, t0: float) -> PageReport:
    pfn_mode = _pfn_mode(privileged, procfs_root)
    page = procfs.PAGE_SIZE
    taken_at = time.time()

    # 1. read: the master once, then each worker (a worker that vanishes is just "gone")
    btime = procfs.boot_time(procfs_root)
    m_stat = procfs.read_stat(tree.master, procfs_root)
    if m_stat.zombie:
        raise ProcessGone(tree.master, f"process {tree.master} (the master) has exited")
    m_started = _started(m_stat, btime)
    m_counters = procfs.read_smaps_rollup(tree.master, procfs_root)
    master = _read_pages(tree.master, procfs_root, cache)
    m_bits = procfs.decode(master.entries)
    m_present = m_bits.present
    workers: list[_Worker] = []
    gone: list[int] = []
    for pid in tree.workers:
        try:
            workers.append(_read_worker(pid, master, btime, procfs_root, cache))
        except ProcessGone:
            gone.append(pid)

    # 2. sharing is the exclusive bit (mapcount == 1). With root, also: is it the master's very
    #    page (same PFN), and kpagecount of the shared pages, read once per PFN (a worker page
    #    that is the master's page has the master's count), for the ``sharers`` histogram.
    m_shared = ~m_bits.exclusive
    if pfn_mode:
        m_need = m_present & m_shared
        need = [m_bits.pfn[m_need]]
        for w in workers:
            has_m = w.m_idx >= 0
            mi = w.m_idx[has_m]
            w.same = np.zeros(w.bits.present.size, dtype=bool)
            w.same[has_m] = m_present[mi] & (m_bits.pfn[mi] == w.bits.pfn[has_m])
            w.same &= w.bits.present
            need.append(w.bits.pfn[w.bits.present & ~w.bits.exclusive & ~w.same])
        parts = np.split(procfs.read_kpagecount(np.concatenate(need), procfs_root),
                         np.cumsum([a.size for a in need])[:-1])
        m_counts = np.zeros(master.entries.size, dtype=np.int64)
        m_counts[m_need] = parts[0]
        for w, c in zip(workers, parts[1:]):
            full = np.ones(w.bits.present.size, dtype=np.int64)  # exclusive: mapped once
            full[w.same] = m_counts[w.m_idx[w.same]]
            full[w.bits.present & ~w.bits.exclusive & ~w.same] = c
            w.counts = full[w.bits.present]

    # 3. workers: shared / copied / new; per master address, how many workers have a page there
    #    and whether one of them still shares it
    n_present = np.zeros(master.entries.size, dtype=np.int32)
    any_shared = np.zeros(master.entries.size, dtype=bool)
    classes: list[np.ndarray] = []
    for w in workers:
        b = w.bits
        has_m = w.m_idx >= 0
        m_at_present = np.zeros(b.present.size, dtype=bool)  # the master has a page at the address
        m_at_present[has_m] = m_present[w.m_idx[has_m]]
        shared = ~b.exclusive
        if w.same is not None:
            shared |= w.same
        cls = np.where(shared, _SHARED, np.where(m_at_present & ~b.file, _COPIED, _NEW)).astype(np.int8)
        classes.append(cls)
        sel = b.present & has_m
        n_present[w.m_idx[sel]] += 1  # indices are unique within one worker
        any_shared[w.m_idx[sel & shared]] = True

    # 4. the master: its exclusive anonymous pages at addresses workers still have are its own
    #    post-fork copies when a worker still shares the original ("diverged"); when every worker
    #    there is exclusive too, who wrote first is unknowable ("ambiguous")
    m_anon_excl = m_present & ~m_shared & ~m_bits.file
    diverged = m_anon_excl & any_shared
    ambiguous = m_anon_excl & (n_present > 0) & ~any_shared
    m_cls = np.where(m_shared, _SHARED, np.where(diverged, _COPIED, _NEW)).astype(np.int8)
    master_pages = MasterPages(
        pid=tree.master, started_at=m_started, rss_bytes=m_counters.rss, pss_bytes=m_counters.pss,
        uss_bytes=m_counters.uss, swap_bytes=m_counters.swap,
        diverged_bytes=int(np.count_nonzero(diverged)) * page,
        regions=_regions(master.page_region(), m_cls, m_present & ~ambiguous, page),
        ambiguous_bytes=int(np.count_nonzero(ambiguous)) * page,
        shared_bytes=int(np.count_nonzero(m_present & m_shared)) * page,
        new_bytes=int(np.count_nonzero(m_present & ~m_shared & ~diverged & ~ambiguous)) * page,
        diverged_addrs=_addrs(master, diverged) if keep_addresses else None,
    )

    # 5. per worker totals, regions, ambiguity, pfn-mode extras
    out: list[WorkerPages] = []
    m_own = m_present & ~m_shared
    for w, cls in zip(workers, classes):
        present = w.bits.present
        tally = np.bincount(cls[present], minlength=3)
        copied = present & (cls == _COPIED)
        cm = w.m_idx[copied]  # >= 0: copied pages have a master page
        amb = int(np.count_nonzero(m_own[cm] & (n_present[cm] == 1)))
        swm = sharers = None
        if w.counts is not None and w.same is not None:
            swm = int(np.count_nonzero(w.same)) * page
            hist = np.bincount(np.clip(w.counts[cls[present] == _SHARED], 0, SHARERS_MAX), minlength=1)
            sharers = {int(k): int(v) * page for k, v in enumerate(hist) if v}
        out.append(WorkerPages(
            pid=w.pid, started_at=w.started_at, rss_bytes=w.counters.rss, pss_bytes=w.counters.pss,
            uss_bytes=w.counters.uss, swap_bytes=w.counters.swap,
            shared_bytes=int(tally[_SHARED]) * page, copied_bytes=int(tally[_COPIED]) * page,
            new_bytes=int(tally[_NEW]) * page, regions=_regions(w.pages.page_region(), cls, present, page),
            ambiguous_bytes=amb * page, shared_with_master_bytes=swm, sharers=sharers,
            copied_addrs=_addrs(w.pages, copied) if keep_addresses else None,
        ))

    # the master must still be there at the end, else its numbers describe nothing
    if procfs.read_stat(tree.master, procfs_root).zombie:
        raise ProcessGone(tree.master, f"process {tree.master} (the master) exited during the scan")
    return PageReport(
        version=VERSION, taken_at=taken_at, privileged=pfn_mode, mode="pfn" if pfn_mode else "exclusive-bit",
        page_size=page, scan_seconds=time.perf_counter() - t0, master=master_pages, workers=out, gone=gone,
    )
