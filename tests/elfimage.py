"""Test helper: minimal ELF files (header and program headers only) with chosen PT_LOAD segments.

Built with struct from the ELF specification's layouts (Elf64_Ehdr, Elf64_Phdr), independently of
cowprof.elf, so the reader is checked against bytes it did not write itself.
"""
from __future__ import annotations

import struct

PT_LOAD, PT_DYNAMIC = 1, 2


def elf_image(segments: list[tuple[int, int, int, int]], *, ei_class: int = 2, ei_data: int = 1,
              e_type: int = 3, phentsize: int = 56, extra: tuple[tuple[int, int, int, int, int], ...] = (),
              size: int | None = None) -> bytes:
    """An ELF64 file whose program headers are a PT_LOAD per ``(p_offset, p_vaddr, p_filesz,
    p_memsz)`` of ``segments`` and ``(p_type, p_offset, p_vaddr, p_filesz, p_memsz)`` of ``extra``,
    padded with zeros to ``size`` (default: the end of the furthest segment's file bytes)."""
    phdrs = [(PT_LOAD, *s) for s in segments] + list(extra)
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1, 0]) + bytes(8)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, 62, 1, 0, 64, 0, 0, 64, phentsize,
                       len(phdrs), 64, 0, 0)
    table = b"".join(struct.pack("<IIQQQQQQ", t, 6, off, va, va, fs, ms, 4096).ljust(phentsize, b"\0")
                     for t, off, va, fs, ms in phdrs)
    data = ehdr + table
    end = max([len(data)] + [off + fs for _t, off, _va, fs, _ms in phdrs])
    return data.ljust(end if size is None else size, b"\0")
