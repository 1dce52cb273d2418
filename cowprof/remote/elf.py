"""Symbols and load segments of an ELF file, read-only (64-bit little-endian only).

Attribution from outside (:mod:`cowprof.remote`) finds the interpreter's data in the target through
the symbols its libpython or python binary exports (``Py_Version``, ``PyType_Type``, ...): this
module reads the section headers, ``.dynsym`` / ``.symtab`` and their string tables, and the
``PT_LOAD`` program headers, straight from the file with ``os.pread``. Nothing is executed or
mapped; a file that is not a 64-bit little-endian ELF gives :class:`NotElf`.
"""
from __future__ import annotations

import dataclasses
import os
import struct

__all__ = ["LoadSegment", "NotElf", "ElfSymbols", "read_symbols"]

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_PT_LOAD = 1
_MAX_TABLE = 256 << 20


class NotElf(ValueError):
    """Not a 64-bit little-endian ELF file (or a truncated one)."""


@dataclasses.dataclass(frozen=True)
class LoadSegment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int


@dataclasses.dataclass(frozen=True)
class ElfSymbols:
    """The wanted symbols found (name -> st_value, st_size) and the PT_LOAD segments."""

    symbols: dict[str, tuple[int, int]]
    segments: tuple[LoadSegment, ...]

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset holding link-time address ``vaddr`` (None: not in the file, e.g. .bss)."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise NotElf("truncated ELF file")
    return data


def read_symbols(fd: int, wanted: set[str] | frozenset[str]) -> ElfSymbols:
    """The defined symbols of ``wanted`` in the file open at ``fd`` (dynamic table first, then
    .symtab when present) and its PT_LOAD segments."""
    ident, _type, _mach, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum, _shstrndx = \
        _EHDR.unpack(_pread(fd, _EHDR.size, 0))
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise NotElf("not a 64-bit little-endian ELF file")
    if phentsize != _PHDR.size or shentsize != _SHDR.size or phnum > 4096 or shnum > 65535:
        raise NotElf("unexpected ELF header sizes")
    segments = []
    raw = _pread(fd, phnum * _PHDR.size, phoff)
    for i in range(phnum):
        p_type, _pf, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = _PHDR.unpack_from(raw, i * _PHDR.size)
        if p_type == _PT_LOAD:
            segments.append(LoadSegment(p_vaddr, p_offset, p_filesz, p_memsz))
    sections = [_SHDR.unpack_from(_pread(fd, shnum * _SHDR.size, shoff), i * _SHDR.size) for i in range(shnum)] \
        if shnum else []
    found: dict[str, tuple[int, int]] = {}
    for kind in (_SHT_DYNSYM, _SHT_SYMTAB):
        for _name, sh_type, _f, _addr, sh_offset, sh_size, sh_link, _info, _align, sh_entsize in sections:
            if sh_type != kind or sh_entsize != _SYM.size or sh_link >= len(sections):
                continue
            str_off, str_size = sections[sh_link][4], sections[sh_link][5]
            if sh_size > _MAX_TABLE or str_size > _MAX_TABLE:
                raise NotElf("implausibly large symbol table")
            syms = _pread(fd, sh_size, sh_offset)
            strtab = _pread(fd, str_size, str_off)
            for j in range(sh_size // _SYM.size):
                st_name, _st_info, _other, st_shndx, st_value, st_size = _SYM.unpack_from(syms, j * _SYM.size)
                if st_shndx == 0 or st_name >= len(strtab):
                    continue  # undefined (imported) symbol
                end = strtab.find(b"\0", st_name)
                name = strtab[st_name:end].decode("ascii", "replace")
                if name in wanted and name not in found:
                    found[name] = (st_value, st_size)
        if wanted <= found.keys():
            break
    return ElfSymbols(found, tuple(segments))
