"""Attribution of copied pages: which Python types sit on them, and which writes changed them.

Two views of each worker's copied pages (``cowprof.pages.scan(..., keep_addresses=True)``), joined
with the master's heap map (``cowprof.heapmap``, saved by ``prepare_fork``):

* **by type** (needs only the heap map): each copied page ``[p, p + page_size)`` is intersected
  with the object records; the bytes each record occupies on the page go to its type, the rest of
  the page to ``"no object"`` (allocator pool headers, free blocks, malloc metadata, stacks,
  ``.data``). An object spanning pages is split by page; a page holding many objects is split by
  the bytes of each.
* **by cause** (also needs to read process memory, see :mod:`cowprof.memreader`): each copied page
  is compared, as 64-bit words, with the still-shared original (the master's page while it is still
  shared, else a sibling worker's page that is still shared, else the master's page *assumed*
  unchanged: see docs/attribute.md) and every changed word is classified by the record it falls
  in and its offset from the object start: refcount field, GC header, str hash, other object field,
  or allocator metadata / free block (no record). A page with no changed word is "identical
  content" (written, then restored: transient refcount changes of mortal objects). A page's bytes
  are split between causes in proportion to its changed words.

Everything is vectorized over pages and words with numpy; the only Python loops are over chunks of
pages, source processes and runs of adjacent pages read with one ``preadv`` each.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import heapmap as _heapmap
from . import procfs
from .errors import AccessDenied, BadInput, ProcessGone
from .heapmap import HeapMap, NoHeapMap, find_heapmap  # the last two: heapmap.py's, also offered here
from .memreader import MemoryAccessDenied, MemReader
from .pages import PageReport, scan
from .tree import find_tree

__all__ = [
    "CAUSES", "NO_OBJECT", "ORIGINALS", "UNKNOWN_MEMORY", "VERSION", "Attribution", "NoAttribution",
    "NoHeapMap",
    "WorkerAttribution", "attribute", "by_cause", "by_type", "find_heapmap", "heapmap_or_memory", "layout_of",
    "record_bytes",
    "snapshot",
]

VERSION = 1
NO_OBJECT = "no object"
#: allocated memory in which attribution from outside (no heap map) found no verifiable object
UNKNOWN_MEMORY = "unknown"
CAUSES: tuple[str, ...] = ("refcount", "gc_header", "str_hash", "other_field", "allocator", "identical",
                           "unknown")
#: where the original of a copied page was read from (bytes per source in ``originals``)
ORIGINALS: tuple[str, ...] = ("master", "sibling", "master_assumed", "none")
_REFCOUNT, _GC, _STR_HASH, _OTHER, _ALLOC, _IDENTICAL, _UNKNOWN = range(len(CAUSES))
_NC = len(CAUSES)
_SRC_MASTER, _SRC_SIBLING, _SRC_ASSUMED, _SRC_NONE = range(len(ORIGINALS))

# The object layout comes from the map (cowprof.heapmap.object_layout: the master's own headers and
# measurements); these are the values of maps written before it was recorded (64-bit 3.12/3.13).
#: byte offset of the cached hash in an exact str (PyASCIIObject: refcnt, type, length, hash)
STR_HASH_OFFSET = _heapmap.DEFAULT_LAYOUT["str_hash_offset"]
#: bytes of the GC header (PyGC_Head: two words) at the end of a GC object's pre-header
GC_HEAD_SIZE = _heapmap.DEFAULT_LAYOUT["gc_head"]
#: allocation granularity of CPython's allocators on 64-bit: a record is widened to its block
BLOCK_ALIGN = _heapmap.DEFAULT_LAYOUT["block_align"]
#: pages per chunk: bounds memory (two copies of the chunk, 2 x 16 MiB with 4 KiB pages)
CHUNK_PAGES = 4096
#: pagemap reads of sparse addresses merge gaps up to this many pages into one read
_PAGEMAP_GAP = 512
# Builtin containers whose separately allocated buffers (list items, set table, dict keys) the
# heap map records under the container's type; their object records have the master's basic size
# (pre-header excluded; from the map's layout, else this interpreter's), every other record of the
# type is a buffer.
_FIXED_OBJECT_SIZE = {"list": list.__basicsize__, "dict": dict.__basicsize__, "set": set.__basicsize__,
                      "frozenset": frozenset.__basicsize__}
# Subclasses (C or Python) known to have such buffers: object records have the modal size.
_BUFFERED_SUBCLASSES = ("collections.OrderedDict", "collections.defaultdict", "collections.Counter")


class NoAttribution(AccessDenied):
    """No heap map, and the master's memory cannot be read to find the objects from outside."""


# ---------------------------------------------------------------------------------- results


@dataclasses.dataclass
class WorkerAttribution:
    """One worker's copied bytes by type, and (when memory was readable) by cause."""

    pid: int
    copied_bytes: int
    types: list[tuple[str, int]]
    """(type name, bytes), largest first; ``no_object_bytes`` is kept apart."""
    no_object_bytes: int
    causes: dict[str, int] | None = None
    """Bytes per cause (keys: :data:`CAUSES`), summing to ``copied_bytes``; None without memory access."""
    changed_words: dict[str, int] | None = None
    """Changed 64-bit words per cause (``identical`` and ``unknown`` have none)."""
    originals: dict[str, int] | None = None
    """Bytes per source of the original page (keys: :data:`ORIGINALS`)."""
    unknown_bytes: int = 0
    """Allocated bytes holding no verifiable object (only from outside: a saved heap map has none);
    ``types``, ``no_object_bytes`` and ``unknown_bytes`` add up to ``copied_bytes``."""

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        types = self.types if top is None else self.types[:top]
        d: dict[str, Any] = {
            "pid": self.pid, "copied_bytes": self.copied_bytes,
            "types": [{"type": t, "bytes": b} for t, b in types],
            "other_types_bytes": sum(b for _t, b in self.types[len(types):]),
            "no_object_bytes": self.no_object_bytes, "unknown_bytes": self.unknown_bytes,
            "causes": self.causes, "changed_words": self.changed_words, "originals": self.originals,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerAttribution:
        types = [(str(t["type"]), int(t["bytes"])) for t in d["types"]]
        if d.get("other_types_bytes"):
            types.append(("(other types)", int(d["other_types_bytes"])))
        return cls(pid=int(d["pid"]), copied_bytes=int(d["copied_bytes"]), types=types,
                   no_object_bytes=int(d["no_object_bytes"]), unknown_bytes=int(d.get("unknown_bytes", 0)),
                   causes=d.get("causes"),
                   changed_words=d.get("changed_words"), originals=d.get("originals"))


@dataclasses.dataclass
class Attribution:
    """Attribution of one page scan. ``to_dict()`` is the JSON documented in docs/attribute.md."""

    version: int
    master: int
    taken_at: float
    page_size: int
    mode: str
    heapmap_records: int
    heapmap_created_at: float
    workers: list[WorkerAttribution]
    causes_error: str | None = None
    """Why there is no by-cause view (missing ptrace rights, not asked for), or None."""
    seconds: float = 0.0
    source: str = "heapmap"
    """Where the objects came from: ``"heapmap"`` (saved by the master) or ``"memory (CPython X.Y.Z,
    read from outside)"`` (:mod:`cowprof.remote`)."""

    @property
    def has_causes(self) -> bool:
        return bool(self.workers) and all(w.causes is not None for w in self.workers)

    def total_types(self) -> list[tuple[str, int]]:
        """All workers' copied bytes per type, largest first, with ``"no object"`` as one entry."""
        acc: dict[str, int] = {}
        for w in self.workers:
            for t, b in w.types:
                acc[t] = acc.get(t, 0) + b
            acc[NO_OBJECT] = acc.get(NO_OBJECT, 0) + w.no_object_bytes
            acc[UNKNOWN_MEMORY] = acc.get(UNKNOWN_MEMORY, 0) + w.unknown_bytes
        return sorted(((t, b) for t, b in acc.items() if b), key=lambda tb: (-tb[1], tb[0]))

    def total_causes(self) -> list[tuple[str, int]] | None:
        """All workers' copied bytes per cause, largest first (None without the by-cause view)."""
        if not self.has_causes:
            return None
        acc = dict.fromkeys(CAUSES, 0)
        for w in self.workers:
            for c, b in (w.causes or {}).items():
                acc[c] = acc.get(c, 0) + b
        return sorted(((c, b) for c, b in acc.items() if b), key=lambda cb: (-cb[1], CAUSES.index(cb[0])))

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "version": self.version, "master": self.master, "taken_at": self.taken_at,
            "page_size": self.page_size, "mode": self.mode, "seconds": self.seconds, "source": self.source,
            "heapmap": {"records": self.heapmap_records, "created_at": self.heapmap_created_at},
            "causes_error": self.causes_error,
            "workers": [w.to_dict(top) for w in self.workers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attribution:
        try:
            if int(d["version"]) != VERSION:
                raise BadInput(f"unsupported attribution version {d['version']} (this cowprof reads {VERSION})")
            return cls(version=VERSION, master=int(d["master"]), taken_at=float(d["taken_at"]),
                       page_size=int(d["page_size"]), mode=str(d["mode"]),
                       heapmap_records=int(d["heapmap"]["records"]),
                       heapmap_created_at=float(d["heapmap"]["created_at"]),
                       workers=[WorkerAttribution.from_dict(w) for w in d["workers"]],
                       causes_error=d.get("causes_error"), seconds=float(d.get("seconds", 0.0)),
                       source=str(d.get("source", "heapmap")))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a cowprof attribution: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------- heap map layout


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The heap map in the form the joins need: non-overlapping sorted ranges plus per-type facts."""

    start: np.ndarray  # uint64 record starts, sorted
    end: np.ndarray  # uint64 record ends, clamped to the next start (so ranges never overlap)
    type: np.ndarray  # intp type index per record
    buffer: np.ndarray  # bool per record: a container's separately allocated buffer, not an object
    preheader: np.ndarray  # uint64 per type: bytes of the record before the object start
    gc: np.ndarray  # bool per type: the last gc_head bytes of the pre-header are a GC header
    is_str: np.ndarray  # bool per type: exact str
    names: list[str]
    refcount_offset: int = 0  # the refcount word: [offset, offset + size)
    refcount_size: int = 8
    str_hash_offset: int = STR_HASH_OFFSET
    gc_head: int = GC_HEAD_SIZE


def _buffer_records(hm: HeapMap, names: list[str], pre: np.ndarray, fixed: dict[str, int]) -> np.ndarray:
    """Which records are container buffers rather than objects.

    Uses ``hm.is_buffer`` when the heap map carries it; otherwise infers it: the object records of
    a builtin list/dict/set/frozenset have a fixed size (pre-header + basic size), those of the few
    known buffered subclasses the most common size of their type, and every other record of these
    types is a buffer. Buffers of other dict/list/set subclasses count as objects (only the words
    at their first three offsets could then be misnamed).
    """
    flag = getattr(hm, "is_buffer", None)
    if isinstance(flag, np.ndarray) and flag.shape == hm.addr.shape:
        return flag.astype(bool, copy=False)
    buf = np.zeros(hm.addr.size, dtype=bool)
    for name, basic in fixed.items():
        for t in [i for i, n in enumerate(names) if n == name]:
            sel = hm.type == t
            buf[sel] = hm.size[sel] != np.uint32(basic + int(pre[t]))
    for name in _BUFFERED_SUBCLASSES:
        for t in [i for i, n in enumerate(names) if n == name]:
            sel = np.flatnonzero(hm.type == t)
            if sel.size:
                sizes, counts = np.unique(hm.size[sel], return_counts=True)
                buf[sel] = hm.size[sel] != sizes[np.argmax(counts)]
    return buf


def _layout(hm: HeapMap) -> _Layout:
    names = [str(n) for n in hm.type_names.tolist()]
    pre = hm.type_preheader
    if pre is None or pre.size != len(names):
        pre = np.zeros(len(names), dtype=np.uint8)
    layout = {**_heapmap.DEFAULT_LAYOUT, **(hm.layout or {})}
    fixed = {**_FIXED_OBJECT_SIZE, **{k: int(v) for k, v in layout["basicsize"].items() if k in _FIXED_OBJECT_SIZE}}
    start = np.asarray(hm.addr, dtype=np.uint64)
    if start.size > 1 and not bool(np.all(start[1:] >= start[:-1])):
        raise BadInput("heap map addresses are not sorted (use cowprof.heapmap.load/read)")
    # an object occupies its whole allocation block: pymalloc (and malloc) round sizes up to 16 bytes
    align = np.uint64(int(layout["block_align"]) - 1)
    end = (start + np.asarray(hm.size, dtype=np.uint64) + align) & ~align
    if start.size > 1:
        np.minimum(end[:-1], start[1:], out=end[:-1])
    return _Layout(
        start=start, end=end, type=np.asarray(hm.type, dtype=np.intp),
        buffer=_buffer_records(hm, names, pre, fixed), preheader=pre.astype(np.uint64),
        gc=pre.astype(np.int64) >= int(layout["gc_head"]), is_str=np.array([n == "str" for n in names], dtype=bool),
        names=names, refcount_offset=int(layout["refcount_offset"]), refcount_size=int(layout["refcount_size"]),
        str_hash_offset=int(layout["str_hash_offset"]), gc_head=int(layout["gc_head"]),
    )


def layout_of(hm: HeapMap) -> _Layout:
    """The map in the form the joins take (``_lay=`` of :func:`record_bytes`, :func:`by_type`):
    compute it once per map when joining it with many page sets."""
    return _layout(hm)


# ----------------------------------------------------------------------------------- by type


def _record_bytes(lay: _Layout, pages: np.ndarray, page_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of the given (sorted, unique) pages: the records on them and the bytes of each on
    each page (a record spanning pages appears once per page)."""
    ps = np.uint64(page_size)
    for c in range(0, pages.size, CHUNK_PAGES):
        p = pages[c : c + CHUNK_PAGES]
        first = np.searchsorted(lay.end, p, side="right")  # first record ending after the page start
        stop = np.searchsorted(lay.start, p + ps, side="left")  # records starting before the page end
        cnt = np.maximum(stop - first, 0)
        total = int(cnt.sum())
        if total == 0:
            continue
        rep_first = np.repeat(first, cnt)
        rec = rep_first + (np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        page_lo = np.repeat(p, cnt)
        lo = np.maximum(lay.start[rec], page_lo)
        hi = np.minimum(lay.end[rec], page_lo + ps)
        yield rec, (hi - lo).astype(np.float64)


def record_bytes(hm: HeapMap, pages: np.ndarray, page_size: int, *, _lay: _Layout | None = None) -> np.ndarray:
    """Bytes of each record of ``hm`` (in address order) on the given pages: float64 array."""
    lay = _lay or _layout(hm)
    out = np.zeros(lay.start.size, dtype=np.float64)
    for rec, nbytes in _record_bytes(lay, np.unique(np.asarray(pages, dtype=np.uint64)), page_size):
        out += np.bincount(rec, weights=nbytes, minlength=out.size)
    return out


def _type_bytes(lay: _Layout, pages: np.ndarray, page_size: int) -> np.ndarray:
    """Bytes of each type on the given (sorted, unique) pages: int64 array indexed by type."""
    out = np.zeros(len(lay.names), dtype=np.float64)
    for rec, nbytes in _record_bytes(lay, pages, page_size):
        out += np.bincount(lay.type[rec], weights=nbytes, minlength=out.size)
    return np.rint(out).astype(np.int64)


def _pages_of(w: Any) -> np.ndarray:
    addrs = getattr(w, "copied_addrs", None)
    if addrs is None:
        raise BadInput("attribution needs the copied page addresses: scan(..., keep_addresses=True)")
    return np.unique(np.asarray(addrs, dtype=np.uint64))


def by_type(report: PageReport, hm: HeapMap, *, _lay: _Layout | None = None) -> list[WorkerAttribution]:
    """Per worker: copied bytes per Python type (largest first) and the bytes on no object."""
    lay = _lay or _layout(hm)
    out = []
    for w in report.workers:
        pages = _pages_of(w)
        per_type = _type_bytes(lay, pages, report.page_size)
        copied = int(pages.size) * report.page_size
        order = np.argsort(-per_type, kind="stable")
        types = [(lay.names[i], int(per_type[i])) for i in order.tolist() if per_type[i] > 0]
        out.append(WorkerAttribution(pid=w.pid, copied_bytes=copied, types=types,
                                     no_object_bytes=copied - int(per_type.sum())))
    return out


# ---------------------------------------------------------------------------------- by cause


def _classify_words(lay: _Layout, addrs: np.ndarray) -> np.ndarray:
    """Cause code (int8) of each changed word at virtual address ``addrs`` (uint64)."""
    cause = np.full(addrs.size, _ALLOC, dtype=np.int8)
    if addrs.size == 0 or lay.start.size == 0:
        return cause
    rec = np.searchsorted(lay.start, addrs, side="right") - 1
    rc = np.maximum(rec, 0)
    inside = (rec >= 0) & (addrs < lay.end[rc])
    idx = np.flatnonzero(inside)
    r = rc[idx]
    t = lay.type[r]
    obj_rec = ~lay.buffer[r]
    obj_start = lay.start[r] + np.where(obj_rec, lay.preheader[t], np.uint64(0))
    off = addrs[idx].astype(np.int64) - obj_start.astype(np.int64)
    c = np.full(idx.size, _OTHER, dtype=np.int8)
    # the refcount word (3.14+: ob_refcnt, ob_overflow and ob_flags share it: all count as refcount)
    c[obj_rec & (off >= lay.refcount_offset) & (off < lay.refcount_offset + lay.refcount_size)] = _REFCOUNT
    c[obj_rec & lay.gc[t] & (off >= -lay.gc_head) & (off < 0)] = _GC
    c[obj_rec & lay.is_str[t] & (off == lay.str_hash_offset)] = _STR_HASH
    cause[idx] = c
    return cause


def _pagemap_at(pid: int, addrs: np.ndarray, page_size: int, procfs_root: str) -> np.ndarray:
    """Pagemap entries of ``pid`` at the (sorted, unique) page addresses; nearby pages in one read."""
    out = np.zeros(addrs.size, dtype=np.uint64)
    if addrs.size == 0:
        return out
    vpn = (addrs // np.uint64(page_size)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(vpn) > _PAGEMAP_GAP) + 1
    firsts = np.concatenate(([0], cuts))
    lasts = np.concatenate((cuts, [vpn.size])) - 1
    ranges = [(int(vpn[a]) * page_size, (int(vpn[b]) + 1) * page_size)
              for a, b in zip(firsts.tolist(), lasts.tolist())]
    with procfs.Pagemap(pid, procfs_root) as pm:
        entries, offsets = pm.read_ranges(ranges)
    span = np.repeat(np.arange(len(ranges)), np.diff(firsts.tolist() + [vpn.size]))
    out[:] = entries[offsets[span] + (vpn - vpn[firsts[span]])]
    return out


def _shared(entries: np.ndarray) -> np.ndarray:
    shared: np.ndarray = ((entries & procfs.PM_PRESENT) != 0) & ((entries & procfs.PM_EXCLUSIVE) == 0)
    return shared


ReaderFactory = Callable[[int], MemReader]


def _sources(master: int, workers: list[int], addrs: dict[int, np.ndarray], page_size: int,
             procfs_root: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per worker: (source kind per copied page, pid to read the original from, -1 for none)."""
    union = np.unique(np.concatenate([addrs[p] for p in workers])) if workers else np.zeros(0, np.uint64)
    m_entries = _pagemap_at(master, union, page_size, procfs_root)
    m_present = (m_entries & procfs.PM_PRESENT) != 0
    m_shared = _shared(m_entries)
    # the first worker whose page is still shared, per address (a worker never shares the pages
    # it copied, so this is always a sibling of the worker being attributed)
    sharer = np.full(union.size, -1, dtype=np.int64)
    for p in reversed(workers):
        try:
            sharer[_shared(_pagemap_at(p, union, page_size, procfs_root))] = p
        except ProcessGone:
            pass
    out = {}
    for p in workers:
        idx = np.searchsorted(union, addrs[p])
        src = sharer[idx]
        src[src == p] = -1  # cannot happen for copied pages; kept for a page re-shared since the scan
        kind = np.where(src >= 0, _SRC_SIBLING, _SRC_NONE).astype(np.int8)
        ms = m_shared[idx]
        kind[ms] = _SRC_MASTER
        src[ms] = master
        assumed = (kind == _SRC_NONE) & m_present[idx]
        kind[assumed] = _SRC_ASSUMED
        src[assumed] = master
        out[p] = (kind, src)
    return out


def _causes_of_worker(lay: _Layout, pid: int, pages: np.ndarray, kind: np.ndarray, src: np.ndarray,
                      page_size: int, open_reader: ReaderFactory,
                      readers: dict[int, MemReader]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    words_per_page = page_size // 8
    acc = np.zeros(_NC, dtype=np.float64)
    words = np.zeros(_NC, dtype=np.int64)

    def reader(p: int) -> MemReader:
        if p not in readers:
            readers[p] = open_reader(p)
        return readers[p]

    wr = reader(pid)
    for c in range(0, pages.size, CHUNK_PAGES):
        a = pages[c : c + CHUNK_PAGES]
        k_src = src[c : c + CHUNK_PAGES]
        mine = np.empty((a.size, words_per_page), dtype=np.uint64)
        valid = wr.read_pages(a, mine, page_size) & (k_src >= 0)
        orig = np.empty_like(mine)
        for s in np.unique(k_src[k_src >= 0]).tolist():
            sel = np.flatnonzero(k_src == s)
            whole = sel.size == a.size  # one source for the whole chunk: read in place
            buf = orig if whole else np.empty((sel.size, words_per_page), dtype=np.uint64)
            try:
                ok = reader(s).read_pages(a[sel], buf, page_size)
            except ProcessGone:
                ok = np.zeros(sel.size, dtype=bool)
            if not whole:
                orig[sel] = buf
            valid[sel] &= ok
        neq = mine != orig
        neq[~valid] = False
        rows, cols = np.nonzero(neq)
        changed = np.bincount(rows, minlength=a.size)
        acc[_UNKNOWN] += float(np.count_nonzero(~valid)) * page_size
        acc[_IDENTICAL] += float(np.count_nonzero(valid & (changed == 0))) * page_size
        if rows.size:
            waddr = a[rows] + cols.astype(np.uint64) * np.uint64(8)
            cause = _classify_words(lay, waddr)
            per_page = np.bincount(rows * _NC + cause, minlength=a.size * _NC).reshape(a.size, _NC)
            words += per_page.sum(axis=0)
            # a page's bytes are split between causes in proportion to its changed words
            hit = changed > 0
            acc += (per_page[hit] / changed[hit, None]).sum(axis=0) * page_size
    total = int(pages.size) * page_size
    causes = np.rint(acc).astype(np.int64)
    if causes.sum() != total and total:  # rounding: the largest cause absorbs the difference
        causes[int(np.argmax(causes))] += total - int(causes.sum())
    origin = np.bincount(kind, minlength=len(ORIGINALS)) * page_size
    return ({n: int(causes[i]) for i, n in enumerate(CAUSES)},
            {n: int(words[i]) for i, n in enumerate(CAUSES)},
            {n: int(origin[i]) for i, n in enumerate(ORIGINALS)})


def _default_reader(procfs_root: str) -> ReaderFactory:
    return lambda pid: MemReader(pid, procfs_root)


def by_cause(report: PageReport, hm: HeapMap, *, procfs_root: str = "/proc",
             open_reader: ReaderFactory | None = None, _lay: _Layout | None = None,
             _types: list[WorkerAttribution] | None = None) -> list[WorkerAttribution]:
    """Per worker: the by-type view plus copied bytes per cause (see the module doc).

    Raises :class:`~cowprof.memreader.MemoryAccessDenied` when process memory cannot be read
    (:func:`attribute` turns that into ``causes_error`` and keeps the by-type view).
    """
    lay = _lay or _layout(hm)
    results = _types if _types is not None else by_type(report, hm, _lay=lay)
    open_reader = open_reader or _default_reader(procfs_root)
    master = report.master.pid
    live = [w.pid for w in report.workers]
    addrs = {w.pid: _pages_of(w) for w in report.workers}
    master_id = _master_identity(master, procfs_root)
    readers: dict[int, MemReader] = {}
    try:
        sources = _sources(master, live, addrs, report.page_size, procfs_root)
        for res in results:
            kind, src = sources[res.pid]
            try:
                res.causes, res.changed_words, res.originals = _causes_of_worker(
                    lay, res.pid, addrs[res.pid], kind, src, report.page_size, open_reader, readers)
            except ProcessGone as err:  # the worker exited: its pages can no longer be read
                if err.pid == master:
                    raise
                res.causes = dict.fromkeys(CAUSES, 0) | {"unknown": res.copied_bytes}
                res.changed_words = dict.fromkeys(CAUSES, 0)
                res.originals = dict.fromkeys(ORIGINALS, 0) | {"none": res.copied_bytes}
    except ProcessGone as err:
        if err.pid == master:
            raise _master_exited(master) from None
        raise
    finally:
        for r in readers.values():
            r.close()
    # the originals read from a master that exited meanwhile are not its pages (reads of a dead
    # process return nothing): the whole by-cause view would be made up
    if _master_identity(master, procfs_root, required=False) != master_id:
        raise _master_exited(master)
    return results


def _master_identity(master: int, procfs_root: str, *,
                     required: bool = True) -> procfs.ProcessIdentity | None:
    """The master while it lives; once it is gone (or a zombie) ProcessGone, or None when not
    ``required``."""
    try:
        return procfs.ProcessIdentity.read(master, procfs_root, live=True)
    except ProcessGone:
        pass
    if required:
        raise _master_exited(master)
    return None


def _master_exited(master: int) -> ProcessGone:
    return ProcessGone(master, f"process {master} (the master) exited while the originals of the copied "
                               "pages were read from it: no attribution by cause without it")


def attribute(report: PageReport, hm: HeapMap, *, causes: bool = True, procfs_root: str = "/proc",
              open_reader: ReaderFactory | None = None, layouts: dict[str, Any] | None = None) -> Attribution:
    """By-type view of every worker, plus the by-cause view when ``causes`` and memory is readable.

    Without the rights to read process memory the result still has the by-type view and
    ``causes_error`` says what is needed. ``layouts``: a dict the caller keeps for as long as it
    attributes with the same ``hm`` (``record``): the join's sorted ranges are computed once.
    """
    t0 = time.perf_counter()
    layouts = {} if layouts is None else layouts
    lay = layouts.get("types")
    if lay is None:
        lay = layouts["types"] = _layout(hm)
    workers = by_type(report, hm, _lay=lay)
    unknown_name = getattr(hm, "unknown_name", None)  # maps read from outside (cowprof.remote)
    if unknown_name is not None:
        for w in workers:
            w.unknown_bytes = dict(w.types).get(unknown_name, 0)
            w.types = [(t, b) for t, b in w.types if t != unknown_name]
    error = None if causes else "not requested"
    if causes:
        try:
            # a changed word in memory holding no verifiable object counts as outside any record
            cause_lay = layouts.get("causes")
            if cause_lay is None:
                cause_lay = layouts["causes"] = _layout(hm.for_causes()) if hasattr(hm, "for_causes") else lay
            workers = by_cause(report, hm, procfs_root=procfs_root, open_reader=open_reader, _lay=cause_lay,
                               _types=workers)
        except MemoryAccessDenied as err:
            error = str(err)
            for w in workers:
                w.causes = w.changed_words = w.originals = None
    return Attribution(version=VERSION, master=report.master.pid, taken_at=report.taken_at,
                       page_size=report.page_size, mode=report.mode, heapmap_records=len(hm),
                       heapmap_created_at=float(hm.created_at), workers=workers, causes_error=error,
                       seconds=time.perf_counter() - t0, source=getattr(hm, "source", "heapmap"))


def heapmap_or_memory(report: PageReport, *, procfs_root: str = "/proc", heapmap_dir: str | None = None,
                      from_memory: bool | None = None) -> HeapMap:
    """The master's saved heap map, else (``from_memory`` None) or instead (True) the records read
    from its memory by :func:`cowprof.remote.heapmap_from_memory`. Raises :class:`NoAttribution`
    when there is no map and the memory cannot be read, :class:`NoHeapMap` with ``from_memory=False``."""
    master = report.master.pid
    no_map: NoHeapMap | None = None
    if not from_memory:
        try:
            return find_heapmap(master, procfs_root=procfs_root, directory=heapmap_dir)
        except NoHeapMap as err:
            if from_memory is False:
                raise
            no_map = err
    from .remote import heapmap_from_memory

    try:
        return heapmap_from_memory(report, procfs_root=procfs_root)
    except MemoryAccessDenied as err:
        why = "no heap map (the master never called cowprof.prepare_fork()) and " if no_map else ""
        raise NoAttribution(master, f"{why}finding the objects from outside needs to read the master's "
                                    f"memory: {err}") from None


def snapshot(pid: int, *, causes: bool = False, procfs_root: str = "/proc",
             heapmap_dir: str | None = None, privileged: bool | None = None,
             from_memory: bool | None = None) -> Attribution:
    """Everything ``cowprof snapshot PID --by type|cause`` needs, in one call: find the tree, scan
    the pages (keeping the copied addresses), find the heap map or read the objects from the
    master's memory (:func:`heapmap_or_memory`) and attribute them."""
    tree = find_tree(pid, procfs_root=procfs_root)
    report = scan(tree, privileged=privileged, procfs_root=procfs_root, keep_addresses=True)
    hm = heapmap_or_memory(report, procfs_root=procfs_root, heapmap_dir=heapmap_dir, from_memory=from_memory)
    return attribute(report, hm, causes=causes, procfs_root=procfs_root)
