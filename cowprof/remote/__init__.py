"""Attribution without cooperation: the objects on copied pages, found in the master's memory.

For a master that never imported cowprof (no heap map), :func:`heapmap_from_memory` reads the
master's memory from outside, read-only (``/proc/PID/mem``, which needs ptrace attach rights: root,
or ``CAP_SYS_PTRACE``, or the same user where Yama allows it), and builds the records a heap map
would have for the allocations on the workers' copied pages: the interpreter and its layout
(:mod:`.target`), the pymalloc pools and malloc chunks holding those pages (:mod:`.heap`,
:mod:`.chunks`) and the verified type of the object in each block (:mod:`.objects`). The result is a
:class:`~cowprof.heapmap.HeapMap` that :mod:`cowprof.attribution` joins like a saved one; the
allocated memory that holds no verifiable object is typed :data:`UNKNOWN_RECORD`.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import procfs
from ..errors import CowprofError
from ..heapmap import HeapMap
from ..pages import PageReport
from .heap import UNKNOWN, Found, find_objects
from .target import Interpreter, Memory, UnsupportedTarget, find_interpreter

__all__ = ["UNKNOWN_RECORD", "RemoteHeapMap", "UnsupportedTarget", "heapmap_from_memory", "copied_pages",
           "merge_remote"]

#: type name of the records of allocated memory holding no verifiable object
UNKNOWN_RECORD = UNKNOWN_RECORD_NAME = "(unknown memory)"


@dataclasses.dataclass
class RemoteHeapMap(HeapMap):
    """A heap map read from the master's memory (only the allocations on the pages asked for)."""

    is_buffer: np.ndarray | None = None  # no container buffers are told apart: all False
    interpreter: Interpreter | None = None
    found: Found | None = None

    unknown_name: str = UNKNOWN_RECORD_NAME

    @property
    def unknown_type(self) -> int:
        return int(self.type_names.size) - 1

    def for_causes(self) -> HeapMap:
        """The same map without the unknown records (a changed word there is allocator memory, as
        outside any record of a saved map)."""
        keep = self.type != np.uint32(self.unknown_type)
        return dataclasses.replace(self, addr=self.addr[keep], size=self.size[keep], type=self.type[keep],
                                   is_buffer=self.is_buffer[keep] if self.is_buffer is not None else None)

    @property
    def source(self) -> str:
        v = self.interpreter.version_str if self.interpreter else "?"
        return f"memory (CPython {v}, read from outside)"


def copied_pages(report: PageReport) -> np.ndarray:
    """All workers' copied page addresses (sorted, unique)."""
    parts = [np.asarray(w.copied_addrs, dtype=np.uint64) for w in report.workers if w.copied_addrs is not None]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _layout(interp: Interpreter, mem: Memory) -> dict[str, object]:
    lay = interp.layout
    basics = {}
    for name, sym in (("list", "PyList_Type"), ("dict", "PyDict_Type"), ("set", "PySet_Type"),
                      ("frozenset", "PyFrozenSet_Type")):
        size = mem.word(interp.symbols[sym] + lay.tp_basicsize)
        if size is not None:
            basics[name] = size
    return {"python": interp.version_str, "debug_build": False, "refcount_offset": 0, "refcount_size": 8,
            "str_hash_offset": lay.str_hash, "type_offset": 8, "gc_head": lay.gc_head,
            "managed_preheader": lay.managed_preheader, "block_align": lay.alignment, "basicsize": basics}


def heapmap_from_memory(report: PageReport, *, procfs_root: str = "/proc",
                        pages: np.ndarray | None = None, interpreter: Interpreter | None = None) -> RemoteHeapMap:
    """Records of the allocations on the copied pages of ``report`` (or on ``pages``), read from the
    master's memory. Raises :class:`~cowprof.memreader.MemoryAccessDenied` without the rights and
    :class:`UnsupportedTarget` when the interpreter cannot be read (see :mod:`.target`).
    ``interpreter``: the master's, found by an earlier call (``RemoteHeapMap.interpreter``)."""
    master = report.master.pid
    pages = copied_pages(report) if pages is None else np.unique(np.asarray(pages, dtype=np.uint64))
    with Memory(master, procfs_root) as mem:
        interp = interpreter or find_interpreter(master, mem, procfs_root)
        found = find_objects(mem, interp, pages, procfs.read_maps(master, procfs_root))
        layout = _layout(interp, mem)
    try:
        identity = procfs.ProcessIdentity.read(master, procfs_root)
    except CowprofError:
        identity = procfs.ProcessIdentity(master, 0, "")
    return _remote_map(master, found, interp, layout, identity.start_ticks, identity.boot_id)


def _remote_map(master: int, found: Found, interp: Interpreter, layout: dict[str, object],
                start_ticks: int, boot_id: str = "") -> RemoteHeapMap:
    names = [t.name for t in found.types] + [UNKNOWN_RECORD]
    pre = [t.preheader for t in found.types] + [0]
    typ = np.where(found.type == UNKNOWN, len(names) - 1, found.type).astype(np.uint32)
    return RemoteHeapMap(
        pid=master, start_ticks=start_ticks, boot_id=boot_id,
        created_at=time.time(), addr=found.start, size=np.minimum(found.size, 0xFFFFFFFF).astype(np.uint32),
        type=typ, type_names=np.array(names, dtype=str), type_preheader=np.array(pre, dtype=np.uint8),
        layout=layout, is_buffer=np.zeros(found.start.size, dtype=bool), interpreter=interp, found=found)


def merge_remote(old: RemoteHeapMap, new: RemoteHeapMap) -> RemoteHeapMap:
    """The records of ``old`` plus those of ``new`` (read for more pages of the same master); an
    allocation found by both (it spans old and new pages) is taken from ``new``. Types are the same
    type object when their addresses are."""
    assert old.found is not None and new.found is not None and old.interpreter is not None
    types = list(old.found.types)
    index = {t.addr: i for i, t in enumerate(types)}
    remap = np.empty(len(new.found.types), dtype=np.int64)
    for i, t in enumerate(new.found.types):
        if t.addr not in index:
            index[t.addr] = len(types)
            types.append(t)
        remap[i] = index[t.addr]
    new_type = np.where(new.found.type == UNKNOWN, UNKNOWN, remap[np.maximum(new.found.type, 0)]) \
        if new.found.type.size else new.found.type
    start = np.concatenate([new.found.start, old.found.start])
    size = np.concatenate([new.found.size, old.found.size])
    typ = np.concatenate([new_type, old.found.type])
    order = np.argsort(start, kind="stable")  # stable: new's record first at a shared address
    start, size, typ = start[order], size[order], typ[order]
    first = np.ones(start.size, dtype=bool)
    first[1:] = start[1:] != start[:-1]
    found = Found(start=start[first], size=size[first], type=typ[first], types=types,
                  pool_pages=old.found.pool_pages + new.found.pool_pages,
                  chunk_pages=old.found.chunk_pages + new.found.chunk_pages,
                  other_pages=old.found.other_pages + new.found.other_pages)
    return _remote_map(old.pid, found, old.interpreter, dict(new.layout or old.layout or {}), old.start_ticks,
                       old.boot_id)
