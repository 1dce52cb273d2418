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

:func:`fill_all` runs the three in the order the fork needs (pools, ``malloc_trim``, malloc's
chunks), with the environment's switches: ``prepare_fork`` and the hot-code relocation both use it.

Between ``prepare_fork`` and a fork the master keeps allocating and freeing (gunicorn's arbiter
builds each worker's object right before forking it; a pool's master forks its workers one by one),
so the pools and chunks it used since are partly used again when a worker is forked:
:func:`fill_before_every_fork` fills them once more right before each ``os.fork()`` of this
process (``os.register_at_fork``), in C, allocating no object after the fill. Opt-in
(``COWPROF_FILL_BEFORE_FORK=1``): it helps a master that frees much between preparing and forking
(a child copies ~190 instead of ~3,400 pages in the test), but on a stock Django master under
gunicorn each worker copied 0.1–0.3 MiB more with it and the master held 0.3–2 MiB more (its
fresh pools' untouched pages get touched by the filler; BENCHMARKS.md).

The native part (``cowprof._alloc``) reads the interpreter's own statistics, never an allocator
structure; when they cannot be read (no pymalloc: ``PYTHONMALLOC=malloc``, a debug build) it fills
nothing and says why.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from cowprof import _env

try:
    from cowprof import _alloc
except ImportError as exc:  # a source checkout without the build
    _alloc = None  # type: ignore[assignment]  # (checked before every use)
    _IMPORT_ERROR: str | None = f"cowprof._alloc is not built ({exc})"
else:
    _IMPORT_ERROR = None

__all__ = ["DEFAULT_MAX_BYTES", "AllocatorFill", "FillResult", "MallocFillResult", "before_fork_totals", "fill_all",
           "fill_before_every_fork", "fill_free_blocks", "fill_malloc_chunks", "max_bytes_from_env"]

#: default cap of what one fill may allocate
DEFAULT_MAX_BYTES = 16 << 20
ENV_FILL = "COWPROF_FILL_FREE_BLOCKS"
ENV_EMPTY_POOLS = "COWPROF_FILL_EMPTY_POOLS"
ENV_MALLOC = "COWPROF_FILL_MALLOC"
ENV_BEFORE_FORK = "COWPROF_FILL_BEFORE_FORK"


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


@dataclass(frozen=True)
class AllocatorFill:
    """What :func:`fill_all` did, step by step."""

    pools: FillResult
    trimmed: bool
    """Whether ``malloc_trim`` released memory."""
    malloc: MallocFillResult
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of each step: ``fill`` (pools), ``trim``, ``fill_malloc``."""


def _cap(request: bool | int) -> int:
    """The cap a fill request means, the environment winning (a bad value warns, keeps the request)."""
    cap = DEFAULT_MAX_BYTES if request is True else int(request)
    if os.environ.get(ENV_FILL, "").strip():
        try:
            cap = max_bytes_from_env()
        except ValueError as err:
            warnings.warn(f"cowprof: {err}; using the default", RuntimeWarning, stacklevel=3)
    return cap


def fill_all(request: bool | int = True, *, trim: bool = True) -> AllocatorFill:
    """Leaves no free pool block or malloc chunk: fills the pymalloc pools (with the empty pools
    unless ``COWPROF_FILL_EMPTY_POOLS=0``), runs ``malloc_trim(0)`` (``trim``), then fills malloc's
    free chunks (unless ``COWPROF_FILL_MALLOC=0``). ``request``: ``True`` caps each fill at
    :data:`DEFAULT_MAX_BYTES`, a number at that many bytes, ``False`` fills nothing;
    ``COWPROF_FILL_FREE_BLOCKS`` wins (a bad value warns and keeps the request). Never raises."""
    cap = _cap(request)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    pools = fill_free_blocks(max_bytes=cap, empty_pools=_env.flag(ENV_EMPTY_POOLS, True))
    t = _phase(phases, "fill", t)
    trimmed = bool(_trim()) if trim else False
    t = _phase(phases, "trim", t)
    malloc = fill_malloc_chunks(max_bytes=cap if _env.flag(ENV_MALLOC, True) else 0)
    _phase(phases, "fill_malloc", t)
    return AllocatorFill(pools, trimmed, malloc, phases)


def _trim() -> int:
    try:
        from cowprof import _native
    except ImportError:  # a source checkout without the build: the fills say so themselves
        return 0
    return int(_native.trim())


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] = now - since
    return now


#: what the at-fork callback fills in this process: (pid, cap, empty pools, malloc), or None
_before_fork: list[tuple[int, int, bool, bool] | None] = [None]


def fill_before_every_fork(request: bool | int = True, *, enabled: bool = False) -> str | None:
    """From now on, right before each ``os.fork()`` of this process (not of its children), fills the
    pools and malloc chunks used since (see the module doc), with the cap and switches of
    :func:`fill_all`, when ``COWPROF_FILL_BEFORE_FORK=1`` or ``enabled`` (the environment wins).
    Calling it again updates the settings. Returns None, or why it is off."""
    cap = _cap(request)
    if _alloc is None:
        return _IMPORT_ERROR
    if cap <= 0 or not _env.flag(ENV_BEFORE_FORK, enabled):
        _before_fork[0] = None
        return "turned off"
    if _before_fork[0] is None and not _registered:
        os.register_at_fork(before=_fill_now)
        _registered.append(True)
    _before_fork[0] = (os.getpid(), cap, _env.flag(ENV_EMPTY_POOLS, True), _env.flag(ENV_MALLOC, True))
    return None


_registered: list[bool] = []  # once per process: register_at_fork callbacks cannot be removed


def _fill_now() -> None:
    armed = _before_fork[0]
    if armed is None or armed[0] != os.getpid() or _alloc is None:
        return
    try:
        _alloc.fill_before_fork(max_bytes=armed[1], empty_pools=armed[2], malloc=armed[3])
    except Exception:  # noqa: BLE001  # never fail a fork; the totals show whether it ran
        pass


def before_fork_totals() -> dict[str, Any]:
    """What the fills before forks did in this process so far (and its parent, before the fork):
    calls, pool_bytes, malloc_bytes, seconds."""
    return dict(_alloc.before_fork_totals()) if _alloc is not None else {"calls": 0, "pool_bytes": 0,
                                                                          "malloc_bytes": 0, "seconds": 0.0}
