"""cowprof.hugepages: which mappings get the MADV_NOHUGEPAGE advice (the effect on copies is in
tests/integration/test_residue_cow.py)."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re

import pytest

from cowprof import _alloc, hugepages, procfs

MAPS = b"""\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
7f0000400000-7f0000500000 rw-p 00000000 00:00 0                          [anon:cpython:pymalloc]
7f0000500000-7f0000600000 r--p 00000000 00:00 0
7f0000600000-7f0000700000 rw-s 00000000 00:01 4242                       /dev/zero (deleted)
7f0000700000-7f0000701000 rw-p 00030000 08:01 1234                       /usr/lib/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_only_anonymous_private_writable_mappings_are_advised():
    ranges = hugepages.shared_heap_ranges(procfs.parse_maps(MAPS))
    assert ranges == [(0x55d0c0000000, 0x55d0c0021000), (0x7f0000000000, 0x7f0000400000),
                      (0x7f0000400000, 0x7f0000500000)]


def _flags(start: int) -> str:
    with open(f"/proc/{os.getpid()}/smaps") as f:
        text = f.read()
    block = text[text.index(f"{start:x}-"):]
    return re.search(r"VmFlags:([^\n]*)", block).group(1)


def test_the_advice_marks_this_process_mappings_no_huge_page():
    m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.write(b"x" * (4 << 20))
        start = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert " nh" not in _flags(start)
        advice = hugepages.keep_off_shared_heap()
        assert advice.skipped is None and advice.bytes >= 4 << 20
        assert " nh" in _flags(start)
    finally:
        m.close()


def test_the_native_call_counts_refusals_and_rejects_unaligned_ranges():
    m = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(m))
    m.close()  # unmapped now: the kernel refuses the advice (ENOMEM)
    assert _alloc.no_hugepages([(start, start + mmap.PAGESIZE)]) == (0, 1, errno.ENOMEM)
    with pytest.raises(ValueError, match="not page aligned"):
        _alloc.no_hugepages([(start + 1, start + mmap.PAGESIZE)])
    with pytest.raises(ValueError, match="empty"):
        _alloc.no_hugepages([(start, start)])
