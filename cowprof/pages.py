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
worker maps. See docs/measure.md.

Two modes: ``exclusive-bit`` (any user allowed to read the target's pagemap) and ``pfn`` (root:
PFNs and ``/proc/kpagecount``, which adds ``shared_with_master_bytes`` and the ``sharers``
histogram). The master's pagemap is read once per scan and joined with each worker's by address.

This module reads (no numpy at import): each scan reads the tree's processes on a few threads
(:mod:`cowprof._parallel`), the text files first while its own thread imports the numpy half,
:mod:`cowprof.classify`; the report model is :mod:`cowprof.pagereport`, the region split
:mod:`cowprof.regions` (their names are re-exported here).
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import procfs
from ._parallel import in_threads
from ._values import Frozen, field
from .errors import AccessDenied, BadInput, ProcessGone
from .pagereport import SHARERS_MAX, VERSION, MasterPages, PageReport, RegionPages, WorkerPages
from .regions import REGIONS, region_of, region_ranges
from .tree import Tree, find_tree

if TYPE_CHECKING:
    import numpy as np

    from .classify import _Layout, _Proc, _Worker

__all__ = ["REGIONS", "SHARERS_MAX", "VERSION", "MasterPages",
           "PageReport", "RegionPages", "ScanResult", "Scanner", "WorkerPages", "region_of", "region_ranges", "scan"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class _Cache:
    """What repeated scans of one tree reuse while the inputs are byte-for-byte the same."""

    __slots__ = ("layouts", "index")

    def __init__(self) -> None:
        self.layouts: dict[int, _Layout] = {}  # pid -> layout of its current maps
        # worker pid -> (worker layout, master layout, index of the master's page per worker page)
        self.index: dict[int, tuple[_Layout, _Layout, np.ndarray | None]] = {}

    def keep(self, pids: set[int]) -> None:
        for d in (self.layouts, self.index):
            for pid in [p for p in d if p not in pids]:
                del d[pid]


def _pfn_mode(privileged: bool | None, procfs_root: str) -> bool:
    can = procfs.pfn_access(procfs_root)  # probed once per process
    if privileged is None:
        return can
    if privileged and not can:
        raise AccessDenied(None, "the privileged (PFN) mode needs root (CAP_SYS_ADMIN): "
                                 "/proc/kpagecount and pagemap PFNs are not readable")
    return privileged


def _started(st: procfs.Stat, btime: float) -> float:
    return btime + st.starttime_ticks / _CLK_TCK


def _read_worker(pid: int, master: int, btime: float, procfs_root: str,
                 st: procfs.Stat | None = None) -> tuple[float, procfs.MemCounters]:
    """A worker's start time and counters (its ``stat`` read unless given); ProcessGone when it
    exited or its PID now belongs to someone else."""
    if st is None:
        st = procfs.read_stat(pid, procfs_root)
    if st.zombie or st.ppid != master:
        raise ProcessGone(pid)
    return _started(st, btime), procfs.read_smaps_rollup(pid, procfs_root)


def _read_maps(pid: int, procfs_root: str, cache: _Cache | None) -> tuple[bytes, list[tuple[int, int, int]] | None]:
    """A process's ``maps`` and their region split, None for the split when the cached layout has
    these very maps (the split reads mapped libraries' ELF headers, once per file and process)."""
    raw = procfs.read_bytes(pid, "maps", procfs_root)
    layout = cache.layouts.get(pid) if cache is not None else None
    if layout is not None and layout.raw == raw:
        return raw, None
    maps = procfs.parse_maps(raw)
    if not maps:
        raise procfs.no_memory(pid)
    return raw, region_ranges(maps, pid, procfs_root)


def _read_pages(pid: int, procfs_root: str, cache: _Cache | None,
                maps: tuple[bytes, list[tuple[int, int, int]] | None] | None = None) -> _Proc:
    from .classify import read_pages  # already imported by the scan's own thread (numpy)

    raw, split = _read_maps(pid, procfs_root, cache) if maps is None else maps
    return read_pages(pid, procfs_root, cache, raw, split)


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




class ScanResult(Frozen):
    """What :meth:`Scanner.read` returns: the page report, and how many pages can have changed
    since its page tables were read (0: it is exact now). The bound describes this answer, not
    the page data, so it is no part of the report or its JSON."""

    __slots__ = ()
    _fields = ("report", "drift_pages")

    def __new__(cls, report: PageReport, drift_pages: int = 0) -> ScanResult:
        return tuple.__new__(cls, (report, drift_pages))

    report: PageReport = field(0, "the page report (its ``taken_at``: when its page tables were read)")
    drift_pages: int = field(1, "pages that can have changed since then (0: exact now)")


class Scanner:
    """Repeated scans of one pre-fork tree (``top``, ``record``, ``export``): the same reports as
    :func:`scan`, for less work.

    * When nothing in the tree can have changed since the previous scan, the previous report is
      returned again, re-stamped: same processes (PID and start time), and for each the same fault
      counters (every copy-on-write copy and every newly touched page is a page fault), address
      space size and resident pages (unmapping and swap-out are not faults), all from
      ``/proc/PID/stat`` (~20 µs per process). Not seen: pages another process outside the tree
      shares with it (a worker's own short-lived fork children), KSM merging pages.
    * With ``tolerance`` > 0 (a live view), the previous report also stands while few pages can
      have changed since its page tables were read: the same processes, no address space shrunk,
      and at most ``tolerance`` x the tree's resident pages (at least ``MIN_TOLERANCE_PAGES``)
      page faults summed over the tree, for at most ``max_age`` seconds. A page changes class
      (shared, copied, new) through a fault of the process that maps it, or of the master (its
      post-fork copies), or by being unmapped; so every page count of such a report is off by at
      most that many pages, and each PSS by at most that many pages' worth. Not seen, besides what
      the exact check does not see: pages dropped without unmapping them (``madvise`` DONTNEED or
      FREE, swap-out), which ``max_age`` bounds in time. The report keeps its ``taken_at`` (when its
      pages were read) and :meth:`read`'s result carries the bound (``ScanResult.drift_pages``).
    * Otherwise it scans, reusing the parsed mappings and the pagemap buffer of a process while
      ``/proc/PID/maps`` reads the same, and the worker-to-master page index while both maps are
      unchanged.

    ``unchanged`` counts the scans answered from the previous report (either way).
    """

    #: the smallest tolerance, in pages, when ``tolerance`` > 0
    MIN_TOLERANCE_PAGES = 64

    def __init__(self, *, privileged: bool | None = None, procfs_root: str = "/proc", tolerance: float = 0.0,
                 max_age: float | None = None) -> None:
        if not 0 <= tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        _import_classify()  # numpy now, not in the first scan: a Scanner's user may budget each scan
        self.privileged = privileged
        self.procfs_root = procfs_root
        self.tolerance = tolerance
        self.max_age = max_age
        self.unchanged = 0
        self.scans = 0
        self._cache = _Cache()
        # (tree, keep_addresses, per-process state when the report was read, report, monotonic time)
        self._last: tuple[Tree, bool, dict[int, tuple[int, ...]], PageReport, float] | None = None

    def _stats(self, tree: Tree) -> dict[int, procfs.Stat]:
        """``stat`` of each process of the tree, read once per scan (a gone one is missing)."""
        out: dict[int, procfs.Stat] = {}
        for pid in (tree.master, *tree.workers):
            try:
                out[pid] = procfs.read_stat(pid, self.procfs_root)
            except ProcessGone:
                pass
        return out

    @staticmethod
    def _state(tree: Tree, stats: dict[int, procfs.Stat]) -> dict[int, tuple[int, ...]] | None:
        """pid -> (ppid, start time, minor faults, major faults, address space, resident pages);
        None when a process is gone or a zombie."""
        out: dict[int, tuple[int, ...]] = {}
        for pid in (tree.master, *tree.workers):
            st = stats.get(pid)
            if st is None or st.zombie:
                return None
            out[pid] = (st.ppid, *st.memory_state)
        return out

    @staticmethod
    def _drift(then: dict[int, tuple[int, ...]], now: dict[int, tuple[int, ...]]) -> int | None:
        """Pages that can have changed between two states of the same processes: their page faults
        (every copy, every newly touched page); None when a process shrank its address space (it
        unmapped pages). The resident counts are no help here: the kernel batches them per CPU,
        so they lag by up to 64 pages per CPU either way."""
        drift = 0
        for pid, (_ppid, _start, minflt, majflt, vsize, _rss) in now.items():
            _p_ppid, _p_start, p_minflt, p_majflt, p_vsize, _p_rss = then[pid]
            if vsize < p_vsize:
                return None
            drift += (minflt - p_minflt) + (majflt - p_majflt)
        return drift

    def scan(self, target: int | Tree, *, keep_addresses: bool = False) -> PageReport:
        """The tree's page report now (:meth:`read` without its drift bound)."""
        return self.read(target, keep_addresses=keep_addresses).report

    def read(self, target: int | Tree, *, keep_addresses: bool = False) -> ScanResult:
        """The tree's page report now, with how many pages can have changed since its page tables
        were read (see the class doc)."""
        t0 = time.perf_counter()
        tree = _as_tree(target, self.procfs_root)
        self.scans += 1
        stats = self._stats(tree)
        state = self._state(tree, stats)
        last = self._last
        if state is not None and last is not None and last[0] == tree and last[1] == keep_addresses:
            then, report = last[2], last[3]
            same_processes = all(state[p][:2] == then[p][:2] for p in state)
            if same_processes and state == then:
                self.unchanged += 1
                return ScanResult(report.replace(taken_at=time.time(), scan_seconds=time.perf_counter() - t0), 0)
            if same_processes and self.tolerance > 0 and (self.max_age is None or t0 - last[4] <= self.max_age):
                drift = self._drift(then, state)
                rss_pages = (report.master.rss_bytes + sum(w.rss_bytes for w in report.workers)) // report.page_size
                if drift is not None and drift <= max(self.MIN_TOLERANCE_PAGES, int(self.tolerance * rss_pages)):
                    self.unchanged += 1
                    return ScanResult(report.replace(scan_seconds=time.perf_counter() - t0), drift)
        report = _scan(tree, privileged=self.privileged, procfs_root=self.procfs_root,
                       keep_addresses=keep_addresses, cache=self._cache, t0=t0, stats=stats)
        self._cache.keep({tree.master, *tree.workers})
        self._last = (tree, keep_addresses, state, report, t0) if state is not None else None
        return ScanResult(report, 0)


def _read_tree(tree: Tree, procfs_root: str, cache: _Cache | None, stats: dict[int, procfs.Stat] | None,
               prepare: Callable[[], Any]) -> tuple[float, procfs.MemCounters, _Proc, list[_Worker], list[int]]:
    """Read every process of the tree, several at a time, each process's ``stat`` once (``stats``:
    already read, a missing PID being gone): first the text files, the master's and each worker's
    ``smaps_rollup`` (they need no numpy: they run while this thread calls ``prepare``, which
    imports it), then the pages. A worker that vanishes is just "gone"; the master must still be
    there at the end, else its numbers describe nothing (:class:`procfs.ExitWatch`: a pidfd, no
    second stat read). Returns the master's start time, counters and pages, the workers, the gone."""
    with procfs.ExitWatch(tree.master, procfs_root) as master_exit:
        btime = procfs.boot_time(procfs_root)
        m_stat = _master_stat(tree.master, procfs_root, stats)
        jobs = _read_jobs(tree, btime, procfs_root, cache, stats)
        results = in_threads(jobs, first=prepare)
        exited = master_exit.exited()
    m_counters, master = _master_results(tree.master, results, len(tree.workers), exited)
    workers, gone = _worker_results(tree, results, master, cache)
    return _started(m_stat, btime), m_counters, master, workers, gone


def _master_stat(master: int, procfs_root: str, stats: dict[int, procfs.Stat] | None) -> procfs.Stat:
    """The master's ``stat`` (read unless in ``stats``); ProcessGone when it exited."""
    m_stat = procfs.read_stat(master, procfs_root) if stats is None else stats.get(master)
    if m_stat is None or m_stat.zombie:
        raise ProcessGone(master, f"process {master} (the master) has exited")
    return m_stat


def _read_jobs(tree: Tree, btime: float, procfs_root: str, cache: _Cache | None,
               stats: dict[int, procfs.Stat] | None) -> list[Callable[[], Any]]:
    """The reads of a scan, in result order: the master's and the workers' text, then their pages."""
    jobs: list[Callable[[], Any]] = [functools.partial(procfs.read_smaps_rollup, tree.master, procfs_root)]
    for pid in tree.workers:
        if stats is None or pid in stats:
            jobs.append(functools.partial(_read_worker, pid, tree.master, btime, procfs_root,
                                          None if stats is None else stats[pid]))
        else:
            jobs.append(functools.partial(_raise, ProcessGone(pid)))
    # the master's maps first, here: the libraries' headers the region split needs are read
    # through the master (the workers map the same files), in the same order every scan
    try:
        m_maps = _read_maps(tree.master, procfs_root, cache)
    except ProcessGone:
        raise ProcessGone(tree.master, f"process {tree.master} (the master) has exited") from None
    jobs.append(functools.partial(_read_pages, tree.master, procfs_root, cache, m_maps))
    jobs += [functools.partial(_read_pages, pid, procfs_root, cache) for pid in tree.workers]
    return jobs


def _master_results(master: int, results: list[tuple[bool, Any]], n: int,
                    exited: bool) -> tuple[procfs.MemCounters, _Proc]:
    """The master's counters and pages out of the reads (``n`` workers); its error, or ProcessGone when it exited."""
    master_results = [results[0], results[1 + n]]
    for ok, r in master_results:
        if not ok and not (exited and isinstance(r, ProcessGone)):
            raise r
    if exited:
        raise ProcessGone(master, f"process {master} (the master) exited during the scan")
    m_counters, pages = (r for _ok, r in master_results)
    return m_counters, pages


def _worker_results(tree: Tree, results: list[tuple[bool, Any]], master: _Proc,
                    cache: _Cache | None) -> tuple[list[_Worker], list[int]]:
    """The workers read whole, joined with the master by address, and the PIDs of those gone meanwhile."""
    from .classify import _Worker, master_index

    n = len(tree.workers)
    workers: list[_Worker] = []
    gone: list[int] = []
    for pid, text, pages in zip(tree.workers, results[1 : 1 + n], results[2 + n :]):
        failed = [r for ok, r in (text, pages) if not ok]
        if not failed:
            (started, counters), proc = text[1], pages[1]
            workers.append(_Worker(pid, started, counters, proc,
                                   master_index(proc.layout, master.layout, cache, pid)))
        elif all(isinstance(e, ProcessGone) for e in failed):
            gone.append(pid)
        else:
            raise next(e for e in failed if not isinstance(e, ProcessGone))
    return workers, gone


def _raise(exc: BaseException) -> None:
    raise exc


def _import_classify() -> None:
    from . import classify  # noqa: F401 - numpy


def _scan(tree: Tree, *, privileged: bool | None, procfs_root: str, keep_addresses: bool,
          cache: _Cache | None, t0: float, stats: dict[int, procfs.Stat] | None = None) -> PageReport:
    """One scan: 1. read every process (:func:`_read_tree`, importing the numpy half meanwhile);
    2-5. classify every page (:func:`cowprof.classify.classify`, which reads as those steps)."""
    pfn_mode = _pfn_mode(privileged, procfs_root)
    taken_at = time.time()
    m_started, m_counters, master, workers, gone = _read_tree(tree, procfs_root, cache, stats, _import_classify)
    from .classify import classify

    master_pages, out = classify(master, m_started, m_counters, workers, pfn_mode=pfn_mode,
                                 procfs_root=procfs_root, keep_addresses=keep_addresses)
    return PageReport(
        version=VERSION, taken_at=taken_at, privileged=pfn_mode, mode="pfn" if pfn_mode else "exclusive-bit",
        page_size=procfs.PAGE_SIZE, scan_seconds=time.perf_counter() - t0, master=master_pages, workers=out,
        gone=gone,
    )
