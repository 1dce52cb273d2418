"""Which objects sit on given pages of a process, from its allocators' own records, read-only.

* **pymalloc pools** (objects up to 512 bytes): a page lies in the 16 KiB pool at its 16 KiB-aligned
  base. The pool header (``ref.count, freeblock, nextpool, prevpool, arenaindex, szidx, nextoffset,
  maxnextoffset``, Objects/obmalloc.c) gives the block size, how far blocks were carved
  (``nextoffset``) and the free list. A page counts as a pool only when the header is consistent
  (size class < 32, ``maxnextoffset == POOL_SIZE - size``, ``nextoffset`` on a block boundary, a free
  list of distinct blocks inside the carved part ending in NULL) and the carved blocks minus the free
  ones are exactly ``ref.count``.
* **glibc malloc chunks** (bigger objects): the main heap (``[heap]``) is walked chunk by chunk from
  its start (each chunk's size field leads to the next; the walk must end exactly at the top chunk,
  else nothing of that heap is believed); a chunk is in use when the next one's PREV_INUSE bit is set
  and it is not in the main thread's tcache. Chunks of their own mapping (``mmap``, IS_MMAPPED) are
  recognised by their header at a page start.

In an allocated block or chunk the object starts after its pre-header: the block's words at 0, 16
or 32 bytes are tried as ``ob_refcnt, ob_type``; it is an object when the refcount is plausible,
``ob_type`` is a verified type (:class:`~cowprof.remote.objects.TypeTable`) and that type's
pre-header (GC header, managed dict/weakref) is exactly that offset. Allocated memory holding no such
object (container buffers, C data) is *unknown*, as is every page in memory neither allocator
accounts for; free blocks, pool headers and chunk headers hold *no object*.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import procfs
from .objects import TypeInfo, TypeTable
from .target import PAGE, Interpreter, Memory

__all__ = ["Found", "find_objects"]

POOL_SIZE = 16 << 10
_POOL_WORDS = POOL_SIZE // 8
_POOL_PAGES = POOL_SIZE // PAGE
_NCLASSES = 32
_CHUNK_POOLS = 1024  # pools read at once (16 MiB)
_PREHEADERS = (0, 16, 32)
UNKNOWN = -1


@dataclasses.dataclass
class Found:
    """Allocations on the pages: ``start``/``size`` (sorted, non-overlapping) and ``type`` (index in
    ``types``, or UNKNOWN for allocated memory holding no verifiable object)."""

    start: np.ndarray
    size: np.ndarray
    type: np.ndarray
    types: list[TypeInfo]
    pool_pages: int = 0
    chunk_pages: int = 0
    other_pages: int = 0


def plausible_refcount(words: np.ndarray, split: bool) -> np.ndarray:
    """Which 64-bit words can be the refcount word of a live object."""
    low = words & np.uint64(0xFFFFFFFF)
    ok: np.ndarray
    if split:  # {uint32 ob_refcnt, uint16 ob_overflow, uint16 ob_flags}
        ok = (low >= 1) & (((words >> np.uint64(32)) & np.uint64(0xFFFF)) == 0) & ((words >> np.uint64(48)) < 256)
    else:
        ok = (low >= 1) & (words < np.uint64(1 << 32))
    return ok


class _Acc:
    def __init__(self) -> None:
        self.start: list[np.ndarray] = []
        self.size: list[np.ndarray] = []
        self.type: list[np.ndarray] = []

    def add(self, start: np.ndarray, size: np.ndarray, typ: np.ndarray) -> None:
        self.start.append(start.astype(np.uint64))
        self.size.append(np.broadcast_to(size, start.shape).astype(np.uint64))
        self.type.append(typ.astype(np.int64))


def _identify(types: TypeTable, interp: Interpreter, words: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Type index (in ``types.infos``, or UNKNOWN) of the object in each allocation whose first 6
    words are ``words`` (n, 6) and whose size is ``size``."""
    n = words.shape[0]
    result = np.full(n, UNKNOWN, dtype=np.int64)
    if n == 0:
        return result
    split = interp.layout.split_refcount
    match = np.zeros((n, len(_PREHEADERS)), dtype=bool)
    idx = np.full((n, len(_PREHEADERS)), UNKNOWN, dtype=np.int64)
    for j, k in enumerate(_PREHEADERS):
        w = k // 8
        ok = np.flatnonzero(plausible_refcount(words[:, w], split) & (size >= k + 16) & (words[:, w + 1] != 0))
        if ok.size == 0:
            continue
        cand = words[ok, w + 1]
        types.resolve(cand)
        i, pre = types.lookup(cand)
        good = pre == k  # the type's own pre-header puts the object exactly there
        match[ok[good], j] = True
        idx[ok[good], j] = i[good]
    one = match.sum(axis=1) == 1  # ambiguous (two offsets both fit) stays unknown
    col = np.argmax(match, axis=1)
    result[one] = idx[one, col[one]]
    return result


def _pools(mem: Memory, interp: Interpreter, types: TypeTable, pages: np.ndarray, acc: _Acc) -> np.ndarray:
    """Attribute the pages that lie in valid pymalloc pools; returns the mask of those pages."""
    in_pool = np.zeros(pages.size, dtype=bool)
    bases_all = pages & ~np.uint64(POOL_SIZE - 1)
    bases, page_pool = np.unique(bases_all, return_inverse=True)
    page_slot = ((pages - bases_all) // np.uint64(PAGE)).astype(np.intp)
    for c0 in range(0, bases.size, _CHUNK_POOLS):
        b = bases[c0 : c0 + _CHUNK_POOLS]
        n = b.size
        w, valid, size, carved, free = _read_pools(mem, interp, b)
        # pages of this chunk's pools that are copied
        sel = (page_pool >= c0) & (page_pool < c0 + n)
        copied = np.zeros((n, _POOL_PAGES), dtype=bool)
        copied[page_pool[sel] - c0, page_slot[sel]] = True
        in_pool[np.flatnonzero(sel)[valid[page_pool[sel] - c0]]] = True
        types.pool_bases = np.union1d(types.pool_bases, b[valid])
        if valid.any():
            _pool_objects(interp, types, b, w, valid, size, carved, free, copied, acc)
    return in_pool


def _read_pools(mem: Memory, interp: Interpreter,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pools at bases ``b``: their words (n, _POOL_WORDS), which are valid pools (see the module
    doc), their block size, how many blocks are carved and which of those are free (n, maxblocks)."""
    lay = interp.layout
    overhead = lay.pool_overhead
    n = b.size
    buf = np.zeros((n * _POOL_PAGES, PAGE // 8), dtype=np.uint64)
    addrs = (b[:, None] + np.arange(_POOL_PAGES, dtype=np.uint64)[None, :] * np.uint64(PAGE)).reshape(-1)
    ok = mem.reader.read_pages(addrs, buf, PAGE).reshape(n, _POOL_PAGES).all(axis=1)
    w = buf.reshape(n, _POOL_WORDS)
    count = w[:, 0] & np.uint64(0xFFFFFFFF)
    szidx = w[:, 4] >> np.uint64(32)
    nextoff = w[:, 5] & np.uint64(0xFFFFFFFF)
    maxnext = w[:, 5] >> np.uint64(32)
    size = (np.minimum(szidx, _NCLASSES - 1) + np.uint64(1)) * np.uint64(lay.alignment)
    valid = ok & (szidx < _NCLASSES) & (maxnext == np.uint64(POOL_SIZE) - size) & (nextoff >= overhead) \
        & (nextoff <= np.uint64(POOL_SIZE)) & ((nextoff - np.uint64(overhead)) % size == 0) \
        & (w[:, 2] != 0) & (w[:, 3] != 0)
    carved = np.where(valid, (nextoff - np.uint64(overhead)) // size, 0).astype(np.int64)
    free = _free_blocks(w, b, valid, nextoff, size, (POOL_SIZE - overhead) // lay.alignment, overhead)
    valid &= (carved - free.sum(axis=1)) == count.astype(np.int64)
    return w, valid, size, carved, free


def _free_blocks(w: np.ndarray, b: np.ndarray, valid: np.ndarray, nextoff: np.ndarray, size: np.ndarray,
                 maxblocks: int, overhead: int) -> np.ndarray:
    """Walk every valid pool's free list at once: the free blocks (n, maxblocks); a pool whose list
    leaves the carved blocks, is misaligned, loops or does not end is no longer ``valid``."""
    n = b.size
    free = np.zeros((n, maxblocks), dtype=bool)
    cur = np.where(valid, w[:, 1], 0)  # freeblock
    rows = np.arange(n)
    for _ in range(maxblocks + 1):
        active = cur != 0
        if not active.any():
            break
        r = rows[active]
        off = cur[active] - b[active]
        good = (off >= overhead) & (off < nextoff[active]) & ((off - np.uint64(overhead)) % size[active] == 0)
        j = np.where(good, (off - np.uint64(overhead)) // size[active], 0).astype(np.intp)
        good &= ~free[r, j]  # a block twice in the list: not a free list
        valid[r[~good]] = False
        r, j, off = r[good], j[good], off[good]
        free[r, j] = True
        nxt = np.zeros(n, dtype=np.uint64)
        nxt[r] = w[r, (off // np.uint64(8)).astype(np.intp)]
        cur = np.where(valid, nxt, 0)
    else:
        valid[cur != 0] = False
    return free


def _pool_objects(interp: Interpreter, types: TypeTable, b: np.ndarray, w: np.ndarray, valid: np.ndarray,
                  size: np.ndarray, carved: np.ndarray, free: np.ndarray, copied: np.ndarray, acc: _Acc) -> None:
    """Add the allocated blocks of the valid pools that touch a copied page, with their objects, to ``acc``."""
    overhead = interp.layout.pool_overhead
    vr = np.flatnonzero(valid)
    nb = carved[vr]
    pool_of = np.repeat(vr, nb)
    jj = np.arange(int(nb.sum())) - np.repeat(np.cumsum(nb) - nb, nb)
    keep = ~free[pool_of, jj]
    pool_of, jj = pool_of[keep], jj[keep]
    bsize = size[pool_of]
    off = np.uint64(overhead) + jj.astype(np.uint64) * bsize
    first_pg = (off // np.uint64(PAGE)).astype(np.intp)
    last_pg = ((off + bsize - np.uint64(1)) // np.uint64(PAGE)).astype(np.intp)
    touch = copied[pool_of, first_pg] | copied[pool_of, last_pg]
    pool_of, off, bsize = pool_of[touch], off[touch], bsize[touch]
    wi = (off // np.uint64(8)).astype(np.intp)
    head = np.stack([w[pool_of, np.minimum(wi + k, _POOL_WORDS - 1)] for k in range(6)], axis=1)
    t = _identify(types, interp, head, bsize.astype(np.int64))
    acc.add(b[pool_of] + off, bsize, t)


def find_objects(mem: Memory, interp: Interpreter, pages: np.ndarray, maps: list[procfs.Mapping]) -> Found:
    """The allocations (and the objects in them) covering ``pages`` (sorted page addresses)."""
    pages = np.unique(np.asarray(pages, dtype=np.uint64))
    writable = np.array([(m.start, m.end) for m in maps if m.writable], dtype=np.uint64).reshape(-1, 2)
    types = TypeTable(mem, interp, writable)
    acc = _Acc()
    in_pool = _pools(mem, interp, types, pages, acc)
    rest = pages[~in_pool]
    from .chunks import malloc_chunks  # the second allocator, see chunks.py

    in_chunk = malloc_chunks(mem, interp, types, rest, maps, acc, _identify)
    infos = list(types.infos)
    if acc.start:
        start = np.concatenate(acc.start)
        size = np.concatenate(acc.size)
        typ = np.concatenate(acc.type)
        order = np.argsort(start, kind="stable")
        start, size, typ = start[order], size[order], typ[order]
        first = np.ones(start.size, dtype=bool)
        first[1:] = start[1:] != start[:-1]
        start, size, typ = start[first], size[first], typ[first]
    else:
        start = np.zeros(0, np.uint64)
        size = np.zeros(0, np.uint64)
        typ = np.zeros(0, np.int64)
    return Found(start=start, size=size, type=typ, types=infos, pool_pages=int(in_pool.sum()),
                 chunk_pages=int(in_chunk.sum()), other_pages=int(rest.size - in_chunk.sum()))
