# Typed stub of the native module (native/_native.c), checked against it by mypy.stubtest
# (scripts/check_types).
from typing import Any, TypedDict, type_check_only

@type_check_only  # the functions return plain dicts
class Info(TypedDict):
    can_walk: bool
    reason: str | None
    scheme: str | None
    untested: bool
    compiled_for: str
    debug_build: bool
    has_malloc_trim: bool
    immortal_refcnt: int | None
    refcount_offset: int
    refcount_size: int
    type_offset: int
    str_hash_offset: int

def info() -> Info: ...
def trim() -> bool: ...
def clear_type_cache() -> int: ...

# Present only when info()["can_walk"] is True (CPython 3.12+, GIL build, 64-bit).
def walk(
    *, immortalize: bool = True, heapmap_fd: int = -1, gc_head: int = 16, managed_preheader: int = 16,
    hash_strings: bool = True, tag_types: bool = True, new_only: bool = False, heapmap_format: int = 3,
    heapmap_copy_fd: int = -1, opcode_caches: bytes | None = None,
) -> dict[str, Any]: ...
def is_immortal(obj: object, /) -> bool: ...
def unfinalized(objects: list[Any], /) -> list[Any]: ...
def call_finalizer(obj: object, /) -> bool: ...
def functions() -> list[Any]: ...
