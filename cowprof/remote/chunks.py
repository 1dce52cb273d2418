"""glibc malloc chunks of a process, read-only: the allocations bigger than pymalloc's 512 bytes.

Chunk layout (glibc malloc/malloc.c): ``prev_size`` (8 bytes), ``size`` (8: the chunk size, a
multiple of 16, with PREV_INUSE = 1, IS_MMAPPED = 2, NON_MAIN_ARENA = 4 in its low bits), then the
user data the caller got.

* The main heap (``[heap]``) is walked from its start, chunk to chunk. Nothing of it is believed
  unless the walk ends on the top chunk at the end of the heap. A chunk is in use when the next
  chunk's PREV_INUSE bit is set, and it is not an entry of the main thread's tcache (the first chunk
  of the heap, ``tcache_perthread_struct``: 64 counts and 64 list heads, next pointers
  safe-linked; its shape is checked before it is used).
* A chunk of its own mapping (``mmap``ed, at least the mmap threshold) starts at a page boundary with
  ``prev_size`` 0 and IS_MMAPPED set; a page is in such a chunk when a page at or below it within
  the same mapping has that header and the chunk's size reaches past the page and stays inside the
  mapping.

Chunks of other threads' arenas and of other allocators are not recognised: their pages stay
unknown.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import procfs
from .objects import TypeTable
from .target import PAGE, Interpreter, Memory

__all__ = ["malloc_chunks"]

_PREV_INUSE, _IS_MMAPPED, _NON_MAIN = 1, 2, 4
_MINSIZE = 32
_WINDOW_PAGES = 256
_TCACHE_BINS = 64
_TCACHE_CHUNK = 16 + _TCACHE_BINS * 2 + _TCACHE_BINS * 8  # glibc >= 2.30: uint16 counts
_MAX_BACK_PAGES = 1 << 15  # how far below a page an mmapped chunk's header is looked for (128 MiB)
UNKNOWN = -1


def _walk_heap(mem: Memory, start: int, end: int, upto: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(chunk starts, chunk size fields) of the heap [start, end) up to address ``upto`` (and then
    straight to the top chunk, skipping), or None if it is not a consistent glibc heap."""
    starts: list[int] = []
    fields: list[int] = []
    win_lo = win_hi = 0
    win = np.zeros(0, dtype=np.uint64)
    c = start
    while True:
        if not win_lo <= c + 8 < win_hi:
            win_lo = (c + 8) & ~(PAGE - 1)
            npages = max(1, min(_WINDOW_PAGES, (end - win_lo) // PAGE))
            buf = np.zeros((npages, PAGE // 8), dtype=np.uint64)
            ok = mem.reader.read_pages(np.arange(win_lo, win_lo + npages * PAGE, PAGE, dtype=np.uint64), buf, PAGE)
            if not ok[0]:
                return None
            good = int(np.argmin(ok)) if not ok.all() else npages
            win, win_hi = buf.reshape(-1), win_lo + good * PAGE
        field = int(win[(c + 8 - win_lo) // 8])
        size = field & ~7
        if size < _MINSIZE or size % 16 or c + size > end or field & (_IS_MMAPPED | _NON_MAIN):
            return None
        starts.append(c)
        fields.append(field)
        if c + size > end - PAGE:  # the top chunk ends the heap (brk may be short of the page end)
            return np.array(starts, dtype=np.uint64), np.array(fields, dtype=np.uint64)
        c += size
        if c > upto and len(starts) > 1:
            # nothing needed past here: the rest of the heap is not read (its chunks stay unwalked)
            return np.array(starts, dtype=np.uint64), np.array(fields, dtype=np.uint64)


def _tcache_free(mem: Memory, starts: np.ndarray, sizes: np.ndarray) -> set[int]:
    """Chunk starts in the main thread's tcache (empty when its struct does not check out)."""
    if starts.size == 0 or int(sizes[0]) != (_TCACHE_CHUNK + 15) // 16 * 16:
        return set()
    user = int(starts[0]) + 16
    raw = mem.read(user, _TCACHE_BINS * 2 + _TCACHE_BINS * 8)
    if raw is None:
        return set()
    counts = np.frombuffer(raw, dtype="<u2", count=_TCACHE_BINS)
    heads = np.frombuffer(raw, dtype="<u8", count=_TCACHE_BINS, offset=_TCACHE_BINS * 2)
    known = dict(zip(starts.tolist(), sizes.tolist()))
    free: set[int] = set()
    for i in range(_TCACHE_BINS):
        e, want = int(heads[i]), 32 + 16 * i
        for _ in range(min(int(counts[i]), 4096)):
            if e == 0:
                break
            if known.get(e - 16) != want:
                return set()  # not the tcache we think it is: believe none of it
            free.add(e - 16)
            nxt = mem.word(e)
            if nxt is None:
                return set()
            e = (e >> 12) ^ nxt  # safe-linking (glibc >= 2.32); before it the pointer is plain
    return free


def _mmapped_chunk(mem: Memory, page: int, lo: int, hi: int) -> tuple[int, int] | None:
    """(start, size) of the mmapped chunk in [lo, hi) that covers ``page``, or None."""
    c = page
    stop = max(lo, page - _MAX_BACK_PAGES * PAGE)
    while c >= stop:
        head = mem.read(c, 16)
        if head is None:
            return None
        prev, field = int.from_bytes(head[:8], "little"), int.from_bytes(head[8:], "little")
        size = field & ~7
        if prev == 0 and field & 7 == _IS_MMAPPED and size % PAGE == 0 and c + size > page and c + size <= hi:
            return c, size
        c -= PAGE
    return None


Identify = Callable[[TypeTable, Interpreter, np.ndarray, np.ndarray], np.ndarray]


def _add_chunks(mem: Memory, interp: Interpreter, types: TypeTable, user: np.ndarray, usable: np.ndarray,
                acc: object, identify: Identify) -> None:
    head = np.stack([mem.words(user + np.uint64(8 * k))[0] for k in range(6)], axis=1)
    t = identify(types, interp, head, usable.astype(np.int64))
    acc.add(user, usable, t)  # type: ignore[attr-defined]


def malloc_chunks(mem: Memory, interp: Interpreter, types: TypeTable, pages: np.ndarray,
                  maps: list[procfs.Mapping], acc: object, identify: Identify) -> np.ndarray:
    """Attribute the pages that lie in glibc chunks (see the module doc); returns their mask.
    Pages in no recognised allocation get an UNKNOWN record of the whole page."""
    done = np.zeros(pages.size, dtype=bool)
    ps = np.uint64(PAGE)
    heap = next((m for m in maps if m.path == "[heap]"), None)
    if heap is not None:
        sel = np.flatnonzero((pages >= heap.start) & (pages < heap.end))
        walked = _walk_heap(mem, heap.start, heap.end, int(pages[sel].max()) + PAGE) if sel.size else None
        if walked is not None:
            starts, fields = walked
            sizes = fields & ~np.uint64(7)
            ends = starts + sizes
            in_use = np.zeros(starts.size, dtype=bool)
            in_use[:-1] = (fields[1:] & np.uint64(_PREV_INUSE)) != 0
            tfree = _tcache_free(mem, starts, sizes)
            if tfree:
                in_use &= ~np.isin(starts, np.fromiter(tfree, dtype=np.uint64))
            covered = pages[sel] + ps <= ends[-1]
            sel = sel[covered]
            done[sel] = True
            # chunks overlapping a copied page: from the chunk holding the page start to the one
            # holding its end
            p = pages[sel]
            lo = np.searchsorted(ends, p, side="right")
            hi = np.searchsorted(starts, p + ps, side="left")
            cnt = np.maximum(hi - lo, 0)
            idx = np.unique(np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)))
            idx = idx[in_use[idx]]
            if idx.size:
                _add_chunks(mem, interp, types, starts[idx] + np.uint64(16), sizes[idx] - np.uint64(16), acc,
                            identify)
    # mmapped chunks in anonymous private writable mappings
    found: list[tuple[int, int]] = []
    anon = [m for m in maps if m.writable and m.private and not m.file_backed and m.path not in ("[heap]", "[stack]")]
    starts_m = np.array([m.start for m in anon], dtype=np.uint64)
    for i in np.flatnonzero(~done).tolist():
        p = int(pages[i])
        if found and found[-1][0] <= p < found[-1][0] + found[-1][1]:
            done[i] = True
            continue
        k = int(np.searchsorted(starts_m, np.uint64(p), side="right")) - 1
        if k < 0 or p >= anon[k].end:
            continue
        chunk = _mmapped_chunk(mem, p, anon[k].start, anon[k].end)
        if chunk is not None:
            found.append(chunk)
            done[i] = True
    if found:
        c = np.array(sorted(set(found)), dtype=np.uint64)
        _add_chunks(mem, interp, types, c[:, 0] + np.uint64(16), c[:, 1] - np.uint64(16), acc, identify)
    rest = pages[~done]
    if rest.size:
        acc.add(rest, np.full(rest.size, PAGE, dtype=np.uint64), np.full(rest.size, UNKNOWN))  # type: ignore[attr-defined]
    return done
