"""Leave no partly used pymalloc pool for a forked worker to allocate into.

A worker's first allocations of each size class go to the pools its master left partly used: each
one writes a shared page (the block and the pool's header), so the kernel copies a page that
holds mostly the master's objects. :func:`fill_free_blocks` runs in the master right before the
fork and allocates, and never frees, exactly the free blocks of every partly used pool (what
``sys._debugmallocstats()`` calls "avail blocks"), so the workers' allocations start in fresh
pools: pages that are the worker's own from the start and packed densely.

Cost: the free bytes of the partly used pools (measured on a stock Django master: 0.3–0.7 MB,
~1% of its heap; the sample app: see BENCHMARKS.md), spent once, never returned. The empty pools of
the arenas are not filled by default (``empty_pools=True`` does): a worker that allocates into an
empty pool writes that pool's pages whether they were the master's or fresh, so filling them
moves bytes from the *copied* to the *new* column without saving memory, and costs the master
the pages of the empty pools it never touched.

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

__all__ = ["DEFAULT_MAX_BYTES", "FillResult", "fill_free_blocks", "max_bytes_from_env"]

#: default cap of what one fill may allocate
DEFAULT_MAX_BYTES = 16 << 20
ENV_FILL = "COWPROF_FILL_FREE_BLOCKS"


@dataclass(frozen=True)
class FillResult:
    """What :func:`fill_free_blocks` did."""

    filled: bool
    skipped: str | None = None
    """Why nothing (or not everything) was filled, or None."""
    filler_bytes: int = 0
    """Bytes allocated as filler (never freed)."""
    blocks: int = 0
    free_blocks_before: int = 0
    free_blocks_after: int = 0
    empty_pools_before: int = 0
    empty_pools_after: int = 0
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
        blocks=int(r["blocks"]), free_blocks_before=int(r["avail_before"]),
        free_blocks_after=int(r["avail_after"]), empty_pools_before=int(r["empty_pools_before"]),
        empty_pools_after=int(r["empty_pools_after"]), seconds=round(float(r["seconds"]), 6),
    )
