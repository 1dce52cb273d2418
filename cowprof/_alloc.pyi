# Typed stub of the native module (native/_alloc.c), checked against it by mypy.stubtest
# (scripts/check_types).
from collections.abc import Sequence
from typing import TypedDict, type_check_only

@type_check_only  # the functions return plain dicts
class FillPools(TypedDict):
    filled: bool
    reason: str | None
    filler_bytes: int
    blocks: int
    discarded_bytes: int
    avail_before: int
    avail_after: int
    empty_pools_before: int
    empty_pools_after: int
    pool_size: int
    seconds: float

@type_check_only  # the functions return plain dicts
class Stats(TypedDict):
    size_classes: list[tuple[int, int, int, int]]  # block size, pools in use, blocks in use, free blocks
    empty_pools: int
    pool_size: int
    arenas: int

def fill_pools(*, max_bytes: int, empty_pools: bool = True, discard: bool = True) -> FillPools: ...
def stats() -> Stats | None: ...

@type_check_only  # the functions return plain dicts
class FillMalloc(TypedDict):
    filled: bool
    reason: str | None
    filler_bytes: int
    chunks: int
    free_before: int
    free_after: int
    seconds: float

def fill_malloc(*, max_bytes: int) -> FillMalloc: ...

@type_check_only  # the functions return plain dicts
class BeforeForkTotals(TypedDict):
    calls: int
    pool_bytes: int
    malloc_bytes: int
    seconds: float

def fill_before_fork(*, max_bytes: int, empty_pools: bool = True, malloc: bool = True) -> None: ...
def before_fork_totals() -> BeforeForkTotals: ...

def no_hugepages(ranges: Sequence[tuple[int, int]]) -> tuple[int, int, int]: ...
