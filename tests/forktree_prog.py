"""A tiny pre-fork tree for tests: a master that fills a buffer, then forks workers that write to it.

Run by :class:`forktree.ForkTree` as ``python forktree_prog.py --workers N ...`` so that the pytest
process is never the master. Standard library only (it runs in any of the test interpreters).

Protocol (stdout, one line each, flushed):

* ``BUF <addr> <size>``: the master's private anonymous buffer (start address and length, bytes),
  filled before fork so every page is present and holds a non-zero byte pattern;
* ``WORKER <pid> <new_addr> <new_size>``: one per worker, its own fresh mapping (0 0 without one);
* ``WRITTEN <addr> ...``: the page addresses every worker wrote to (the same pages in all workers);
* ``MASTER_WRITTEN <addr> ...``: the page addresses the master wrote to after the fork;
* ``READY <master_pid> <worker_pid> ...``: all workers are ready (the last line).

Each worker writes one changed byte to each of ``--write-pages`` pages of the buffer, spread evenly
(page indexes ``i * npages // write_pages``), touches ``--new-pages`` pages of a new private
anonymous mapping, reports ready through a pipe, then sleeps. After all workers are ready the master
writes to ``--master-write-pages`` other pages of the buffer (its own post-fork divergence) before
printing READY. Everybody then sleeps until the master's stdin closes or it gets SIGTERM: the master
SIGKILLs its workers, reaps them and exits. Workers die with the master (PR_SET_PDEATHSIG, plus a
getppid() poll as a fallback). The master reaps workers killed by the test at any time (SIGCHLD).
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import select
import signal
import sys
import time
from collections.abc import Callable

PAGE = mmap.PAGESIZE
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when the master dies; exit now if it already did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def kill_children_and_exit(children: set[int]) -> None:
    """The master's shutdown: SIGKILL its own workers, reap them, exit at once."""
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    os._exit(0)


def fork_workers(count: int, children: set[int], work: Callable[[int], None]) -> int:
    """Fork ``count`` workers that each run ``work(ready_w)`` (the write end of a pipe, to say it is
    ready) and never return (a worker whose ``work`` returns or raises exits 1); their PIDs go to
    ``children``. Returns the read end of the pipe."""
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            try:
                work(ready_w)
            finally:
                os._exit(1)
        children.add(pid)
    os.close(ready_w)
    return ready_r


def _anon(size: int) -> mmap.mmap:
    """A private anonymous mapping (mmap.mmap(-1, n) alone would be MAP_SHARED: no copy-on-write)."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        # Keep the page accounting exact whatever the THP setting: 4 KiB pages only.
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return m


def _address(m: mmap.mmap) -> int:
    """Virtual address of a mapping's first byte (the ctypes view stays alive with the mapping)."""
    view = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(view)
    del view
    return addr


def _fill(m: mmap.mmap, size: int) -> None:
    """Write every page with a non-zero pattern (byte value 1..251 by MiB) so all pages are present."""
    chunk = 1 << 20
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        m[off : off + n] = bytes([(off // chunk) % 251 + 1]) * n


def _spread(npages: int, count: int, shift: int = 0) -> list[int]:
    """``count`` page indexes spread evenly over ``npages`` (optionally shifted by half a stride)."""
    if count <= 0:
        return []
    count = min(count, npages)
    stride = npages / count
    return sorted({(int(i * stride) + (int(stride / 2) if shift else 0)) % npages for i in range(count)})


def _worker(master: int, ready_w: int, buf: mmap.mmap, pages: list[int], new_pages: int,
            heap: list | None, touch_heap: bool) -> None:
    die_with_parent(master)
    for idx in pages:
        off = idx * PAGE
        buf[off] = (buf[off] ^ 0xFF) or 0x5A  # a real byte change
    new_addr = new_size = 0
    if new_pages > 0:
        new_size = new_pages * PAGE
        fresh = _anon(new_size)
        for off in range(0, new_size, PAGE):
            fresh[off] = 0x33
        new_addr = _address(fresh)
    if touch_heap and heap is not None:
        total = 0
        for item in heap:  # refcount writes: copy-on-write of the master's Python heap
            total += len(item)
    os.write(ready_w, f"{os.getpid()} {new_addr} {new_size}\n".encode())
    os.close(ready_w)
    while True:
        time.sleep(0.2)
        if os.getppid() != master:
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--master-mb", type=float, default=32)
    ap.add_argument("--write-pages", type=int, default=0)
    ap.add_argument("--new-pages", type=int, default=0)
    ap.add_argument("--master-write-pages", type=int, default=0)
    ap.add_argument("--heap-mb", type=float, default=0)
    ap.add_argument("--touch-heap", action="store_true")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)

    size = max(PAGE, int(args.master_mb * (1 << 20)) // PAGE * PAGE)
    npages = size // PAGE
    buf = _anon(size)
    _fill(buf, size)
    buf_addr = _address(buf)
    heap = None
    if args.heap_mb > 0:
        # ~100-byte str objects: pymalloc arenas full of refcounted objects
        heap = [("x%07d" % i) * 12 for i in range(int(args.heap_mb * (1 << 20) / 150))]
    write_idx = _spread(npages, args.write_pages)
    master_idx = [i for i in _spread(npages, args.master_write_pages, shift=1) if i not in set(write_idx)]

    children: set[int] = set()

    def reap(*_a: object) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    def shutdown(*_a: object) -> None:
        kill_children_and_exit(children)

    signal.signal(signal.SIGTERM, shutdown)
    master = os.getpid()
    ready_r = fork_workers(args.workers, children, lambda ready_w: _worker(
        master, ready_w, buf, write_idx, args.new_pages, heap, args.touch_heap))
    signal.signal(signal.SIGCHLD, reap)

    lines: list[bytes] = []
    pending = b""
    deadline = time.monotonic() + args.timeout
    while len(lines) < args.workers:
        left = deadline - time.monotonic()
        r, _, _ = select.select([ready_r], [], [], max(0.0, left))
        if not r:
            print(f"ERROR workers not ready after {args.timeout}s", flush=True)
            shutdown()
        data = os.read(ready_r, 4096)
        if not data:
            print("ERROR a worker died before it was ready", flush=True)
            shutdown()
        pending += data
        *done, pending = pending.split(b"\n")
        lines.extend(done)
    os.close(ready_r)

    for idx in master_idx:  # the master's own post-fork writes
        off = idx * PAGE
        buf[off] = (buf[off] ^ 0xFF) or 0x5A

    out = [f"BUF {buf_addr} {size}"]
    pids = []
    for line in lines:
        pid_s, new_addr, new_size = line.decode().split()
        pids.append(pid_s)
        out.append(f"WORKER {pid_s} {new_addr} {new_size}")
    out.append("WRITTEN " + " ".join(str(buf_addr + i * PAGE) for i in write_idx))
    out.append("MASTER_WRITTEN " + " ".join(str(buf_addr + i * PAGE) for i in master_idx))
    out.append(f"READY {master} " + " ".join(pids))
    print("\n".join(out), flush=True)

    # Sleep until stdin closes (EOF) or SIGTERM.
    while True:
        try:
            r, _, _ = select.select([sys.stdin.fileno()], [], [], 0.5)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
        reap()
        if r and not os.read(sys.stdin.fileno(), 4096):
            shutdown()


if __name__ == "__main__":
    sys.exit(main())
