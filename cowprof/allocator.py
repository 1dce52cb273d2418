"""Leave no partly used pymalloc pool, and no free malloc chunk, for a forked worker to allocate into.

A worker's first allocations of each size class go to the pools its master left partly used: each
one writes a shared page (the block and the pool's header), so the kernel copies a page that
holds mostly the master's objects. :func:`fill_free_blocks` runs in the master right before the
fork and allocates, and never frees, exactly the free blocks of every partly used pool (what
``sys._debugmallocstats()`` calls "avail blocks"), so the workers' allocations start in fresh
pools: pages that are the worker's own from the start and packed densely.

Cost: the free bytes of the partly used pools (measured on a stock Django master: 0.3–0.7 MB,
~1% of its heap; the sample app: see BENCHMARKS.md), spent once, never returned. With
``empty_pools=True`` (what ``prepare_fork`` asks for) the arenas' empty pools are filled too and
the pages the filler covers whole are given back (``madvise`` DONTNEED): a worker's new pools then
come from fresh arenas, and the master keeps none of the emptied pools' pages.

:func:`fill_malloc_chunks` does the same for glibc malloc's main arena: it allocates the free
chunks ``malloc_info()`` lists and those of the per-thread cache, right after ``malloc_trim(0)``
gave back the whole pages inside them.

The native part (``cowprof._alloc``) reads the interpreter's own statistics, never an allocator
structure; when they cannot be read (no pymalloc: ``PYTHONMALLOC=malloc``, a debug build) it fills
nothing and says why.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

try:
    from cowprof import _alloc
except ImportError as exc:  # a source checkout without the build
    _alloc = None  # type: ignore[assignment]  # (checked before every use)
    _IMPORT_ERROR: str | None = f"cowprof._alloc is not built ({exc})"
else:
    _IMPORT_ERROR = None

__all__ = ["DEFAULT_MAX_BYTES", "FillResult", "MallocFillResult", "fill_free_blocks", "fill_malloc_chunks",
           "max_bytes_from_env"]

#: default cap of what one fill may allocate
DEFAULT_MAX_BYTES = 16 << 20
ENV_FILL = "COWPROF_FILL_FREE_BLOCKS"
ENV_EMPTY_POOLS = "COWPROF_FILL_EMPTY_POOLS"
ENV_MALLOC = "COWPROF_FILL_MALLOC"


@dataclass(frozen=True)
class FillResult:
    """What :func:`fill_free_blocks` did."""

    filled: bool
    skipped: str | None = None
    """Why nothing (or not everything) was filled, or None."""
    filler_bytes: int = 0
    """Bytes allocated as filler (never freed)."""
    blocks: int = 0
    discarded_bytes: int = 0
    """Bytes of pages the filler covers whole, given back to the kernel (``madvise`` DONTNEED)."""
    free_blocks_before: int = 0
    free_blocks_after: int = 0
    empty_pools_before: int = 0
    empty_pools_after: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MallocFillResult:
    """What :func:`fill_malloc_chunks` did."""

    filled: bool
    skipped: str | None = None
    """Why nothing (or not everything) was filled, or None."""
    filler_bytes: int = 0
    """Bytes of chunks allocated (never freed); their pages inside stay given back."""
    chunks: int = 0
    free_before: int = 0
    """Free bytes in the main arena's bins before (what ``malloc_info`` lists)."""
    free_after: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def max_bytes_from_env(default: int = DEFAULT_MAX_BYTES) -> int:
    """``COWPROF_FILL_FREE_BLOCKS``: ``0`` turns the fill off, a number of bytes caps it
    (suffixes K, M, G), unset or ``1`` is the default cap. Raises ValueError for anything else."""
    raw = os.environ.get(ENV_FILL, "").strip()
    if raw in ("", "1"):
        return default
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(raw[-1:].lower(), 1)
    number = raw[:-1] if scale > 1 else raw
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"{ENV_FILL} must be 0, 1 or a size in bytes (e.g. 8M), got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{ENV_FILL} must not be negative, got {raw!r}")
    return value


def fill_free_blocks(*, max_bytes: int = DEFAULT_MAX_BYTES, empty_pools: bool = False) -> FillResult:
    """Allocates the free blocks of every partly used pymalloc pool (see the module doc), spending
    at most ``max_bytes``. Call it in the master right before fork, after everything else that
    allocates; never raises for an allocator it cannot read."""
    if _alloc is None:
        return FillResult(False, _IMPORT_ERROR)
    if max_bytes <= 0:
        return FillResult(False, "turned off")
    r = _alloc.fill_pools(max_bytes=max_bytes, empty_pools=empty_pools)
    return FillResult(
        filled=bool(r["filled"]), skipped=r["reason"], filler_bytes=int(r["filler_bytes"]),
        blocks=int(r["blocks"]), discarded_bytes=int(r["discarded_bytes"]), free_blocks_before=int(r["avail_before"]),
        free_blocks_after=int(r["avail_after"]), empty_pools_before=int(r["empty_pools_before"]),
        empty_pools_after=int(r["empty_pools_after"]), seconds=round(float(r["seconds"]), 6),
    )


def fill_malloc_chunks(*, max_bytes: int = DEFAULT_MAX_BYTES) -> MallocFillResult:
    """Allocates the free chunks of glibc malloc's main arena and of its per-thread cache, spending
    at most ``max_bytes``, so that a forked worker's ``malloc`` takes fresh memory instead of the
    gaps between the master's data. Call it right after ``malloc_trim(0)``, which gave back the
    whole pages inside the free chunks: allocating them writes only their headers. Never raises;
    elsewhere than glibc 2.33+ it fills nothing and says why."""
    if _alloc is None:
        return MallocFillResult(False, _IMPORT_ERROR)
    if max_bytes <= 0:
        return MallocFillResult(False, "turned off")
    r = _alloc.fill_malloc(max_bytes=max_bytes)
    return MallocFillResult(
        filled=bool(r["filled"]), skipped=r["reason"], filler_bytes=int(r["filler_bytes"]), chunks=int(r["chunks"]),
        free_before=int(r["free_before"]), free_after=int(r["free_after"]), seconds=round(float(r["seconds"]), 6),
    )
