"""cowprof.elf (load extents from program headers) and procfs.open_mapped_file (which file to read).

The reader is checked on files built from the ELF layouts by tests/elfimage.py and on the real
libraries of this process, whose .bss the loader mapped where the headers say; the opener on
symlinks, FIFOs, replaced and deleted files.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import stat

import pytest
from elfimage import PT_DYNAMIC, elf_image

from cowprof import elf, pages, procfs

P = procfs.PAGE_SIZE


def _extent(tmp_path, data: bytes, name: str = "lib.so") -> elf.LoadExtent:
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return elf.read_extent(fd, P)
    finally:
        os.close(fd)


def test_extent_is_the_offset_zero_segment_to_the_furthest_memsz(tmp_path):
    # a non-PIE layout (vaddr 0x400000) whose data segment's .bss ends 7 bytes into a page
    segs = [(0, 0x400000, 0x1800, 0x1800), (0x2000, 0x402000, 0x800, 0x800),
            (0x2e10, 0x403e10, 0x200, 0x3000 + 7)]
    ext = _extent(tmp_path, elf_image(segs, e_type=2, extra=((PT_DYNAMIC, 0x2e10, 0x403e10, 0x100, 0x100),)))
    assert ext == elf.LoadExtent(0x400000, (0x403e10 + 0x3007 + P - 1) // P * P)
    assert ext.image
    # the segments' order does not matter; a header entry larger than Elf64_Phdr is allowed
    ext2 = _extent(tmp_path, elf_image(list(reversed(segs)), phentsize=64), "b.so")
    assert ext2 == ext


def test_not_an_image(tmp_path):
    assert _extent(tmp_path, b"just data, mapped privately" * 100) is elf.NOT_AN_IMAGE
    assert _extent(tmp_path, b"", "empty") is elf.NOT_AN_IMAGE
    assert _extent(tmp_path, elf_image([(0, 0, P, P)], e_type=1), "rel.o") is elf.NOT_AN_IMAGE  # ET_REL
    assert _extent(tmp_path, elf_image([(P, P, P, P)]), "no-offset-0") is elf.NOT_AN_IMAGE
    assert _extent(tmp_path, elf_image([], extra=((PT_DYNAMIC, 0, 0, 8, 8),)), "no-load") is elf.NOT_AN_IMAGE


@pytest.mark.parametrize("kwargs", [{"ei_class": 1}, {"ei_data": 2}])
def test_other_classes_and_byte_orders_are_unsupported(tmp_path, kwargs):
    with pytest.raises(elf.Unsupported):
        _extent(tmp_path, elf_image([(0, 0, P, P)], **kwargs))


@pytest.mark.parametrize("data", [
    pytest.param(elf_image([(0, 0, P, P)])[:40], id="truncated-header"),
    pytest.param(elf_image([(0, 0, P, P), (P, P, P, 2 * P)])[:64 + 56 + 10], id="truncated-phdrs"),
    pytest.param(elf_image([(0, 0, P, P)], phentsize=32), id="short-phentsize"),
    pytest.param(elf_image([(0, 0, 2 * P, P)]), id="memsz-below-filesz"),
])
def test_broken_headers_raise_value_error(tmp_path, data):
    with pytest.raises(ValueError):
        _extent(tmp_path, data)


def test_cache_reads_a_file_once_and_retries_what_it_could_not_open(tmp_path):
    elf.clear_cache()
    (tmp_path / "lib.so").write_bytes(elf_image([(0, 0, P, 3 * P)]))
    opened = []

    def opener():
        opened.append(1)
        return os.open(tmp_path / "lib.so", os.O_RDONLY)

    assert elf.cached_extent("fe:00", 1, opener, P) == elf.LoadExtent(0, 3 * P)
    assert elf.cached_extent("fe:00", 1, opener, P) == elf.LoadExtent(0, 3 * P)
    assert len(opened) == 1
    misses = []
    assert elf.cached_extent("fe:00", 2, lambda: misses.append(1), P) is None
    assert elf.cached_extent("fe:00", 2, lambda: misses.append(1), P) is None
    assert len(misses) == 2  # not cached: another scan may be allowed to open it
    (tmp_path / "32.so").write_bytes(elf_image([(0, 0, P, P)], ei_class=1))
    assert elf.cached_extent("fe:00", 3, lambda: os.open(tmp_path / "32.so", os.O_RDONLY), P) is None
    assert elf.cached_extent("fe:00", 3, lambda: pytest.fail("cached"), P) is None
    elf.clear_cache()


def _maps_of(pid: int, path: str) -> list[procfs.Mapping]:
    return [m for m in procfs.read_maps(pid) if m.path == path]


def test_real_libraries_bss_ends_where_the_headers_say():
    """The loader mapped each library's .bss: the image end the headers give lies in the anonymous
    mapping after its last file mapping (at its end, unless other memory was merged into it), or at
    its start for a library whose .bss fits in its last file page (the mapping is something else)."""
    elf.clear_cache()
    maps = procfs.read_maps(os.getpid())
    checked = []
    for prev, m in zip(maps, maps[1:]):
        if not (m.path == "" and prev.file_backed and prev.end == m.start and prev.path.endswith(".so.6")):
            continue
        first = next(x for x in maps if x.inode == prev.inode and x.dev == prev.dev and x.offset == 0)
        fd = procfs.open_mapped_file(os.getpid(), prev)
        assert fd is not None
        try:
            ext = elf.read_extent(fd, P)
        finally:
            os.close(fd)
        end = first.start - ext.first_vaddr + ext.end_vaddr
        assert m.start <= end <= m.end, (prev.path, hex(end), hex(m.start), hex(m.end))
        # without map_files (no such range there: as for a user without CAP_SYS_ADMIN), the path
        # under /proc/PID/root opens the same file
        fd = procfs.open_mapped_file(os.getpid(), prev.replace(start=prev.start + P))
        assert fd is not None
        try:
            assert elf.read_extent(fd, P) == ext
        finally:
            os.close(fd)
        checked.append((os.path.basename(prev.path), end > m.start))
    assert ("libc.so.6", True) in checked, checked  # libc has a .bss past its file


def test_open_mapped_file_by_map_files_even_when_deleted(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("map_files needs CAP_SYS_ADMIN (runs as root)")
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 2 * P)
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 2 * P, flags=mmap.MAP_PRIVATE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    os.unlink(path)
    path.write_bytes(b"replaced")  # another file at the same path
    try:
        (m,) = [x for x in procfs.read_maps(os.getpid()) if x.start == addr]
        assert m.path.endswith("(deleted)")
        fd = procfs.open_mapped_file(os.getpid(), m)
        assert fd is not None
        try:
            assert os.fstat(fd).st_ino == m.inode and os.pread(fd, 4, 0) == b"xxxx"
        finally:
            os.close(fd)
    finally:
        mm.close()


def _fake_proc(tmp_path, target: str, inode: int) -> tuple[str, procfs.Mapping]:
    """A synthetic /proc with process 7 whose root is tmp_path/"root" and a mapping of ``target``."""
    root = tmp_path / "proc"
    (root / "7").mkdir(parents=True)
    os.symlink(tmp_path / "root", root / "7" / "root")
    return str(root), procfs.Mapping(0x1000, 0x3000, "rw-p", 0, "fe:00", inode, target)


def test_open_mapped_file_by_path_checks_inode_and_type(tmp_path):
    (tmp_path / "root" / "lib").mkdir(parents=True)
    lib = tmp_path / "root" / "lib" / "libx.so"
    lib.write_bytes(b"\x7fELF")
    ino = os.stat(lib).st_ino
    root, m = _fake_proc(tmp_path, "/lib/libx.so", ino)
    fd = procfs.open_mapped_file(7, m, root)
    assert fd is not None and os.fstat(fd).st_ino == ino
    os.close(fd)
    # another inode at the path (the file was replaced): not the mapped file
    wrong = procfs.Mapping(m.start, m.end, m.perms, 0, m.dev, ino + 1, m.path)
    assert procfs.open_mapped_file(7, wrong, root) is None
    # a symlink in the last component is never followed, even to the right inode
    os.symlink(lib, tmp_path / "root" / "lib" / "link.so")
    link = procfs.Mapping(m.start, m.end, m.perms, 0, m.dev, ino, "/lib/link.so")
    assert procfs.open_mapped_file(7, link, root) is None
    # a FIFO is not opened for reading (no blocking open) and not read
    os.mkfifo(tmp_path / "root" / "lib" / "fifo")
    fifo_ino = os.stat(tmp_path / "root" / "lib" / "fifo").st_ino
    assert stat.S_ISFIFO(os.stat(tmp_path / "root" / "lib" / "fifo").st_mode)
    fifo = procfs.Mapping(m.start, m.end, m.perms, 0, m.dev, fifo_ino, "/lib/fifo")
    assert procfs.open_mapped_file(7, fifo, root) is None
    # a directory with the right inode is not a regular file either
    d_ino = os.stat(tmp_path / "root" / "lib").st_ino
    assert procfs.open_mapped_file(7, procfs.Mapping(0, P, "rw-p", 0, "fe:00", d_ino, "/lib"), root) is None


def test_region_ranges_without_readable_headers_falls_back_to_the_writable_rule(tmp_path):
    elf.clear_cache()
    root, _m = _fake_proc(tmp_path, "/lib/none.so", 1)
    maps = procfs.parse_maps(
        b"10000-12000 r-xp 00000000 fe:00 99 /lib/none.so\n"
        b"12000-13000 rw-p 00002000 fe:00 99 /lib/none.so\n"
        b"13000-16000 rw-p 00000000 00:00 0 \n"
        b"20000-21000 r--p 00000000 fe:00 98 /lib/ro.so\n"
        b"21000-22000 rw-p 00000000 00:00 0 \n")
    assert pages.region_ranges(maps, 7, root) == [
        (0x12000, 0x13000, pages.REGIONS.index("file")),
        (0x13000, 0x16000, pages.REGIONS.index("file")),  # after writable data: its .bss, as before
        (0x21000, 0x22000, pages.REGIONS.index("python")),  # after read-only text: not a .bss
    ]
