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
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import elf, procfs, untrusted
from .errors import AccessDenied, BadInput, ProcessGone
from .tree import Tree, find_tree

VERSION = 1
REGIONS: tuple[str, ...] = ("python", "heap", "stack", "file", "other")
_R_PYTHON, _R_HEAP, _R_STACK, _R_FILE, _R_OTHER = range(5)
_NR = len(REGIONS)
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
        d = untrusted.obj(d, "a region")
        return cls(*(_bytes(d, k) for k in ("shared_bytes", "copied_bytes", "new_bytes")))


def _regions_to_dict(regions: dict[str, RegionPages]) -> dict[str, dict[str, int]]:
    return {k: regions[k].to_dict() for k in REGIONS if k in regions}


def _regions_from_dict(d: dict[str, Any]) -> dict[str, RegionPages]:
    return {k: RegionPages.from_dict(v) for k, v in untrusted.obj(d, "'regions'").items()}


def _bytes(d: dict[str, Any], key: str, *, optional: bool = True) -> int:
    """A byte count of a report read back: a non-negative integer (0 when optional and absent)."""
    return untrusted.integer(d, key, minimum=0, optional=optional) or 0


def _pid(d: dict[str, Any]) -> int:
    return untrusted.integer(d, "pid", minimum=1) or 0


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
    def from_dict(cls, d: Any) -> MasterPages:
        d = untrusted.obj(d, "'master'")
        return cls(
            pid=_pid(d), started_at=untrusted.timestamp(d, "started_at", optional=True) or 0.0,
            rss_bytes=_bytes(d, "rss_bytes", optional=False), pss_bytes=_bytes(d, "pss_bytes", optional=False),
            uss_bytes=_bytes(d, "uss_bytes", optional=False), swap_bytes=_bytes(d, "swap_bytes"),
            diverged_bytes=_bytes(d, "diverged_bytes"), regions=_regions_from_dict(d.get("regions", {})),
            ambiguous_bytes=_bytes(d, "ambiguous_bytes"), shared_bytes=_bytes(d, "shared_bytes"),
            new_bytes=_bytes(d, "new_bytes"),
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
        d = untrusted.obj(d, "a worker")
        sharers = d.get("sharers")
        if sharers is not None:
            if not all(k.isdecimal() and len(k) < 4 for k in untrusted.obj(sharers, "'sharers'")):
                raise ValueError("'sharers' keys are not mapping counts")
            sharers = {int(k): _bytes(sharers, k, optional=False) for k in sharers}
        return cls(
            pid=_pid(d), started_at=untrusted.timestamp(d, "started_at", optional=True) or 0.0,
            rss_bytes=_bytes(d, "rss_bytes", optional=False), pss_bytes=_bytes(d, "pss_bytes", optional=False),
            uss_bytes=_bytes(d, "uss_bytes", optional=False), swap_bytes=_bytes(d, "swap_bytes"),
            shared_bytes=_bytes(d, "shared_bytes", optional=False),
            copied_bytes=_bytes(d, "copied_bytes", optional=False), new_bytes=_bytes(d, "new_bytes", optional=False),
            regions=_regions_from_dict(d.get("regions", {})), ambiguous_bytes=_bytes(d, "ambiguous_bytes"),
            shared_with_master_bytes=untrusted.integer(d, "shared_with_master_bytes", minimum=0, optional=True),
            sharers=sharers,
        )


@dataclass
class PageReport:
    """One scan of a tree. ``to_dict()`` is the documented, stable JSON (docs/measure.md)."""

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
            d = untrusted.obj(d, "the report")
            version = untrusted.integer(d, "version")
            if version != VERSION:
                raise BadInput(f"unsupported page report version {version} (this cowprof reads {VERSION})")
            privileged = d.get("privileged")
            if not isinstance(privileged, bool):
                raise ValueError("'privileged' is not true or false")
            workers, gone = d.get("workers"), d.get("gone", [])
            if not isinstance(workers, list):
                raise ValueError("'workers' is not a list")
            if not isinstance(gone, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in gone):
                raise ValueError("'gone' is not a list of PIDs")
            return cls(
                version=VERSION, taken_at=untrusted.timestamp(d, "taken_at") or 0.0, privileged=privileged,
                mode=untrusted.string(d, "mode") or "", page_size=untrusted.integer(d, "page_size", minimum=1) or 1,
                scan_seconds=untrusted.number(d, "scan_seconds", minimum=0.0, optional=True) or 0.0,
                master=MasterPages.from_dict(d.get("master")),
                workers=[WorkerPages.from_dict(w) for w in workers], gone=list(gone),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a cowprof page report: {err}") from None


# ------------------------------------------------------------------------------ reading


def region_of(m: procfs.Mapping) -> int:
    """Region code of a mapping by its name alone (an anonymous mapping is ``python``; see
    :func:`region_ranges` for the ``.bss`` of a library in the anonymous mapping after it)."""
    p = m.path
    if p == "[heap]":
        return _R_HEAP
    if p.startswith("[stack"):
        return _R_STACK
    if p == "" or p.startswith("[anon:"):
        return _R_PYTHON
    if m.file_backed and not p.startswith(("/dev/", "/memfd:", "/SYSV")):
        return _R_FILE
    return _R_OTHER


def region_ranges(maps: list[procfs.Mapping], pid: int, procfs_root: str = "/proc") -> list[tuple[int, int, int]]:
    """``(start, end, region code)`` of the writable private mappings of ``pid``, in address order.

    An unnamed anonymous mapping right after a file mapping starts with that file's ``.bss`` when
    the file is a loaded ELF image: the part up to the end of its last ``PT_LOAD`` segment
    (``p_vaddr + p_memsz`` from the program headers, past the load bias of the file's mapping
    with offset 0) is ``file``, the rest (memory the kernel placed next to it: pymalloc arenas,
    big allocations) ``python``. When the file's headers cannot be read, the whole mapping is
    ``file`` if the file mapping before it is writable (a library's data), else ``python``.
    """
    out: list[tuple[int, int, int]] = []
    prev: procfs.Mapping | None = None
    offset_zero: dict[tuple[str, int], procfs.Mapping] = {}  # per file, its latest mapping at offset 0
    for m in maps:
        if m.offset == 0 and m.inode:
            offset_zero[(m.dev, m.inode)] = m
        if m.writable and m.private and not m.path.startswith(("[vvar", "[vsyscall", "[vdso")):
            cut = m.start
            if m.path == "" and prev is not None and prev.end == m.start and prev.file_backed:
                bss_end = _image_end(prev, offset_zero.get((prev.dev, prev.inode)), pid, procfs_root)
                if bss_end is None:
                    cut = m.end if prev.writable else m.start
                else:
                    cut = min(max(bss_end, m.start), m.end)
            if cut > m.start:
                out.append((m.start, cut, _R_FILE))
            if cut < m.end:
                out.append((cut, m.end, region_of(m)))
        prev = m
    return out


def _image_end(m: procfs.Mapping, first: procfs.Mapping | None, pid: int, procfs_root: str) -> int | None:
    """Where the loaded image of the file ``m`` maps ends (its ``.bss`` included), ``m.end`` when
    the file is no ELF image, None when that cannot be known (unreadable file, an ELF this reader
    does not parse, no mapping at offset 0, or headers that do not describe ``m``)."""
    if first is None:
        return None
    extent = elf.cached_extent(m.dev, m.inode, lambda: procfs.open_mapped_file(pid, m, procfs_root),
                               procfs.PAGE_SIZE)
    if extent is None:
        return None
    if not extent.image:
        return m.end
    bias = first.start - extent.first_vaddr
    if not first.start <= m.start < m.end <= bias + extent.end_vaddr:
        return None  # another copy of the file, or not loaded by its headers
    return bias + extent.end_vaddr


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
        """A master-side array with one extra slot (see _master_index), zeroed."""
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

    def __init__(self, raw: bytes, maps: list[procfs.Mapping], pid: int, procfs_root: str) -> None:
        self.raw = raw
        split = region_ranges(maps, pid, procfs_root)
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

    def read(self, pm: procfs.Pagemap) -> np.ndarray:
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


@dataclass
class _Cache:
    """What repeated scans of one tree reuse while the inputs are byte-for-byte the same."""

    layouts: dict[int, _Layout] = field(default_factory=dict)  # pid -> layout of its current maps
    # worker pid -> (worker layout, master layout, index of the master's page per worker page)
    index: dict[int, tuple[_Layout, _Layout, np.ndarray | None]] = field(default_factory=dict)

    def keep(self, pids: set[int]) -> None:
        for d in (self.layouts, self.index):
            for pid in [p for p in d if p not in pids]:
                del d[pid]


@dataclass
class _Proc:
    """One process's pages in one scan."""

    pid: int
    layout: _Layout
    entries: np.ndarray  # uint64 pagemap entry per page (the layout's buffer when cached)
    top: np.ndarray  # uint8 per page: the entry's top byte & _T_USED

    def pfns(self) -> np.ndarray:
        """PFN per page, 0 where not present (or not visible)."""
        return np.where(self.top >= _T_PRESENT, self.entries & procfs.PM_PFN_MASK, np.uint64(0))


def _read_pages(pid: int, procfs_root: str, cache: _Cache | None = None) -> _Proc:
    raw = procfs.read_bytes(pid, "maps", procfs_root)
    layout = cache.layouts.get(pid) if cache is not None else None
    if layout is None or layout.raw != raw:
        maps = procfs.parse_maps(raw)
        if not maps:
            raise procfs._no_memory(pid)
        layout = _Layout(raw, maps, pid, procfs_root)
        if cache is not None:
            cache.layouts[pid] = layout
    with procfs.Pagemap(pid, procfs_root) as pm:
        entries = layout.read(pm)
    top = np.bitwise_and(entries.view(np.uint8)[_TOP_BYTE::8], np.uint8(_T_USED), out=layout.buffers().top)
    return _Proc(pid, layout, entries, top)


def _master_index(w: _Layout, m: _Layout, cache: _Cache | None = None, pid: int = 0) -> np.ndarray | None:
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
    """Per worker page, the value of a master-indexed array with one extra slot (see _master_index)."""
    return ext[:-1] if idx is None else ext[idx]


def _regions(shared: list[int], copied: list[int], new: list[int], page: int) -> dict[str, RegionPages]:
    return {name: RegionPages(shared[r] * page, copied[r] * page, new[r] * page) for r, name in enumerate(REGIONS)}


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
    pages: _Proc
    m_idx: np.ndarray | None  # see _master_index
    key: np.ndarray | None = None  # uint8 per page: top byte | _K_MASTER | _K_SAME
    present: np.ndarray | None = None  # bool per page
    shared: np.ndarray | None = None  # bool per page: present and shared
    same: np.ndarray | None = None  # pfn mode: bool per page, it is the master's very page
    own_need: np.ndarray | None = None  # pfn mode: bool per page, shared but not the master's page
    own_counts: np.ndarray | None = None  # pfn mode: kpagecount of the own_need pages


def _started(st: procfs.Stat, btime: float) -> float:
    return btime + st.starttime_ticks / _CLK_TCK


def _read_worker(pid: int, master: _Proc, btime: float, procfs_root: str, cache: _Cache | None = None) -> _Worker:
    """Read one worker; ProcessGone when it exited or its PID now belongs to someone else."""
    st = procfs.read_stat(pid, procfs_root)
    if st.zombie or st.ppid != master.pid:
        raise ProcessGone(pid)
    counters = procfs.read_smaps_rollup(pid, procfs_root)
    wp = _read_pages(pid, procfs_root, cache)
    return _Worker(pid, _started(st, btime), counters, wp, _master_index(wp.layout, master.layout, cache, pid))


def _addrs(pages: _Proc, mask: np.ndarray) -> np.ndarray:
    """Virtual addresses of the pages where ``mask`` holds, in address order."""
    vpns = pages.layout.vpns(np.flatnonzero(mask))
    vpns.sort()
    return vpns.astype(np.uint64) << np.uint64(procfs.PAGE_SHIFT)


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
    * With ``tolerance`` > 0 (a live view), the previous report also stands while few pages can
      have changed since its page tables were read: the same processes, no address space shrunk,
      and at most ``tolerance`` x the tree's resident pages (at least ``MIN_TOLERANCE_PAGES``)
      page faults summed over the tree, for at most ``max_age`` seconds. A page changes class
      (shared, copied, new) through a fault of the process that maps it, or of the master (its
      post-fork copies), or by being unmapped; so every page count of such a report is off by at
      most that many pages, and each PSS by at most that many pages' worth. Not seen, besides what
      the exact check does not see: pages dropped without unmapping them (``madvise`` DONTNEED or
      FREE, swap-out), which ``max_age`` bounds in time. The report keeps its ``taken_at`` (when its
      pages were read) and ``drift_pages`` says the bound.
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
        self.privileged = privileged
        self.procfs_root = procfs_root
        self.tolerance = tolerance
        self.max_age = max_age
        self.unchanged = 0
        self.scans = 0
        self.drift_pages = 0
        """For the report the last ``scan()`` returned: how many pages can have changed since its page
        tables were read (0: it is exact now)."""
        self._cache = _Cache()
        # (tree, keep_addresses, per-process state when the report was read, report, monotonic time)
        self._last: tuple[Tree, bool, dict[int, tuple[int, ...]], PageReport, float] | None = None

    def _state(self, tree: Tree) -> dict[int, tuple[int, ...]] | None:
        """pid -> (ppid, start time, minor faults, major faults, address space, resident pages)."""
        out: dict[int, tuple[int, ...]] = {}
        for pid in (tree.master, *tree.workers):
            try:
                st = procfs.read_stat(pid, self.procfs_root)
            except ProcessGone:
                return None
            if st.zombie:
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
        t0 = time.perf_counter()
        tree = _as_tree(target, self.procfs_root)
        self.scans += 1
        state = self._state(tree)
        last = self._last
        if state is not None and last is not None and last[0] == tree and last[1] == keep_addresses:
            then, report = last[2], last[3]
            same_processes = all(state[p][:2] == then[p][:2] for p in state)
            if same_processes and state == then:
                self.unchanged += 1
                self.drift_pages = 0
                return dataclasses.replace(report, taken_at=time.time(), scan_seconds=time.perf_counter() - t0)
            if same_processes and self.tolerance > 0 and (self.max_age is None or t0 - last[4] <= self.max_age):
                drift = self._drift(then, state)
                rss_pages = (report.master.rss_bytes + sum(w.rss_bytes for w in report.workers)) // report.page_size
                if drift is not None and drift <= max(self.MIN_TOLERANCE_PAGES, int(self.tolerance * rss_pages)):
                    self.unchanged += 1
                    self.drift_pages = drift
                    return dataclasses.replace(report, scan_seconds=time.perf_counter() - t0)
        report = _scan(tree, privileged=self.privileged, procfs_root=self.procfs_root,
                       keep_addresses=keep_addresses, cache=self._cache, t0=t0)
        self._cache.keep({tree.master, *tree.workers})
        self.drift_pages = 0
        self._last = (tree, keep_addresses, state, report, t0) if state is not None else None
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
    workers: list[_Worker] = []
    gone: list[int] = []
    for pid in tree.workers:
        try:
            workers.append(_read_worker(pid, master, btime, procfs_root, cache))
        except ProcessGone:
            gone.append(pid)

    # Master-indexed arrays have one extra slot, where worker pages without a master mapping land.
    m_top = master.top
    m_size = m_top.size
    mb = master.layout.buffers()
    m_present = np.greater_equal(m_top, np.uint8(_T_PRESENT), out=mb.present)
    m_at_flag = mb.ext("at_flag")  # _K_MASTER where the master has a present page
    np.left_shift(m_present.view(np.uint8), 1, out=m_at_flag[:-1])  # _K_MASTER is bit 1

    # 2. sharing is the exclusive bit (mapcount == 1). With root, also: is it the master's very
    #    page (same PFN), and kpagecount of the shared pages, read once per PFN (a worker page
    #    that is the master's page has the master's count), for the ``sharers`` histogram.
    m_counts_ext = None
    if pfn_mode:
        m_pfn_ext = np.zeros(m_size + 1, dtype=np.uint64)
        m_pfn_ext[:-1] = master.pfns()
        m_need = m_present & (m_top & _T_EXCL == 0)
        need = [m_pfn_ext[:-1][m_need]]
        for w in workers:
            w_pfn = w.pages.pfns()  # 0 where not present, and the master's is 0 where it has no page
            w.same = (_at(w.m_idx, m_pfn_ext) == w_pfn) & (w_pfn != 0)
            w.own_need = (w.pages.top & (_T_PRESENT | _T_EXCL) == _T_PRESENT) & ~w.same
            need.append(w_pfn[w.own_need])
        parts = np.split(procfs.read_kpagecount(np.concatenate(need), procfs_root),
                         np.cumsum([a.size for a in need])[:-1])
        m_counts_ext = np.zeros(m_size + 1, dtype=np.int64)
        m_counts_ext[:-1][m_need] = parts[0]
        for w, c in zip(workers, parts[1:]):
            w.own_counts = c

    # 3. workers: each page's key byte (flags of its entry, whether the master has a page there, in
    #    pfn mode whether it is the master's very page) decides its class. Per master page: whether
    #    some worker has a present page at its address (``seen_any``), still shares it
    #    (``seen_shared``), and whether more than one worker has one (``several``).
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

        def at_master(a: np.ndarray) -> np.ndarray:
            if w.m_idx is None:  # noqa: B023 - called in this iteration only
                return a
            scratch.fill(0)
            scratch[w.m_idx] = a  # noqa: B023 - indexes are unique within one worker (the extra slot aside)
            return scratch[:-1]

        p = at_master(w.present.view(np.uint8))
        np.bitwise_and(seen_any, p, out=m_tmp)
        several |= m_tmp
        seen_any |= p
        seen_shared |= at_master(w.shared.view(np.uint8))

    # 4. the master: its exclusive anonymous pages at addresses workers still have are its own
    #    post-fork copies when a worker still shares the original ("diverged"); when every worker
    #    there is exclusive too, who wrote first is unknowable ("ambiguous")
    m_key = mb.key
    np.left_shift(seen_shared, 1, out=m_key)  # _K_MASTER
    np.left_shift(seen_any, 2, out=m_tmp)  # _K_SAME
    m_key |= m_tmp
    m_key |= m_top
    m_layout = master.layout
    m_all = m_layout.count(m_present)
    m_shared = m_layout.count(_is(m_key, _M_SHARED, m_tmp, mb.mask))
    m_amb = m_layout.count(_is(m_key, _M_AMBIGUOUS, m_tmp, mb.mask))
    diverged = _is(m_key, _M_DIVERGED, m_tmp, mb.mask)
    m_div = m_layout.count(diverged)
    m_new = [a - s - d - x for a, s, d, x in zip(m_all, m_shared, m_div, m_amb)]
    master_pages = MasterPages(
        pid=tree.master, started_at=m_started, rss_bytes=m_counters.rss, pss_bytes=m_counters.pss,
        uss_bytes=m_counters.uss, swap_bytes=m_counters.swap,
        diverged_bytes=sum(m_div) * page,
        regions=_regions(m_shared, m_div, m_new, page),
        ambiguous_bytes=sum(m_amb) * page,
        shared_bytes=sum(m_shared) * page,
        new_bytes=sum(m_new) * page,
        diverged_addrs=_addrs(master, diverged) if keep_addresses else None,
    )

    # 5. per worker totals, regions, ambiguity, pfn-mode extras
    out: list[WorkerPages] = []
    # the master's own (exclusive) pages where exactly one worker has a page: a copy there is
    # that worker's alone, and nobody can tell whether the master or the worker wrote first
    solo_own = mb.ext("solo_own", bool)
    _is(m_top, (_T_PRESENT | _T_EXCL, _T_PRESENT | _T_EXCL), m_tmp, solo_own[:-1])
    np.bitwise_xor(several, np.uint8(1), out=m_tmp)
    m_tmp &= seen_any
    solo_own[:-1] &= m_tmp.view(bool)
    for w in workers:
        assert w.key is not None and w.present is not None and w.shared is not None  # set by step 4
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
            full = np.ones(w.key.size, dtype=np.int64)  # exclusive: mapped once
            full[w.same] = _at(w.m_idx, m_counts_ext)[w.same]
            full[w.own_need] = w.own_counts
            hist = np.bincount(np.clip(full[w.shared], 0, SHARERS_MAX), minlength=1)
            sharers = {int(k): int(v) * page for k, v in enumerate(hist) if v}
        out.append(WorkerPages(
            pid=w.pid, started_at=w.started_at, rss_bytes=w.counters.rss, pss_bytes=w.counters.pss,
            uss_bytes=w.counters.uss, swap_bytes=w.counters.swap,
            shared_bytes=sum(n_shared) * page, copied_bytes=sum(n_copied) * page,
            new_bytes=sum(n_new) * page, regions=_regions(n_shared, n_copied, n_new, page),
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
