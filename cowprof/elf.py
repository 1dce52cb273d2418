"""How far a mapped ELF file's loaded image reaches: the end of its last ``PT_LOAD`` segment.

The loader maps each ``PT_LOAD`` segment of a library or executable from the file and, where a
segment's ``p_memsz`` exceeds its ``p_filesz`` (``.bss``), maps the rest anonymous, right after the
file's last mapping. Any other anonymous memory that the kernel placed next to it (pymalloc arenas,
big ``malloc`` blocks) is merged into the same mapping when the flags agree, so ``/proc/PID/maps``
cannot tell them apart: only the program headers say where the image ends.

Only the ELF header and the program headers are read (``os.pread`` on a descriptor the caller
opened read-only), parsed with :mod:`struct`: 64-bit little-endian ELF executables and shared
objects. Results are cached per file (device and inode as ``maps`` shows them), so repeated scans
read each file once.
"""
from __future__ import annotations

import os
import stat
import struct
import threading
from collections.abc import Callable

from ._values import Frozen, field

__all__ = ["LoadExtent", "NOT_AN_IMAGE", "Unsupported", "cached_extent", "clear_cache", "read_extent"]

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
_ELFMAG = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _EV_CURRENT = 2, 1, 1
_ET_EXEC, _ET_DYN = 2, 3
_PT_LOAD = 1
_PN_XNUM = 0xFFFF  # the real count is elsewhere (section header 0): not supported
#: files cached at most (one entry per mapped file: a big server maps a few hundred)
CACHE_SIZE = 4096


class LoadExtent(Frozen):
    """Virtual addresses, relative to the load bias, of a file's loaded image.

    ``first_vaddr``: page start of the ``PT_LOAD`` segment mapped from file offset 0 (where the
    mapping with offset 0 starts); ``end_vaddr``: page end of the highest ``p_vaddr + p_memsz``.
    ``image`` is False for a regular file that is not a loadable ELF image (data mapped privately):
    it has no ``.bss``.
    """

    __slots__ = ()
    _fields = ("first_vaddr", "end_vaddr", "image")

    def __new__(cls, first_vaddr: int, end_vaddr: int, image: bool = True) -> LoadExtent:
        return tuple.__new__(cls, (first_vaddr, end_vaddr, image))

    first_vaddr: int = field(0)
    end_vaddr: int = field(1)
    image: bool = field(2)


NOT_AN_IMAGE = LoadExtent(0, 0, image=False)


class Unsupported(Exception):
    """An ELF file this reader does not parse (32-bit, big-endian, extended program header count)."""


def read_extent(fd: int, page_size: int) -> LoadExtent:
    """The load extent of the regular file open as ``fd`` (read with ``pread``, the offset untouched).

    :data:`NOT_AN_IMAGE` for a file without the ELF magic, or an ELF file that is neither an
    executable nor a shared object or has no segment at file offset 0; :class:`Unsupported` for an
    ELF file of another class or byte order; :class:`ValueError` for a truncated or inconsistent
    one; :class:`OSError` from the reads.
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ValueError("not a regular file")
    head = os.pread(fd, _EHDR.size, 0)
    if head[:4] != _ELFMAG:
        return NOT_AN_IMAGE
    if len(head) < _EHDR.size:
        raise ValueError("truncated ELF header")
    ident, e_type, _machine, _version, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = \
        _EHDR.unpack(head)
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB:
        raise Unsupported(f"ELF class {ident[4]}, data encoding {ident[5]} (only 64-bit little-endian)")
    if ident[6] != _EV_CURRENT or e_type not in (_ET_EXEC, _ET_DYN) or phnum == 0:
        return NOT_AN_IMAGE
    if phnum == _PN_XNUM:
        raise Unsupported("extended program header count")
    if phentsize < _PHDR.size:
        raise ValueError(f"program header entries of {phentsize} bytes")
    table = os.pread(fd, phnum * phentsize, phoff)
    if len(table) < phnum * phentsize:
        raise ValueError("truncated program header table")
    mask = page_size - 1
    first = end = None
    for i in range(phnum):
        p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = \
            _PHDR.unpack_from(table, i * phentsize)
        if p_type != _PT_LOAD:
            continue
        if p_memsz < p_filesz:
            raise ValueError("a PT_LOAD segment with p_memsz < p_filesz")
        if p_offset & ~mask == 0 and first is None:
            first = p_vaddr & ~mask
        top = (p_vaddr + p_memsz + mask) & ~mask
        end = top if end is None else max(end, top)
    if first is None or end is None:
        return NOT_AN_IMAGE
    return LoadExtent(first, end)


_cache: dict[tuple[str, int], LoadExtent | None] = {}
_cache_lock = threading.Lock()  # scans read processes in threads


def cached_extent(dev: str, inode: int, open_file: Callable[[], int | None], page_size: int) -> LoadExtent | None:
    """The load extent of the file ``dev``:``inode`` (as ``/proc/PID/maps`` names it), or None when
    it cannot be known: ``open_file`` found no readable file, or the file is an ELF file this
    reader does not parse.

    ``open_file`` returns a read-only descriptor of that very file (closed here) or None; it is
    called only when the file is not cached yet. A file that could not be opened is not cached
    (another process, or a later scan, may be able to open it).
    """
    key = (dev, inode)
    if key in _cache:
        return _cache[key]
    fd = open_file()
    if fd is None:
        return None
    try:
        extent: LoadExtent | None = read_extent(fd, page_size)
    except (Unsupported, ValueError):
        extent = None
    except OSError:
        return None
    finally:
        os.close(fd)
    with _cache_lock:
        if len(_cache) >= CACHE_SIZE:
            del _cache[next(iter(_cache))]  # the oldest entry
        _cache[key] = extent
    return extent


def clear_cache() -> None:
    """Forget every cached file (tests; a file rewritten in place under the same inode)."""
    with _cache_lock:
        _cache.clear()
