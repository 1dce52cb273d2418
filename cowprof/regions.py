"""Memory regions of a process: which writable private mappings are ``python``, ``heap``, ``stack``,
``file`` or ``other`` (the region keys of a page report), by name and, for the ``.bss`` of a
library, by its ELF program headers. No numpy: finding them is part of reading a process.
"""
from __future__ import annotations

from . import elf, procfs

REGIONS: tuple[str, ...] = ("python", "heap", "stack", "file", "other")
_R_PYTHON, _R_HEAP, _R_STACK, _R_FILE, _R_OTHER = range(5)


def region_of(m: procfs.Mapping) -> int:
    """Region code of a mapping by its name alone (an anonymous mapping is ``python``; see
    :func:`region_ranges` for the ``.bss`` of a library in the anonymous mapping after it)."""
    p = m.path
    if p == "[heap]":
        return _R_HEAP
    if p.startswith("[stack"):
        return _R_STACK
    if p == "" or p.startswith("[anon:"):
        return _R_PYTHON
    if m.file_backed and not p.startswith(("/dev/", "/memfd:", "/SYSV")):
        return _R_FILE
    return _R_OTHER


def region_ranges(maps: list[procfs.Mapping], pid: int, procfs_root: str = "/proc") -> list[tuple[int, int, int]]:
    """``(start, end, region code)`` of the writable private mappings of ``pid``, in address order.

    An unnamed anonymous mapping right after a file mapping starts with that file's ``.bss`` when
    the file is a loaded ELF image: the part up to the end of its last ``PT_LOAD`` segment
    (``p_vaddr + p_memsz`` from the program headers, past the load bias of the file's mapping
    with offset 0) is ``file``, the rest (memory the kernel placed next to it: pymalloc arenas,
    big allocations) ``python``. When the file's headers cannot be read, the whole mapping is
    ``file`` if the file mapping before it is writable (a library's data), else ``python``.
    """
    out: list[tuple[int, int, int]] = []
    prev: procfs.Mapping | None = None
    offset_zero: dict[tuple[str, int], procfs.Mapping] = {}  # per file, its latest mapping at offset 0
    for m in maps:
        if m.offset == 0 and m.inode:
            offset_zero[(m.dev, m.inode)] = m
        if m.writable and m.private and not m.path.startswith(("[vvar", "[vsyscall", "[vdso")):
            cut = m.start
            if m.path == "" and prev is not None and prev.end == m.start and prev.file_backed:
                bss_end = _image_end(prev, offset_zero.get((prev.dev, prev.inode)), pid, procfs_root)
                if bss_end is None:
                    cut = m.end if prev.writable else m.start
                else:
                    cut = min(max(bss_end, m.start), m.end)
            if cut > m.start:
                out.append((m.start, cut, _R_FILE))
            if cut < m.end:
                out.append((cut, m.end, region_of(m)))
        prev = m
    return out


def _image_end(m: procfs.Mapping, first: procfs.Mapping | None, pid: int, procfs_root: str) -> int | None:
    """Where the loaded image of the file ``m`` maps ends (its ``.bss`` included), ``m.end`` when
    the file is no ELF image, None when that cannot be known (unreadable file, an ELF this reader
    does not parse, no mapping at offset 0, or headers that do not describe ``m``)."""
    if first is None:
        return None
    extent = elf.cached_extent(m.dev, m.inode, lambda: procfs.open_mapped_file(pid, m, procfs_root),
                               procfs.PAGE_SIZE)
    if extent is None:
        return None
    if not extent.image:
        return m.end
    bias = first.start - extent.first_vaddr
    if not first.start <= m.start < m.end <= bias + extent.end_vaddr:
        return None  # another copy of the file, or not loaded by its headers
    return bias + extent.end_vaddr
