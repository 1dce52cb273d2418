"""A pre-fork tree whose master has anonymous memory right after a library's .bss, for region tests.

Run by tests/integration/test_regions.py as ``python bss_prog.py LIB.so --adjacent-pages N``
(standard library only). ``LIB.so`` is a small library with a ``.bss`` area (``cowtest_bss()``,
``cowtest_bss_size()``). The master:

1. loads a copy of the library with ctypes right below an inaccessible placeholder and unmaps the
   placeholder, so the addresses after the library's last mapping (its .bss) are free. The kernel
   places a new mapping at the top of the highest free gap that fits: a copy that went into some
   other gap stays loaded (filling it) and the next copy is tried;
2. maps N private anonymous pages exactly there (``MAP_FIXED_NOREPLACE``): the kernel merges them
   with the .bss into one anonymous mapping, as it does with pymalloc arenas in real servers;
3. writes every page of both, forks ``--workers`` workers that each write one byte to every page
   of both, and prints (one line each, flushed)::

       BSS <addr> <size>          the library's .bss area (the C array)
       ADJACENT <addr> <size>     the anonymous pages after it
       READY <master_pid> <worker_pid> ...

then sleeps until its stdin closes or SIGTERM (it SIGKILLs and reaps its workers). Workers die
with the master. On failure it prints ``ERROR <why>`` and exits.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import select
import signal
import sys

from forktree_prog import die_with_parent, fork_workers, kill_children_and_exit

PAGE = mmap.PAGESIZE
MAP_FIXED_NOREPLACE = 0x100000  # Linux 4.17+
MADV_NOHUGEPAGE = 15
PROT_NONE = 0
PLACEHOLDER_PAGES = 1024

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


def fail(why: str) -> None:
    print(f"ERROR {why}", flush=True)
    os._exit(1)


def _mmap(addr: int | None, size: int, prot: int, flags: int) -> int:
    got = libc.mmap(addr, size, prot, flags, -1, 0)
    if got == MAP_FAILED or got is None:
        fail(f"mmap at {addr} failed: {os.strerror(ctypes.get_errno())}")
    return got


def _maps() -> list[tuple[int, int, int, str]]:
    """(start, end, inode, path) of each mapping of this process."""
    rows = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].strip() if len(fields) > 5 else ""
            rows.append((lo, hi, int(fields[4]), path.removesuffix(" (deleted)")))
    return rows


def _library_end(path: str) -> int:
    """End of the library's last mapping: its last file mapping, or the .bss mapping right after it."""
    rows = _maps()
    own = [i for i, r in enumerate(rows) if r[3] == path]
    if not own:
        fail(f"{path} is not mapped")
    last = own[-1]
    end = rows[last][1]
    if last + 1 < len(rows) and rows[last + 1][0] == end and rows[last + 1][2] == 0 and not rows[last + 1][3]:
        end = rows[last + 1][1]
    return end


def _load_below_free_space(path: str, free: int) -> tuple[ctypes.CDLL, int]:
    """A copy of the library loaded with ``free`` bytes of unmapped addresses after its end."""
    anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    first = ctypes.CDLL(path)
    first.cowtest_bss.restype = ctypes.c_void_p
    span = _library_end(path) - _library_start(path)
    keep = [first]  # copies and placeholders that went elsewhere stay: they fill those gaps
    for i in range(64):
        placeholder = _mmap(None, span + free, PROT_NONE, anon)
        copy = f"{path}.{os.getpid()}.{i}"
        with open(path, "rb") as src, open(copy, "xb") as dst:
            dst.write(src.read())
        lib = ctypes.CDLL(copy)  # the copy stays on disk (in the test's temporary directory)
        end = _library_end(copy)
        if end == placeholder:
            libc.munmap(placeholder, span + free)
            return lib, end
        keep += [lib, placeholder]
    fail("no copy of the library was placed below a free gap")
    raise AssertionError


def _library_start(path: str) -> int:
    return min(lo for lo, _hi, _ino, p in _maps() if p == path)


def _touch(addr: int, size: int, value: int) -> None:
    for off in range(0, size, PAGE):
        ctypes.c_char.from_address(addr + off).value = bytes([value])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--adjacent-pages", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

    size = args.adjacent_pages * PAGE
    lib, end = _load_below_free_space(os.path.abspath(args.lib), size)
    lib.cowtest_bss.restype = ctypes.c_void_p
    lib.cowtest_bss_size.restype = ctypes.c_size_t
    bss, bss_size = lib.cowtest_bss(), lib.cowtest_bss_size()
    if not bss < end <= bss + bss_size + PAGE:
        fail(f"the library's last mapping ends at {end:#x}, not after its .bss {bss:#x}+{bss_size:#x}")
    adjacent = _mmap(end, size, rw, anon | MAP_FIXED_NOREPLACE)
    if adjacent != end:
        fail(f"kernel ignored MAP_FIXED_NOREPLACE: {adjacent:#x} != {end:#x}")
    lo = bss & ~(PAGE - 1)
    libc.madvise(lo, end + size - lo, MADV_NOHUGEPAGE)  # 4 KiB pages only, whatever the THP setting
    _touch(bss, bss_size, 1)
    _touch(adjacent, size, 1)

    master = os.getpid()
    children: set[int] = set()
    signal.signal(signal.SIGTERM, lambda *_a: kill_children_and_exit(children))

    def worker(ready_w: int) -> None:
        die_with_parent(master)
        _touch(bss, bss_size, 2)
        _touch(adjacent, size, 2)
        os.write(ready_w, b"x")
        while True:
            select.select([], [], [], 0.5)
            if os.getppid() != master:
                os._exit(0)

    ready_r = fork_workers(args.workers, children, worker)
    got = b""
    while len(got) < args.workers:
        r, _, _ = select.select([ready_r], [], [], args.timeout)
        chunk = os.read(ready_r, 64) if r else b""
        if not chunk:
            print("ERROR workers not ready", flush=True)
            kill_children_and_exit(children)
        got += chunk
    print(f"BSS {bss} {bss_size}\nADJACENT {adjacent} {size}\n"
          f"READY {master} {' '.join(map(str, sorted(children)))}", flush=True)
    while True:
        r, _, _ = select.select([sys.stdin.fileno()], [], [], 0.5)
        if r and not os.read(sys.stdin.fileno(), 4096):
            kill_children_and_exit(children)


if __name__ == "__main__":
    sys.exit(main())
