"""Readers of /proc files: bytes in, numbers and numpy arrays out.

Every reader takes ``procfs_root`` (default ``/proc``) so tests can point it at fixture files.
Races with a dying process become :class:`~cowprof.errors.ProcessGone`, missing rights become
:class:`~cowprof.errors.AccessDenied`; no stray ``FileNotFoundError`` leaves this module.

What is read, and why:

* ``maps``: the mappings (cheap); the page classification only looks at writable private ones.
  ``map_files`` (or ``root`` and the path) opens a mapped file, to read a library's ELF headers.
* ``smaps_rollup``: RSS/PSS/USS/swap of a whole process in one cheap read (Linux 4.14+);
  ``smaps`` is the per-mapping fallback and the reference the tests compare against.
* ``pagemap``: 8 bytes per virtual page, read with ``os.preadv`` straight into numpy ``uint64``
  arrays, one big read per mapping chunk; decoded with vectorized bit operations.
* ``/proc/kpagecount``: how many page-table entries map each physical page (root only); read for a
  set of PFNs in a bounded number of clustered reads.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import AccessDenied, CowprofError, ProcessGone

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT: int = PAGE_SIZE.bit_length() - 1

# pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = np.uint64((1 << 55) - 1)
PM_SOFT_DIRTY = np.uint64(1 << 55)
PM_EXCLUSIVE = np.uint64(1 << 56)
PM_FILE = np.uint64(1 << 61)
PM_SWAP = np.uint64(1 << 62)
PM_PRESENT = np.uint64(1 << 63)

#: pagemap entries per read: 1 Mi entries = 8 MiB of pagemap = 4 GiB of address space.
PAGEMAP_CHUNK = 1 << 20

_MAPS_LINE = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][-sp]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)[ \t]*([^\n]*)$",
    re.MULTILINE,
)
_KB_FIELD = re.compile(rb"^([A-Za-z_]+):[ \t]+(\d+) kB$", re.MULTILINE)
#: PF_KTHREAD in the flags of /proc/PID/stat (include/linux/sched.h)
PF_KTHREAD = 0x00200000
_BTIME = re.compile(rb"^btime (\d+)$", re.MULTILINE)


def _proc_path(procfs_root: str, pid: int | None, name: str) -> str:
    return os.path.join(procfs_root, name) if pid is None else os.path.join(procfs_root, str(pid), name)


def _oserror(err: OSError, pid: int | None, path: str) -> CowprofError:
    """Translate an OSError on a /proc file into the typed error the callers expect."""
    if isinstance(err, (FileNotFoundError, ProcessLookupError)) or err.errno in (errno.ESRCH, errno.ENOENT):
        if pid is None:
            return CowprofError(f"{path} does not exist (kernel without this feature?)")
        return ProcessGone(pid)
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
        if pid is None:
            return AccessDenied(None, f"permission denied reading {path}: this needs root (CAP_SYS_ADMIN)")
        return AccessDenied(pid)
    return CowprofError(f"cannot read {path}: {err.strerror or err}")


def read_bytes(pid: int | None, name: str, procfs_root: str = "/proc") -> bytes:
    """Whole content of ``<root>/<pid>/<name>`` (or ``<root>/<name>`` when ``pid`` is None)."""
    path = _proc_path(procfs_root, pid, name)
    try:
        with open(path, "rb", buffering=0) as f:
            chunks = []
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                chunks.append(data)
    except OSError as err:
        raise _oserror(err, pid, path) from None
    return b"".join(chunks)


def check_access(pid: int, procfs_root: str = "/proc") -> None:
    """Raise AccessDenied unless we may read ``pid``'s memory layout (ptrace read access, which the
    kernel checks when ``maps`` is opened), ProcessGone if it is gone. Reads nothing."""
    path = _proc_path(procfs_root, pid, "maps")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as err:
        raise _oserror(err, pid, path) from None


# ---------------------------------------------------------------------------------------- maps


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of ``/proc/PID/maps``: ``[start, end)`` virtual addresses and what backs them."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous, "[heap]", "[stack]", "/usr/lib/...", "[anon:name]"

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def private(self) -> bool:
        return self.perms[3] == "p"

    @property
    def file_backed(self) -> bool:
        """Backed by a file (a path, not a ``[pseudo]`` name and not anonymous)."""
        return self.inode != 0 or (self.path != "" and not self.path.startswith("["))


def parse_maps(data: bytes) -> list[Mapping]:
    """Parse ``maps`` content (also the header lines of ``smaps``); malformed lines are skipped."""
    out = []
    for m in _MAPS_LINE.finditer(data):
        start, end = int(m[1], 16), int(m[2], 16)
        if end <= start:
            continue
        out.append(Mapping(start, end, m[3].decode(), int(m[4], 16), m[5].decode(), int(m[6]),
                           m[7].decode("utf-8", "surrogateescape").strip()))
    return out


def open_mapped_file(pid: int, m: Mapping, procfs_root: str = "/proc") -> int | None:
    """A read-only descriptor of the regular file mapping ``m`` of ``pid`` maps, or None.

    First ``map_files/<start>-<end>``: the very file mapped, even when it was deleted or replaced
    since (readable with CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). Else the path ``maps`` shows,
    under ``root`` (the process's own root directory: chroot, container), with the last component
    not followed if it is a symlink, and kept only when it is a regular file with the inode
    ``maps`` names (device numbers are not compared: btrfs and overlayfs show another one in
    ``maps`` than ``stat`` does). Anything that is not a regular file is never read.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    tries = [(_proc_path(procfs_root, pid, f"map_files/{m.start:x}-{m.end:x}"), flags, False)]
    if m.path.startswith("/"):
        tries.append((_proc_path(procfs_root, pid, "root") + m.path, flags | os.O_NOFOLLOW, True))
    for path, open_flags, check_inode in tries:
        try:
            fd = os.open(path, open_flags)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            continue
        if stat.S_ISREG(st.st_mode) and (not check_inode or st.st_ino == m.inode):
            return fd
        os.close(fd)
    return None


def _no_memory(pid: int) -> ProcessGone:
    return ProcessGone(pid, f"process {pid} has no user memory (it exited, or it is a kernel thread)")


def read_maps(pid: int, procfs_root: str = "/proc") -> list[Mapping]:
    """Mappings of a process, in address order. An empty map (zombie) raises ProcessGone."""
    maps = parse_maps(read_bytes(pid, "maps", procfs_root))
    if not maps:
        raise _no_memory(pid)
    return maps


# ------------------------------------------------------------------------------ smaps, rollup


@dataclass(frozen=True, slots=True)
class MemCounters:
    """Memory counters of ``smaps``/``smaps_rollup`` in bytes (absent fields are 0)."""

    rss: int = 0
    pss: int = 0
    shared_clean: int = 0
    shared_dirty: int = 0
    private_clean: int = 0
    private_dirty: int = 0
    anonymous: int = 0
    swap: int = 0
    swap_pss: int = 0

    @property
    def uss(self) -> int:
        """Unique set size: pages mapped by this process only (private clean + private dirty)."""
        return self.private_clean + self.private_dirty


_FIELDS = {
    b"Rss": "rss", b"Pss": "pss", b"Shared_Clean": "shared_clean", b"Shared_Dirty": "shared_dirty",
    b"Private_Clean": "private_clean", b"Private_Dirty": "private_dirty", b"Anonymous": "anonymous",
    b"Swap": "swap", b"SwapPss": "swap_pss",
}


def parse_counters(data: bytes) -> MemCounters:
    """Sum the known ``Name: N kB`` fields of a block (unknown and malformed lines are ignored)."""
    vals: dict[str, int] = {}
    for m in _KB_FIELD.finditer(data):
        name = _FIELDS.get(m[1])
        if name is not None:
            vals[name] = vals.get(name, 0) + int(m[2]) * 1024
    return MemCounters(**vals)


def read_smaps_rollup(pid: int, procfs_root: str = "/proc") -> MemCounters:
    """Whole-process counters from ``smaps_rollup``; falls back to summing ``smaps`` if absent."""
    path = _proc_path(procfs_root, pid, "smaps_rollup")
    try:
        data = read_bytes(pid, "smaps_rollup", procfs_root)
    except ProcessGone:
        if os.path.exists(_proc_path(procfs_root, pid, "")) and not os.path.exists(path):
            return _sum(c for _m, c in read_smaps(pid, procfs_root))  # kernel < 4.14
        raise
    if b"Rss:" not in data:
        raise _no_memory(pid)
    return parse_counters(data)


def _sum(counters: Iterator[MemCounters]) -> MemCounters:
    tot: dict[str, int] = dict.fromkeys(_FIELDS.values(), 0)
    for c in counters:
        for k in tot:
            tot[k] += getattr(c, k)
    return MemCounters(**tot)


@dataclass(frozen=True, slots=True)
class SmapsEntry:
    """A mapping of ``smaps`` with its counters."""

    mapping: Mapping
    counters: MemCounters = field(default_factory=MemCounters)


def parse_smaps(data: bytes) -> list[SmapsEntry]:
    """Parse full ``smaps`` content into (mapping, counters) per mapping; tolerates truncation."""
    heads = list(_MAPS_LINE.finditer(data))
    out = []
    for i, h in enumerate(heads):
        maps = parse_maps(h[0])
        if not maps:
            continue
        body = data[h.end() : heads[i + 1].start() if i + 1 < len(heads) else len(data)]
        out.append(SmapsEntry(maps[0], parse_counters(body)))
    return out


def read_smaps(pid: int, procfs_root: str = "/proc") -> list[tuple[Mapping, MemCounters]]:
    """Per-mapping counters of ``/proc/PID/smaps`` (expensive for big processes: MBs of text)."""
    entries = parse_smaps(read_bytes(pid, "smaps", procfs_root))
    if not entries:
        raise _no_memory(pid)
    return [(e.mapping, e.counters) for e in entries]


# ----------------------------------------------------------------------------------- stat


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of ``/proc/PID/stat`` cowprof uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    starttime_ticks: int
    start_stack: int  # 0 without ptrace read access
    start_brk: int  # 0 without ptrace read access
    minflt: int = 0  # page faults served without I/O (copy-on-write copies among them)
    majflt: int = 0  # page faults that needed I/O (swap-in, file reads)
    vsize: int = 0  # bytes of address space
    rss_pages: int = 0  # resident pages
    flags: int = 0  # the kernel's PF_* flags of the task

    @property
    def kernel_thread(self) -> bool:
        """A kernel thread (kthreadd and its children): no user memory, never a Python server."""
        return bool(self.flags & PF_KTHREAD)

    @property
    def memory_state(self) -> tuple[int, int, int, int, int]:
        """What changes whenever the process's page tables change: start time (a reused PID), both
        fault counters (every copy-on-write copy and every new page is a fault), address-space size
        and resident pages (unmapping and swapping out are not faults)."""
        return (self.starttime_ticks, self.minflt, self.majflt, self.vsize, self.rss_pages)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def parse_stat(pid: int, data: bytes) -> Stat:
    """Parse ``stat`` content. ``comm`` may hold spaces and parentheses, but at most 15 bytes, so
    the fields start after the *last* ')'."""
    lpar, rpar = data.find(b"("), data.rfind(b")")
    rest = data[rpar + 1 :].split() if 0 <= lpar < rpar else []
    if not rest:
        raise ProcessGone(pid, f"process {pid}: unreadable /proc stat (exited?)")
    # rest[0] is field 3 (state); field N is rest[N - 3]

    def f(n: int) -> int:
        try:
            return int(rest[n - 3])
        except (IndexError, ValueError):
            return 0

    return Stat(pid, data[lpar + 1 : rpar].decode(errors="replace"), rest[0].decode(errors="replace"),
                f(4), f(22), f(28), f(47), f(10), f(12), f(23), f(24), f(9))


def read_stat(pid: int, procfs_root: str = "/proc") -> Stat:
    """``/proc/PID/stat`` of a process."""
    return parse_stat(pid, read_bytes(pid, "stat", procfs_root))


def boot_time(procfs_root: str = "/proc") -> float:
    """System boot time (unix seconds) from ``/proc/stat``."""
    m = _BTIME.search(read_bytes(None, "stat", procfs_root))
    return float(m[1]) if m else 0.0


def start_time(pid: int, procfs_root: str = "/proc") -> float:
    """Process start time in unix seconds (boot time + starttime ticks)."""
    return boot_time(procfs_root) + read_stat(pid, procfs_root).starttime_ticks / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------- pagemap


class Pagemap:
    """An open ``/proc/PID/pagemap``; ``read(start, end)`` returns the entries of a range.

    Opening checks the rights once (the PFN bits depend on the opener's CAP_SYS_ADMIN); a read that
    returns nothing means the process's memory is gone (it exited): :class:`ProcessGone`.
    """

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        self.pid = pid
        self.path = _proc_path(procfs_root, pid, "pagemap")
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise _oserror(err, pid, self.path) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pagemap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (contiguous uint64) with the entries of the pages from address ``start``."""
        view = memoryview(out).cast("B")
        total = len(view)
        done = 0
        offset = (start >> PAGE_SHIFT) * 8
        while done < total:
            want = min(total - done, PAGEMAP_CHUNK * 8)
            try:
                got = os.preadv(self.fd, [view[done : done + want]], offset + done)
            except OSError as err:
                raise _oserror(err, self.pid, self.path) from None
            if got <= 0:  # the kernel returns 0 once the mm is gone
                raise ProcessGone(self.pid)
            done += got  # a multiple of 8: the kernel rejects unaligned pagemap reads

    def readv(self, buffers: list[memoryview], offset: int) -> int:
        """One ``preadv`` of the entries from byte ``offset`` of the file into ``buffers``; returns
        the bytes read (0 once the process's memory is gone)."""
        try:
            return os.preadv(self.fd, buffers, offset)
        except OSError as err:
            raise _oserror(err, self.pid, self.path) from None

    def read(self, start: int, end: int) -> np.ndarray:
        """Entries (uint64) of the pages covering ``[start, end)``."""
        n = (end - start + PAGE_SIZE - 1) >> PAGE_SHIFT
        out = np.empty(n, dtype=np.uint64)
        if n:
            self.read_into(out, start)
        return out

    def read_ranges(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Entries of several ranges concatenated into one array, plus the offset of each range."""
        counts = np.fromiter(((e - s) >> PAGE_SHIFT for s, e in ranges), dtype=np.int64, count=len(ranges))
        offsets = np.zeros(len(ranges) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint64)
        for (s, _e), o, n in zip(ranges, offsets[:-1].tolist(), counts.tolist()):
            if n:
                self.read_into(out[o : o + n], s)
        return out, offsets


def read_pagemap(pid: int, start: int, end: int, procfs_root: str = "/proc") -> np.ndarray:
    """Pagemap entries of ``[start, end)`` of a process (one open, big reads)."""
    with Pagemap(pid, procfs_root) as pm:
        return pm.read(start, end)


@dataclass(frozen=True, slots=True)
class PageBits:
    """Decoded pagemap entries: one boolean/int array per field, same length as the input."""

    present: np.ndarray
    swapped: np.ndarray
    file: np.ndarray
    exclusive: np.ndarray
    pfn: np.ndarray  # uint64, 0 when not present or not visible (unprivileged)


def decode(entries: np.ndarray) -> PageBits:
    """Vectorized decoding of pagemap entries."""
    present = (entries & PM_PRESENT) != 0
    return PageBits(
        present=present,
        swapped=(entries & PM_SWAP) != 0,
        file=(entries & PM_FILE) != 0,
        exclusive=(entries & PM_EXCLUSIVE) != 0,
        pfn=np.where(present, entries & PM_PFN_MASK, np.uint64(0)),
    )


# ----------------------------------------------------------------------------- kpagecount

#: at most this many separate reads of kpagecount per call (clusters of nearby PFNs are merged)
KPAGECOUNT_MAX_READS = 4096
_KPAGECOUNT_GAP = 32  # a read costs about as much as ~30 PFNs of kpagecount


def kpagecount_readable(procfs_root: str = "/proc") -> bool:
    """True when ``/proc/kpagecount`` can be read (root with CAP_SYS_ADMIN)."""
    try:
        fd = os.open(os.path.join(procfs_root, "kpagecount"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return len(os.pread(fd, 8, 0)) == 8
    except OSError:
        return False
    finally:
        os.close(fd)


def read_kpagecount(pfns: np.ndarray, procfs_root: str = "/proc") -> np.ndarray:
    """Map count of each PFN in ``pfns`` (any order, duplicates allowed), as int64.

    Nearby PFNs are read together: the sorted PFNs are cut into clusters where the gap is large,
    with the gap threshold raised until there are at most ``KPAGECOUNT_MAX_READS`` reads. PFNs past
    the end of the file read as 0.
    """
    pfns = np.asarray(pfns, dtype=np.uint64).reshape(-1)
    if pfns.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(pfns)
    srt = pfns[order]
    gaps = np.diff(srt)
    gap = _KPAGECOUNT_GAP
    if np.count_nonzero(gaps > gap) >= KPAGECOUNT_MAX_READS:
        gap = int(np.partition(gaps, gaps.size - KPAGECOUNT_MAX_READS)[gaps.size - KPAGECOUNT_MAX_READS])
    cuts = np.flatnonzero(gaps > gap) + 1
    firsts = np.concatenate(([0], cuts))
    lo = srt[firsts].astype(np.int64)
    span = srt[np.concatenate((cuts, [srt.size])) - 1].astype(np.int64) - lo + 1
    at = np.zeros(span.size + 1, dtype=np.int64)  # where each cluster goes in one buffer
    np.cumsum(span, out=at[1:])
    buf = np.zeros(int(at[-1]), dtype=np.uint64)
    view = memoryview(buf).cast("B")
    path = os.path.join(procfs_root, "kpagecount")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _oserror(err, None, path) from None
    try:
        for first, n, dst in zip(lo.tolist(), span.tolist(), at.tolist()):
            done = 0
            while done < n * 8:
                got = os.preadv(fd, [view[dst * 8 + done : (dst + n) * 8]], first * 8 + done)
                if got <= 0:  # past the end of physical memory: the rest stays 0
                    break
                done += got
    except OSError as err:
        raise _oserror(err, None, path) from None
    finally:
        os.close(fd)
    cluster = np.repeat(np.arange(span.size), np.diff(np.concatenate((firsts, [srt.size]))))
    out = np.empty(srt.size, dtype=np.int64)
    out[order] = buf[at[cluster] + (srt.astype(np.int64) - lo[cluster])].astype(np.int64)
    return out


def pfns_visible(procfs_root: str = "/proc") -> bool:
    """True when pagemap shows PFNs to this process (CAP_SYS_ADMIN): probed on our own memory."""
    probe = np.ones(PAGE_SIZE // 8, dtype=np.uint64)  # touched: its page is present
    addr = probe.ctypes.data
    try:
        with Pagemap(os.getpid(), procfs_root) as pm:
            entry = pm.read(addr, addr + 1)
    except CowprofError:
        return False
    return bool(entry[0] & PM_PRESENT) and bool(entry[0] & PM_PFN_MASK)
