"""The interpreter inside a target process, found from the outside and read-only.

:func:`find_interpreter` looks for the python binary or libpython mapped in the target, reads the
symbols it exports from the mapped file (:mod:`cowprof.remote.elf`, opened by
:func:`cowprof.procfs.open_mapped_file`: through ``map_files``, else ``/proc/PID/root`` and checked
to be the very file mapped), reads
``Py_Version`` from the target's memory and picks that version's object layout
(:data:`LAYOUTS`). The layout is then checked against the target itself: the static type objects
it exports must have the names, sizes and flags that layout predicts (``float`` is 24 bytes and not
GC, ``type`` is its own type, ...). A version without a layout, a debug or free-threaded build, or
a failed check raises :class:`UnsupportedTarget`: nothing is guessed.

:class:`Memory` reads the target's memory through :class:`~cowprof.memreader.MemReader` (never
writes, never attaches), page by page with a cache, and word arrays at many addresses at once.
"""
from __future__ import annotations

import dataclasses
import os
import re
import struct

import numpy as np

from .. import procfs
from ..errors import CowprofError
from ..memreader import ADDRESS_LIMIT, MemReader
from . import elf

__all__ = ["LAYOUTS", "Interpreter", "Layout", "Memory", "UnsupportedTarget", "find_interpreter"]

PAGE = 4096
_WORDS = PAGE // 8


class UnsupportedTarget(CowprofError):
    """The target's interpreter cannot be read from outside (unknown version, failed layout check)."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class Layout:
    """Byte offsets of what attribution reads, for one CPython minor version (64-bit, GIL build).

    From the version's headers (Include/cpython/object.h, unicodeobject.h, code.h, funcobject.h,
    internal/pycore_dict.h, pycore_obmalloc.h) and checked against live interpreters of each
    version by the test suite (tests/unit/test_remote_layout.py, with ctypes) and against the
    target by :func:`find_interpreter`.
    """

    ht_name: int  # PyHeapTypeObject.ht_name (ht_slots, ht_qualname follow)
    tp_name: int = 24
    tp_basicsize: int = 32
    tp_itemsize: int = 40
    tp_flags: int = 168
    tp_base: int = 256
    tp_dict: int = 264
    # str (PyASCIIObject / PyCompactUnicodeObject)
    str_length: int = 16
    str_hash: int = 24
    str_state: int = 32
    str_ascii_data: int = 40
    str_compact_data: int = 56
    # code objects
    co_firstlineno: int = 68  # int
    co_filename: int = 112
    co_name: int = 120
    co_qualname: int = 128
    # functions
    func_qualname: int = 40
    func_code: int = 48
    func_module: int = 104
    # dicts
    ma_keys: int = 32
    ma_values: int = 40
    dk_log2_index_bytes: int = 9
    dk_kind: int = 10
    dk_nentries: int = 24
    dk_indices: int = 32
    gc_head: int = 16  # sizeof(PyGC_Head)
    managed_preheader: int = 16  # Py_TPFLAGS_PREHEADER: 2 pointers
    # pymalloc (pycore_obmalloc.h): 32 size classes 16 bytes apart; pools of 16 KiB (radix tree
    # builds; 4 KiB otherwise: the pool header says which, see cowprof.remote.heap)
    pool_overhead: int = 48
    alignment: int = 16
    small_request_threshold: int = 512
    # 3.14+: the refcount word is {uint32 ob_refcnt, uint16 ob_overflow, uint16 ob_flags}
    split_refcount: bool = False


LAYOUTS: dict[tuple[int, int], Layout] = {
    (3, 12): Layout(ht_name=856),
    (3, 13): Layout(ht_name=856),
    (3, 14): Layout(ht_name=856, split_refcount=True),
    (3, 15): Layout(ht_name=864, split_refcount=True),
}

# type flags (Include/object.h, the same on 3.12-3.15)
TPFLAGS_MANAGED_WEAKREF = 1 << 3
TPFLAGS_MANAGED_DICT = 1 << 4
TPFLAGS_PREHEADER = TPFLAGS_MANAGED_WEAKREF | TPFLAGS_MANAGED_DICT
TPFLAGS_HEAPTYPE = 1 << 9
TPFLAGS_READY = 1 << 12
TPFLAGS_HAVE_GC = 1 << 14
TPFLAGS_LONG_SUBCLASS = 1 << 24
TPFLAGS_LIST_SUBCLASS = 1 << 25
TPFLAGS_TUPLE_SUBCLASS = 1 << 26
TPFLAGS_BYTES_SUBCLASS = 1 << 27
TPFLAGS_UNICODE_SUBCLASS = 1 << 28
TPFLAGS_DICT_SUBCLASS = 1 << 29
TPFLAGS_TYPE_SUBCLASS = 1 << 31

#: static types whose addresses the checks and the readers need (exported data symbols)
TYPE_SYMBOLS = ("PyType_Type", "PyBaseObject_Type", "PyUnicode_Type", "PyFloat_Type", "PyLong_Type",
                "PyDict_Type", "PyList_Type", "PyTuple_Type", "PySet_Type", "PyFrozenSet_Type",
                "PyBytes_Type", "PyCode_Type", "PyFunction_Type")
_SYMBOLS = frozenset(TYPE_SYMBOLS + ("Py_Version",))
# what find_interpreter checks in the target: (symbol, tp_name, tp_basicsize or None, GC?, flag bits that must be set)
_CHECKS = (
    ("PyType_Type", "type", None, True, TPFLAGS_TYPE_SUBCLASS),
    ("PyBaseObject_Type", "object", 16, False, 0),
    ("PyFloat_Type", "float", 24, False, 0),
    ("PyUnicode_Type", "str", 64, False, TPFLAGS_UNICODE_SUBCLASS),
    ("PyDict_Type", "dict", 48, True, TPFLAGS_DICT_SUBCLASS),
    ("PyList_Type", "list", 40, True, TPFLAGS_LIST_SUBCLASS),
    ("PyTuple_Type", "tuple", None, True, TPFLAGS_TUPLE_SUBCLASS),
    ("PyLong_Type", "int", None, False, TPFLAGS_LONG_SUBCLASS),
    ("PyBytes_Type", "bytes", 33, False, TPFLAGS_BYTES_SUBCLASS),
    ("PySet_Type", "set", 200, True, 0),
    ("PyCode_Type", "code", None, False, 0),
    ("PyFunction_Type", "function", None, True, 0),
)
_NAME_HINT = re.compile(r"(?:^|/)(?:lib)?python(3)\.(\d+)")


class Memory:
    """Read-only view of a process's memory: pages cached, words gathered at many addresses."""

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        self.pid = pid
        self.reader = MemReader(pid, procfs_root)
        self._pages: dict[int, np.ndarray | None] = {}

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_pages(self, pages: np.ndarray) -> None:
        """Read (and cache) the pages at the page-aligned addresses ``pages`` not read yet."""
        pages = np.unique(np.asarray(pages, dtype=np.uint64))
        missing = np.array([p for p in pages.tolist() if p not in self._pages], dtype=np.uint64)
        if missing.size == 0:
            return
        buf = np.empty((missing.size, _WORDS), dtype=np.uint64)
        ok = self.reader.read_pages(missing, buf, PAGE)
        for i, p in enumerate(missing.tolist()):
            self._pages[p] = buf[i] if ok[i] else None

    def words(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 64-bit words at the 8-aligned ``addrs``, and which could be read."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        out = np.zeros(addrs.size, dtype=np.uint64)
        ok = np.zeros(addrs.size, dtype=bool)
        if addrs.size == 0:
            return out, ok
        page = addrs & ~np.uint64(PAGE - 1)
        upages, inverse = np.unique(page, return_inverse=True)
        self.load_pages(upages)
        rows = [self._pages[p] for p in upages.tolist()]
        good = np.array([r is not None for r in rows], dtype=bool)
        table = np.stack([r if r is not None else np.zeros(_WORDS, np.uint64) for r in rows])
        idx = ((addrs - page) // np.uint64(8)).astype(np.intp)
        out[:] = table[inverse, idx]
        ok[:] = good[inverse] & (addrs % np.uint64(8) == 0)
        return out, ok

    def words_uncached(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`words` for many scattered addresses read once: the pages are not cached
        (pass every offset wanted in one call: each page is read once per call)."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        page = addrs & ~np.uint64(PAGE - 1)
        upages, inverse = np.unique(page, return_inverse=True)
        buf = np.zeros((upages.size, _WORDS), dtype=np.uint64)
        ok = self.reader.read_pages(upages, buf, PAGE) if upages.size else np.zeros(0, dtype=bool)
        idx = ((addrs - page) // np.uint64(8)).astype(np.intp)
        return buf[inverse, idx], ok[inverse] & (addrs % np.uint64(8) == 0)

    def read(self, addr: int, size: int) -> bytes | None:
        """``size`` bytes at ``addr`` (None if any of it cannot be read)."""
        if size <= 0:
            return b""
        if addr < 0 or addr + size > ADDRESS_LIMIT:  # a pointer read from memory may be anything
            return None
        first, last = addr & ~(PAGE - 1), (addr + size - 1) & ~(PAGE - 1)
        if first == last:  # the common case, without numpy's per-call cost
            if first not in self._pages:
                row = np.empty((1, _WORDS), dtype=np.uint64)
                ok = self.reader.read_pages(np.array([first], dtype=np.uint64), row, PAGE)
                self._pages[first] = row[0] if ok[0] else None
            row1 = self._pages[first]
            return None if row1 is None else row1.view(np.uint8)[addr - first : addr - first + size].tobytes()
        pages = np.arange(first, last + PAGE, PAGE, dtype=np.uint64)
        self.load_pages(pages)
        parts = []
        for p in pages.tolist():
            cached = self._pages.get(p)
            if cached is None:
                return None
            parts.append(cached.tobytes())
        data = b"".join(parts)
        return data[addr - first : addr - first + size]

    def word(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return None if data is None else struct.unpack("<Q", data)[0]

    def u32(self, addr: int) -> int | None:
        data = self.read(addr, 4)
        return None if data is None else struct.unpack("<I", data)[0]

    def cstring(self, addr: int, limit: int = 1024) -> str | None:
        """A NUL-terminated (ASCII/UTF-8) C string of at most ``limit`` bytes."""
        out = b""
        while len(out) < limit:
            chunk = self.read(addr + len(out), min(256, PAGE - ((addr + len(out)) % PAGE)))
            if chunk is None:
                return None
            end = chunk.find(b"\0")
            if end >= 0:
                return (out + chunk[:end]).decode("utf-8", "replace")
            out += chunk
        return None


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """The target's CPython: version, where its exported symbols are, and the layout to read it."""

    pid: int
    version: tuple[int, int, int]
    hexversion: int
    path: str
    layout: Layout
    symbols: dict[str, int]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def _candidates(maps: list[procfs.Mapping], exe: str) -> list[procfs.Mapping]:
    """The first mapping of each mapped file that may hold the interpreter: libpython, then the binary."""
    seen: dict[tuple[str, int], procfs.Mapping] = {}
    for m in maps:
        if m.inode and m.path.startswith("/") and (_NAME_HINT.search(m.path) or m.path == exe):
            seen.setdefault((m.path, m.inode), m)
    return sorted(seen.values(), key=lambda m: ("libpython" not in m.path, m.path))


def _runtime_address(maps: list[procfs.Mapping], path: str, inode: int, syms: elf.ElfSymbols,
                     value: int) -> int | None:
    """Where link-time address ``value`` of the file is mapped in the target."""
    off = syms.file_offset(value)
    if off is not None:
        for m in maps:
            if m.path == path and m.inode == inode and m.offset <= off < m.offset + m.size:
                return m.start + off - m.offset
    # not backed by the file (.bss): relative to the segment mapped at file offset 0
    first = min((s for s in syms.segments if s.offset == 0), key=lambda s: s.vaddr, default=None)
    base = next((m.start for m in maps if m.path == path and m.inode == inode and m.offset == 0), None)
    if first is None or base is None:
        return None
    return base - (first.vaddr & ~(PAGE - 1)) + value


def find_interpreter(pid: int, mem: Memory, procfs_root: str = "/proc") -> Interpreter:
    """The CPython interpreter of ``pid`` (see the module doc); :class:`UnsupportedTarget` if none
    can be verified."""
    maps = procfs.read_maps(pid, procfs_root)
    try:
        exe = procfs.read_link(pid, "exe", procfs_root)
    except CowprofError:
        exe = ""
    tried = []
    for m in _candidates(maps, exe):
        path, inode = m.path, m.inode
        fd = procfs.open_mapped_file(pid, m, procfs_root)
        if fd is None:
            tried.append(f"{path} (not readable)")
            continue
        try:
            syms = elf.read_symbols(fd, _SYMBOLS)
        except (elf.NotElf, OSError) as err:
            tried.append(f"{path} ({err})")
            continue
        finally:
            os.close(fd)
        if "Py_Version" not in syms.symbols:
            tried.append(f"{path} (no Py_Version)")
            continue
        addrs = {}
        for name, (value, _size) in syms.symbols.items():
            a = _runtime_address(maps, path, inode, syms, value)
            if a is not None:
                addrs[name] = a
        return _verified(pid, mem, path, addrs)
    raise UnsupportedTarget(f"process {pid}: no CPython interpreter found"
                            + (f" ({'; '.join(tried)})" if tried else " (no python binary or libpython mapped)"))


def _verified(pid: int, mem: Memory, path: str, addrs: dict[str, int]) -> Interpreter:
    hexv = mem.u32(addrs["Py_Version"]) if "Py_Version" in addrs else None
    if hexv is None:
        raise UnsupportedTarget(f"process {pid}: cannot read Py_Version of {path}")
    version = (hexv >> 24, (hexv >> 16) & 0xFF, (hexv >> 8) & 0xFF)
    hint = _NAME_HINT.search(path)
    if hint and (int(hint[1]), int(hint[2])) != version[:2]:
        raise UnsupportedTarget(f"process {pid}: {path} says Py_Version {version[0]}.{version[1]}, "
                                "its name another version")
    layout = LAYOUTS.get(version[:2])
    vs = ".".join(map(str, version))
    if layout is None:
        raise UnsupportedTarget(f"process {pid} runs CPython {vs}: attribution from outside knows the "
                                f"layouts of {', '.join(f'{v[0]}.{v[1]}' for v in LAYOUTS)} only")
    missing = [s for s in TYPE_SYMBOLS if s not in addrs]
    if missing:
        raise UnsupportedTarget(f"process {pid}: {path} does not export {', '.join(missing)}")
    for sym, name, basicsize, gc, flags in _CHECKS:
        a = addrs[sym]
        tp_name = mem.word(a + layout.tp_name)
        got = mem.cstring(tp_name) if tp_name else None
        size = mem.word(a + layout.tp_basicsize)
        tp_flags = mem.word(a + layout.tp_flags)
        ob_type = mem.word(a + 8)
        if (got != name or tp_flags is None or ob_type != addrs["PyType_Type"]
                or (basicsize is not None and size != basicsize)
                or bool(tp_flags & TPFLAGS_HAVE_GC) != gc or (tp_flags & flags) != flags):
            raise UnsupportedTarget(
                f"process {pid}: CPython {vs} at {path} does not have the expected object layout "
                f"({sym}: tp_name {got!r}, basicsize {size}); a debug, free-threaded or modified build?")
    return Interpreter(pid=pid, version=version, hexversion=hexv, path=path, layout=layout, symbols=addrs)
