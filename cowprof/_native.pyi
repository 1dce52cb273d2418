"""Typed stub of the native module (native/_native.c)."""
from collections.abc import Sequence
from typing import Any, TypedDict

class Info(TypedDict):
    can_walk: bool
    reason: str | None
    scheme: str | None
    untested: bool
    compiled_for: str
    has_malloc_trim: bool

def info() -> Info: ...
def trim() -> bool: ...
def write_detached(fd: int, buffers: Sequence[Any], tmp_path: str, final_path: str) -> None: ...

class HeapMapBuffer:
    """Records of one walk in a private anonymous mapping; read-only buffer protocol."""
    def __len__(self) -> int: ...
    def release(self) -> None: ...

# Present only when info()["can_walk"] is True (CPython 3.12+, GIL build, 64-bit).
def walk(
    *, immortalize: bool = True, heapmap: bool = False, gc_head: int = 16, managed_preheader: int = 16,
    hash_strings: bool = True, tag_types: bool = True, heapmap_reserve: int = 0,
) -> dict[str, Any]: ...
def is_immortal(obj: object) -> bool: ...
