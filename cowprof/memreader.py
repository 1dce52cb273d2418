"""Read another process's memory pages through ``/proc/PID/mem``, read-only.

Attribution by cause compares the bytes of a worker's copied page with the still-shared original;
this module is the only place that reads process memory. It opens ``/proc/PID/mem`` with
``O_RDONLY`` and uses ``preadv`` straight into numpy buffers, one read per run of adjacent pages.
It never writes and never ptrace-attaches: reading through ``/proc/PID/mem`` only *checks* the
ptrace attach rights (``PTRACE_MODE_ATTACH``) when the file is opened, which is why it needs more
than the rest of cowprof (root, or the same user with Yama's ``kernel.yama.ptrace_scope`` at 0, or
``CAP_SYS_PTRACE``). Reads fault nothing in for writing, so they never trigger a copy-on-write.
"""
from __future__ import annotations

import errno
import os

import numpy as np

from . import procfs
from .errors import AccessDenied

__all__ = ["ADDRESS_LIMIT", "MAX_RUN_PAGES", "MemReader", "MemoryAccessDenied", "ptrace_requirement"]

#: at most this many adjacent pages per read (bounds a single syscall to 1 MiB with 4 KiB pages)
MAX_RUN_PAGES = 256
#: the first address ``preadv``'s (signed) offset cannot name: no user memory lies at or above it
#: (x86-64 and arm64 user space ends at 2**47 to 2**57), so a read from there is a read of nothing
ADDRESS_LIMIT = 1 << 63


def ptrace_requirement(procfs_root: str = "/proc") -> str:
    """One line saying what reading another process's memory needs on this machine."""
    scope = procfs.ptrace_scope(procfs_root)
    if os.geteuid() == 0:  # root was refused: telling root to run as root would not help
        if scope == 3:
            return "kernel.yama.ptrace_scope is 3, which forbids it even to root"
        return ("denied even as root: this process may lack CAP_SYS_PTRACE (a container dropping it?) "
                "or a security module forbids it")
    need = "run as root, or as the server's user with CAP_SYS_PTRACE"
    if scope is None or scope == 0:
        return need
    return f"{need} or with kernel.yama.ptrace_scope=0 (it is {scope})"


class MemoryAccessDenied(AccessDenied):
    """Not allowed to read ``/proc/PID/mem`` (ptrace attach rights are missing)."""

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        super().__init__(pid, f"reading the memory of process {pid} (/proc/{pid}/mem) needs ptrace "
                              f"rights: {ptrace_requirement(procfs_root)}")


class MemReader:
    """An open ``/proc/PID/mem`` (read-only); ``read_pages`` fills page rows of a numpy array."""

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        self.pid = pid
        self.path = procfs.proc_path(pid, "mem", procfs_root)
        self._errors = procfs.wrap_exceptions(pid, self.path, denied=lambda: MemoryAccessDenied(pid, procfs_root))
        self.fd = procfs.open_fd(pid, "mem", procfs_root, denied=self._errors.denied)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, buf: memoryview, addr: int) -> int:
        """Bytes read into ``buf`` from ``addr`` (short at an unmapped page or once the mm is gone)."""
        done = 0
        while done < len(buf):
            if addr + done >= ADDRESS_LIMIT:  # a bogus pointer followed: nothing to read there
                return done
            try:
                got = os.preadv(self.fd, [buf[done:]], addr + done)
            except OSError as err:
                if err.errno in (errno.EIO, errno.EFAULT):  # an unmapped page in the range
                    return done
                raise self._errors.translate(err) from None
            if got <= 0:
                return done
            done += got
        return done

    def read_pages(self, addrs: np.ndarray, out: np.ndarray, page_size: int) -> np.ndarray:
        """Read the pages at ``addrs`` (sorted, page-aligned uint64) into the rows of ``out``
        (C-contiguous, ``len(addrs)`` rows of ``page_size`` bytes, any dtype). Adjacent pages are
        read together. Returns a boolean array: False for pages that could not be read (unmapped
        since the pagemap was read), whose rows are left as they were."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        n = addrs.size
        ok = np.ones(n, dtype=bool)
        if n == 0:
            return ok
        if not out.flags.c_contiguous or out.nbytes != n * page_size:
            raise ValueError("out must be C-contiguous with one page-sized row per address")
        view = memoryview(out.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(addrs) != np.uint64(page_size)) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [n])).tolist()
        for s, e in zip(starts, ends):
            base = int(addrs[s])
            for a in range(s, e, MAX_RUN_PAGES):
                b = min(a + MAX_RUN_PAGES, e)
                lo = a * page_size
                got = self._read(view[lo : b * page_size], base + (a - s) * page_size)
                if got < (b - a) * page_size:
                    # retry page by page past the failure: only the unreadable pages are lost
                    for i in range(a + got // page_size, b):
                        page = view[i * page_size : (i + 1) * page_size]
                        if self._read(page, base + (i - s) * page_size) < page_size:
                            ok[i] = False
        return ok
