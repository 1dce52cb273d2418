"""Readers of the binary /proc files, pagemap and kpagecount, into numpy arrays.

Part of :mod:`cowprof.procfs` (whose names ``Pagemap``, ``read_kpagecount``, ``PM_PRESENT``... are
these): the one module of the /proc layer that imports numpy, so that finding a tree and reading
the text files (:mod:`cowprof.procfs`) does not.

* ``pagemap``: 8 bytes per virtual page, read with ``os.preadv`` straight into numpy ``uint64``
  arrays, one big read per mapping chunk; decoded with vectorized bit operations.
* ``/proc/kpagecount``: how many page-table entries map each physical page (root only); read for a
  set of PFNs in a bounded number of clustered reads.
* :func:`pfns_visible_in_new_page`: the PFN probe on a page written for it (see ``procfs.pfns_visible``).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .._parallel import in_threads
from ..errors import CowprofError, ProcessGone
from . import PAGE_SHIFT, PAGE_SIZE, _proc_path, wrap_exceptions

# pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = np.uint64((1 << 55) - 1)
PM_SOFT_DIRTY = np.uint64(1 << 55)
PM_EXCLUSIVE = np.uint64(1 << 56)
PM_FILE = np.uint64(1 << 61)
PM_SWAP = np.uint64(1 << 62)
PM_PRESENT = np.uint64(1 << 63)

#: pagemap entries per read: 1 Mi entries = 8 MiB of pagemap = 4 GiB of address space.
PAGEMAP_CHUNK = 1 << 20


class Pagemap:
    """An open ``/proc/PID/pagemap``; ``read(start, end)`` returns the entries of a range.

    Opening checks the rights once (the PFN bits depend on the opener's CAP_SYS_ADMIN); a read that
    returns nothing means the process's memory is gone (it exited): :class:`ProcessGone`.
    """

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        self.pid = pid
        self.path = _proc_path(procfs_root, pid, "pagemap")
        self._errors = wrap_exceptions(pid, self.path)
        with self._errors:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pagemap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (contiguous uint64) with the entries of the pages from address ``start``."""
        view = memoryview(out).cast("B")
        total = len(view)
        done = 0
        offset = (start >> PAGE_SHIFT) * 8
        with self._errors:
            while done < total:
                want = min(total - done, PAGEMAP_CHUNK * 8)
                got = os.preadv(self.fd, [view[done : done + want]], offset + done)
                if got <= 0:  # the kernel returns 0 once the mm is gone
                    raise ProcessGone(self.pid)
                done += got  # a multiple of 8: the kernel rejects unaligned pagemap reads

    def readv(self, buffers: list[memoryview], offset: int) -> int:
        """One ``preadv`` of the entries from byte ``offset`` of the file into ``buffers``; returns
        the bytes read (0 once the process's memory is gone)."""
        with self._errors:
            return os.preadv(self.fd, buffers, offset)

    def read(self, start: int, end: int) -> np.ndarray:
        """Entries (uint64) of the pages covering ``[start, end)``."""
        n = (end - start + PAGE_SIZE - 1) >> PAGE_SHIFT
        out = np.empty(n, dtype=np.uint64)
        if n:
            self.read_into(out, start)
        return out

    def read_ranges(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Entries of several ranges concatenated into one array, plus the offset of each range."""
        counts = np.fromiter(((e - s) >> PAGE_SHIFT for s, e in ranges), dtype=np.int64, count=len(ranges))
        offsets = np.zeros(len(ranges) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint64)
        for (s, _e), o, n in zip(ranges, offsets[:-1].tolist(), counts.tolist()):
            if n:
                self.read_into(out[o : o + n], s)
        return out, offsets


def read_pagemap(pid: int, start: int, end: int, procfs_root: str = "/proc") -> np.ndarray:
    """Pagemap entries of ``[start, end)`` of a process (one open, big reads)."""
    with Pagemap(pid, procfs_root) as pm:
        return pm.read(start, end)


class PageBits:
    """Decoded pagemap entries: one boolean/int array per field, same length as the input."""

    __slots__ = ("present", "swapped", "file", "exclusive", "pfn")

    def __init__(self, present: np.ndarray, swapped: np.ndarray, file: np.ndarray, exclusive: np.ndarray,
                 pfn: np.ndarray) -> None:
        self.present = present
        self.swapped = swapped
        self.file = file
        self.exclusive = exclusive
        self.pfn = pfn  # uint64, 0 when not present or not visible (unprivileged)


def decode(entries: np.ndarray) -> PageBits:
    """Vectorized decoding of pagemap entries."""
    present = (entries & PM_PRESENT) != 0
    return PageBits(
        present=present,
        swapped=(entries & PM_SWAP) != 0,
        file=(entries & PM_FILE) != 0,
        exclusive=(entries & PM_EXCLUSIVE) != 0,
        pfn=np.where(present, entries & PM_PFN_MASK, np.uint64(0)),
    )


# ----------------------------------------------------------------------------- kpagecount

#: at most this many separate reads of kpagecount per call (clusters of nearby PFNs are merged)
KPAGECOUNT_MAX_READS = 16384
#: PFNs at most this far apart are read together. Measured (2 cores, KVM, 138k PFNs of a 4 GiB
#: tree, scattered): 8-16 cost 61 ms of CPU, 32 67 ms, 32 with at most 4096 reads 76 ms.
_KPAGECOUNT_GAP = 8


def read_kpagecount(pfns: np.ndarray, procfs_root: str = "/proc", threads: int = 1) -> np.ndarray:
    """Map count of each PFN in ``pfns`` (any order, duplicates allowed), as int64.

    Nearby PFNs are read together: the sorted PFNs are cut into clusters where the gap is large,
    with the gap threshold raised until there are at most ``KPAGECOUNT_MAX_READS`` reads, read on
    up to ``threads`` threads. PFNs past the end of the file read as 0.
    """
    pfns = np.asarray(pfns, dtype=np.uint64).reshape(-1)
    if pfns.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(pfns)
    srt = pfns[order]
    gaps = np.diff(srt)
    gap = _KPAGECOUNT_GAP
    if np.count_nonzero(gaps > gap) >= KPAGECOUNT_MAX_READS:
        gap = int(np.partition(gaps, gaps.size - KPAGECOUNT_MAX_READS)[gaps.size - KPAGECOUNT_MAX_READS])
    cuts = np.flatnonzero(gaps > gap) + 1
    firsts = np.concatenate(([0], cuts))
    lo = srt[firsts].astype(np.int64)
    span = srt[np.concatenate((cuts, [srt.size])) - 1].astype(np.int64) - lo + 1
    at = np.zeros(span.size + 1, dtype=np.int64)  # where each cluster goes in one buffer
    np.cumsum(span, out=at[1:])
    buf = np.zeros(int(at[-1]), dtype=np.uint64)
    view = memoryview(buf).cast("B")
    path = os.path.join(procfs_root, "kpagecount")
    errors = wrap_exceptions(None, path)
    with errors:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(clusters: list[tuple[int, int, int]]) -> None:
        for first, n, dst in clusters:
            done = 0
            while done < n * 8:
                got = os.preadv(fd, [view[dst * 8 + done : (dst + n) * 8]], first * 8 + done)
                if got <= 0:  # past the end of physical memory: the rest stays 0
                    break
                done += got

    clusters = list(zip(lo.tolist(), span.tolist(), at.tolist()))
    parts = max(1, min(threads, len(clusters) // 256))  # a thread is worth a few hundred reads
    try:
        with errors:
            for ok, exc in in_threads([functools.partial(read, clusters[i::parts]) for i in range(parts)],
                                      threads=parts):
                if not ok:
                    raise exc
    finally:
        os.close(fd)
    cluster = np.repeat(np.arange(span.size), np.diff(np.concatenate((firsts, [srt.size]))))
    out = np.empty(srt.size, dtype=np.int64)
    out[order] = buf[at[cluster] + (srt.astype(np.int64) - lo[cluster])].astype(np.int64)
    return out


def pfns_visible_in_new_page(procfs_root: str = "/proc") -> bool:
    """True when pagemap shows this process the PFN of a page it just wrote (CAP_SYS_ADMIN)."""
    probe = np.ones(PAGE_SIZE // 8, dtype=np.uint64)  # touched: its page is present
    addr = probe.ctypes.data
    try:
        with Pagemap(os.getpid(), procfs_root) as pm:
            entry = pm.read(addr, addr + 1)
    except CowprofError:
        return False
    return bool(entry[0] & PM_PRESENT) and bool(entry[0] & PM_PFN_MASK)
