"""Attribution of sample after sample (``cowprof record --by type|cause|function``).

A snapshot finds the heap map, joins it with one page scan and forgets it. A recording attributes
a scan every interval, so an :class:`Attributor` keeps what does not change between samples:

* the master's saved heap map, re-read only when its segment files change (a repeat
  ``prepare_fork`` writes a segment): per sample one directory listing and a ``stat`` per segment;
* the map in the form the joins take (sorted, clamped ranges), computed once per map;
* without a saved map, the records read from the master's memory (:mod:`cowprof.remote`): only the
  pages copied since the previous sample are read, and all of them again when a mapping of the
  master that held pages read before is gone or starts elsewhere (an arena freed, a heap
  replaced: its records may be wrong now); the interpreter's layout is found once;
* the by-type (and by-function) result when the sampler answered with the previous report (no
  process of the tree faulted: the same copied pages) and the map is the same;
* for ``--by function``, the names read for each code object and the functions' modules.

The by-cause view compares each copied page with its original, so it reads process memory every
sample: its cost grows with the copied bytes (see docs/live-record.md, ``record --by``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from . import attribution, procfs
from .attribution import Attribution, NoAttribution
from .errors import CowprofError
from .heapmap import HeapMap, NoHeapMap, candidate_dirs, find_heapmap, segment_paths
from .memreader import MemoryAccessDenied
from .pages import PageReport

__all__ = ["BY", "Attributor", "SampleAttribution"]

BY = ("type", "cause", "function")
"""The groupings ``record --by`` stores (``cause`` includes ``type``)."""


@dataclasses.dataclass(frozen=True)
class SampleAttribution:
    """The attribution of one sample: by type (and cause), by function, and why a part is missing."""

    attribution: Attribution | None
    functions: Any | None  # cowprof.functions.FunctionAttribution
    error: CowprofError | None
    """Why there is no attribution at all (no heap map and no rights to read the master's memory,
    the master exited...); ``attribution.causes_error`` says why only the by-cause part is missing."""
    functions_error: CowprofError | None = None
    seconds: float = 0.0


class Attributor:
    """Attribute the reports of one master's tree, reusing what the previous sample loaded."""

    def __init__(self, master: int, *, causes: bool = False, functions: bool = False,
                 procfs_root: str = "/proc", heapmap_dir: str | None = None) -> None:
        self.master = master
        self.causes = causes
        self.functions = functions
        self.procfs_root = procfs_root
        self.heapmap_dir = heapmap_dir
        self.map_loads = 0
        """Saved heap maps read (one at the start, one more per change of the segment files)."""
        self.remote_reads = 0
        """Reads of the master's memory for records (full or for the newly copied pages)."""
        self.remote_pages = 0
        """Pages whose allocations were read from the master's memory, all samples together."""
        self.reused = 0
        """Samples whose by-type result was the previous one (same copied pages, same map)."""
        self._dirs: list[str] | None = None
        self._signature: tuple[Any, ...] | None = None
        self._saved: HeapMap | None = None
        self._remote: Any | None = None  # cowprof.remote.RemoteHeapMap
        self._remote_covered = np.zeros(0, dtype=np.uint64)
        self._remote_starts = np.zeros(0, dtype=np.uint64)
        self._interpreter: Any | None = None
        self._layouts: dict[str, Any] = {}
        self._layouts_of: HeapMap | None = None
        self._function_cache: dict[str, Any] = {}
        self._last: tuple[PageReport, HeapMap, Attribution, Any | None] | None = None

    # ----------------------------------------------------------------- the heap map, kept

    def _segment_signature(self) -> tuple[Any, ...]:
        """What the master's saved segments look like now: (path, inode, size, mtime) each."""
        if self._dirs is None:
            self._dirs = ([self.heapmap_dir] if self.heapmap_dir
                          else candidate_dirs(self.master, self.procfs_root))
        sig = []
        for d in self._dirs:
            for path in segment_paths(self.master, d):
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                sig.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sig)

    def _saved_map(self) -> HeapMap | None:
        sig = self._segment_signature()
        if sig != self._signature:
            self._signature = sig
            self._saved = None
            if sig:
                try:
                    self._saved = find_heapmap(self.master, procfs_root=self.procfs_root,
                                               directory=self.heapmap_dir)
                    self.map_loads += 1
                except NoHeapMap:  # segments of an earlier master with this PID: stale
                    self._saved = None
        return self._saved

    def _memory_map(self, report: PageReport) -> HeapMap:
        from .remote import copied_pages, heapmap_from_memory, merge_remote

        pages = copied_pages(report)
        maps = procfs.read_maps(self.master, self.procfs_root)
        try:
            if self._remote is None or not np.array_equal(_mapping_starts(maps, self._remote_covered),
                                                          self._remote_starts):
                self._remote = heapmap_from_memory(report, procfs_root=self.procfs_root, pages=pages,
                                                   interpreter=self._interpreter)
                self._remote_covered = pages
                self.remote_reads += 1
                self.remote_pages += int(pages.size)
            else:
                new = np.setdiff1d(pages, self._remote_covered, assume_unique=True)
                if new.size:
                    part = heapmap_from_memory(report, procfs_root=self.procfs_root, pages=new,
                                               interpreter=self._interpreter)
                    self._remote = merge_remote(self._remote, part)
                    self._remote_covered = np.union1d(self._remote_covered, new)
                    self.remote_reads += 1
                    self.remote_pages += int(new.size)
        except MemoryAccessDenied as err:
            raise NoAttribution(self.master, "no heap map (the master never called cowprof.prepare_fork()) and "
                                             f"finding the objects from outside needs to read the master's "
                                             f"memory: {err}") from None
        self._remote_starts = _mapping_starts(maps, self._remote_covered)
        self._interpreter = self._remote.interpreter
        return self._remote

    def heapmap(self, report: PageReport) -> HeapMap:
        """The master's saved heap map while it has one, else the records read from its memory."""
        return self._saved_map() or self._memory_map(report)

    # --------------------------------------------------------------------------- a sample

    def _same_pages(self, report: PageReport, hm: HeapMap) -> bool:
        if self._last is None:
            return False
        prev, prev_hm = self._last[0], self._last[1]
        return prev_hm is hm and len(prev.workers) == len(report.workers) and all(
            a.pid == b.pid and a.copied_addrs is b.copied_addrs for a, b in zip(prev.workers, report.workers))

    def attribute(self, report: PageReport) -> SampleAttribution:
        """Attribute one report (scanned with ``keep_addresses=True``); never raises a
        :class:`~cowprof.errors.CowprofError`: the sample keeps it as ``error``."""
        t0 = time.perf_counter()
        try:
            hm = self.heapmap(report)
        except CowprofError as err:
            self._last = None
            return SampleAttribution(None, None, err, seconds=time.perf_counter() - t0)
        if self._layouts_of is not hm:
            self._layouts, self._layouts_of = {}, hm
        try:
            if not self.causes and self._same_pages(report, hm):
                assert self._last is not None
                self.reused += 1
                attr = dataclasses.replace(self._last[2], taken_at=report.taken_at)
            else:
                attr = attribution.attribute(report, hm, causes=self.causes, procfs_root=self.procfs_root,
                                             layouts=self._layouts)
        except CowprofError as err:
            self._last = None
            return SampleAttribution(None, None, err, seconds=time.perf_counter() - t0)
        fattr, ferr = None, None
        if self.functions:
            if self._last is not None and self._last[3] is not None and self._same_pages(report, hm):
                fattr = dataclasses.replace(self._last[3], taken_at=report.taken_at)
            else:
                try:
                    fattr = self._by_function(report, hm)
                except CowprofError as err:
                    ferr = err
        self._last = (report, hm, attr, fattr)
        seconds = time.perf_counter() - t0
        attr.seconds = seconds
        return SampleAttribution(attr, fattr, None, ferr, seconds)

    def _by_function(self, report: PageReport, hm: HeapMap) -> Any:
        from .functions import by_function
        from .remote.target import Memory, find_interpreter

        try:
            with Memory(self.master, self.procfs_root) as mem:
                interp = getattr(hm, "interpreter", None) or self._interpreter
                if interp is None:
                    interp = self._interpreter = find_interpreter(self.master, mem, self.procfs_root)
                return by_function(report, hm, mem, interp, source=getattr(hm, "source", "heapmap"),
                                   cache=self._function_cache)
        except MemoryAccessDenied as err:
            raise NoAttribution(self.master, f"naming the copied functions needs to read the master's "
                                             f"memory: {err}") from None


def _mapping_starts(maps: list[procfs.Mapping], pages: np.ndarray) -> np.ndarray:
    """For each page, the start of the mapping holding it now (0: none)."""
    if not maps or pages.size == 0:
        return np.zeros(pages.size, dtype=np.uint64)
    starts = np.array([m.start for m in maps], dtype=np.uint64)
    ends = np.array([m.end for m in maps], dtype=np.uint64)
    i = np.searchsorted(starts, pages, side="right") - 1
    ok = (i >= 0) & (pages < ends[np.maximum(i, 0)])
    return np.where(ok, starts[np.maximum(i, 0)], np.uint64(0))
