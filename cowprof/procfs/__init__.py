"""Readers of /proc files: bytes in, numbers and numpy arrays out.

Every read of /proc in cowprof goes through this package; every reader takes ``procfs_root``
(default ``/proc``) so tests can point it at fixture files. Races with a dying process become
:class:`~cowprof.errors.ProcessGone`, missing rights :class:`~cowprof.errors.AccessDenied`: one
translator, :class:`wrap_exceptions` (psutil's ``_pslinux.wrap_exceptions`` is the model), turns
every ``OSError`` of a /proc file into those, so no stray ``FileNotFoundError`` leaves this module.
A process at one point in time (a PID is reused once it exits) is a :class:`ProcessIdentity`.

This module reads the text files and imports no numpy (finding a tree needs none); the binary
readers (pagemap, kpagecount) are :mod:`cowprof.procfs.pagemap`, whose names this module also
offers (``procfs.Pagemap``, ``procfs.read_kpagecount``, ``procfs.PM_PRESENT``...), loading it on
first use.

What is read, and why:

* ``maps``: the mappings (cheap); the page classification only looks at writable private ones.
  ``map_files`` (or ``root`` and the path) opens a mapped file, to read a library's ELF headers.
* ``smaps_rollup``: RSS/PSS/USS/swap of a whole process in one cheap read (Linux 4.14+);
  ``smaps`` is the per-mapping fallback and the reference the tests compare against.
* ``stat``: state, parent, start time, stack and brk addresses, fault counters of a process;
  with ``sys/kernel/random/boot_id``, a :class:`ProcessIdentity`.
* ``environ`` (where a master keeps its heap maps and import records), ``cmdline`` and ``exe``
  (which server it is), ``task/TID/children`` (whether a tree changed), ``mem`` (opened by
  :mod:`cowprof.memreader`), ``sys/kernel/yama/ptrace_scope`` (what reading ``mem`` needs).
* ``pagemap`` and ``/proc/kpagecount``: see :mod:`cowprof.procfs.pagemap`.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import select
import stat
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .._values import Frozen, field
from ..errors import AccessDenied, CowprofError, ProcessGone

if TYPE_CHECKING:  # what __getattr__ below serves, for type checkers
    from .pagemap import KPAGECOUNT_MAX_READS as KPAGECOUNT_MAX_READS
    from .pagemap import PAGEMAP_CHUNK as PAGEMAP_CHUNK
    from .pagemap import PM_EXCLUSIVE as PM_EXCLUSIVE
    from .pagemap import PM_FILE as PM_FILE
    from .pagemap import PM_PFN_MASK as PM_PFN_MASK
    from .pagemap import PM_PRESENT as PM_PRESENT
    from .pagemap import PM_SOFT_DIRTY as PM_SOFT_DIRTY
    from .pagemap import PM_SWAP as PM_SWAP
    from .pagemap import PageBits as PageBits
    from .pagemap import Pagemap as Pagemap
    from .pagemap import decode as decode
    from .pagemap import read_kpagecount as read_kpagecount
    from .pagemap import read_pagemap as read_pagemap

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT: int = PAGE_SIZE.bit_length() - 1
_PAGEMAP_NAMES = frozenset((
    "KPAGECOUNT_MAX_READS", "PAGEMAP_CHUNK", "PM_EXCLUSIVE", "PM_FILE", "PM_PFN_MASK", "PM_PRESENT",
    "PM_SOFT_DIRTY", "PM_SWAP", "PageBits", "Pagemap", "decode", "read_kpagecount", "read_pagemap",
))


def __getattr__(name: str) -> Any:
    """The binary readers' names, from :mod:`cowprof.procfs.pagemap` (imported on first use)."""
    if name in _PAGEMAP_NAMES:
        from . import pagemap

        return getattr(pagemap, name)
    raise AttributeError(f"module 'cowprof.procfs' has no attribute {name!r}")

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


def proc_path(pid: int | None, name: str, procfs_root: str = "/proc") -> str:
    """The path of ``<root>/<pid>/<name>`` (``<root>/<name>`` when ``pid`` is None), for messages
    and for what keeps a file open."""
    return _proc_path(procfs_root, pid, name)


class wrap_exceptions:  # named as psutil names it: used like a function
    """The one translator of an ``OSError`` on a /proc file into the typed error the callers
    expect, as a context manager (``with wrap_exceptions(pid, path): os.open(path, ...)``); the
    instance holds no state, so one may serve every read of an open file, and :meth:`translate`
    gives the error for an ``OSError`` caught by hand. For ``pid`` (None: a file of the whole
    system, such as ``kpagecount``):

    * ENOENT, ESRCH: :class:`~cowprof.errors.ProcessGone` (``pid`` None: "PATH does not exist
      (kernel without this feature?)", a plain CowprofError);
    * EACCES, EPERM: :class:`~cowprof.errors.AccessDenied`, or what ``denied()`` makes (the
      ptrace hint of :class:`~cowprof.memreader.MemoryAccessDenied`);
    * any other errno: a CowprofError "cannot <verb> PATH: <strerror>".

    Other exceptions pass unchanged; the ``OSError`` is not chained (a one-line error).
    """

    __slots__ = ("pid", "path", "denied", "verb")

    def __init__(self, pid: int | None, path: str, *, denied: Callable[[], AccessDenied] | None = None,
                 verb: str = "read") -> None:
        self.pid = pid
        self.path = path
        self.denied = denied
        self.verb = verb

    def translate(self, err: OSError) -> CowprofError:
        """The typed error for ``err`` (see the class doc)."""
        pid, path = self.pid, self.path
        if isinstance(err, (FileNotFoundError, ProcessLookupError)) or err.errno in (errno.ESRCH, errno.ENOENT):
            if pid is None:
                return CowprofError(f"{path} does not exist (kernel without this feature?)")
            return ProcessGone(pid)
        if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
            if self.denied is not None:
                return self.denied()
            if pid is None:
                return AccessDenied(None, f"permission denied reading {path}: this needs root (CAP_SYS_ADMIN)")
            return AccessDenied(pid)
        return CowprofError(f"cannot {self.verb} {path}: {err.strerror or err}")

    def __enter__(self) -> wrap_exceptions:
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            raise self.translate(exc) from None


def read_bytes(pid: int | None, name: str, procfs_root: str = "/proc") -> bytes:
    """Whole content of ``<root>/<pid>/<name>`` (or ``<root>/<name>`` when ``pid`` is None)."""
    path = _proc_path(procfs_root, pid, name)
    with wrap_exceptions(pid, path), open(path, "rb", buffering=0) as f:
        chunks = []
        while True:
            data = f.read(1 << 20)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def open_fd(pid: int | None, name: str, procfs_root: str = "/proc", *,
            denied: Callable[[], AccessDenied] | None = None) -> int:
    """A read-only descriptor (close-on-exec) of ``<root>/<pid>/<name>``; errors as
    :class:`wrap_exceptions` makes them (``denied``: the error of EACCES/EPERM)."""
    path = _proc_path(procfs_root, pid, name)
    with wrap_exceptions(pid, path, denied=denied, verb="open"):
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def check_access(pid: int, procfs_root: str = "/proc") -> None:
    """Raise AccessDenied unless we may read ``pid``'s memory layout (ptrace read access, which the
    kernel checks when ``maps`` is opened), ProcessGone if it is gone. Reads nothing."""
    path = _proc_path(procfs_root, pid, "maps")
    with wrap_exceptions(pid, path):
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


def read_link(pid: int, name: str, procfs_root: str = "/proc") -> str:
    """Where the symbolic link ``<root>/<pid>/<name>`` (``exe``, ``cwd``...) points, as is."""
    path = _proc_path(procfs_root, pid, name)
    with wrap_exceptions(pid, path):
        return os.readlink(path)


def owner(pid: int, procfs_root: str = "/proc") -> int:
    """The user ID owning process ``pid`` (of its /proc directory: the effective UID, root for a
    process that is not dumpable)."""
    path = os.path.join(procfs_root, str(pid))
    with wrap_exceptions(pid, path):
        return os.stat(path).st_uid


def read_environ(pid: int, procfs_root: str = "/proc") -> dict[str, str]:
    """The environment a process started with (``environ``; what it set since is not there), names
    and values decoded as UTF-8 with surrogate escapes; the last of a repeated name wins."""
    out = {}
    for line in read_bytes(pid, "environ", procfs_root).split(b"\0"):
        name, eq, value = line.partition(b"=")
        if eq:
            out[name.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return out


def readable_environ(pid: int, procfs_root: str = "/proc") -> dict[str, str] | None:
    """:func:`read_environ`, or None when we may not read it; ProcessGone still raises."""
    try:
        return read_environ(pid, procfs_root)
    except ProcessGone:
        raise
    except CowprofError:
        return None


def read_children(pid: int, procfs_root: str = "/proc") -> list[int]:
    """The children of a process (of all its threads, ``task/TID/children``), in PID order.
    ProcessGone also when the kernel lacks the file (``CONFIG_PROC_CHILDREN``)."""
    task = _proc_path(procfs_root, pid, "task")
    with wrap_exceptions(pid, task):
        tids = os.listdir(task)
    children: set[int] = set()
    for tid in tids:
        data = read_bytes(pid, f"task/{tid}/children", procfs_root)
        try:
            children.update(int(p) for p in data.split())
        except ValueError:
            raise CowprofError(f"{task}/{tid}/children: not a list of PIDs") from None
    return sorted(children)


_boot_id: list[str] = []  # of /proc, once read


def read_boot_id(procfs_root: str = "/proc") -> str:
    """This boot's random id (``sys/kernel/random/boot_id``); "" when it cannot be read. Read once
    per process from ``/proc`` (it cannot change under a running process, and a read costs ~0.1 ms:
    the kernel's sysctl handler), every time from another root (a test's fixture)."""
    if procfs_root == "/proc" and _boot_id:
        return _boot_id[0]
    try:
        value = read_bytes(None, "sys/kernel/random/boot_id", procfs_root).decode(errors="replace").strip()
    except CowprofError:
        return ""
    if procfs_root == "/proc" and value:
        _boot_id[:] = [value]
    return value


def ptrace_scope(procfs_root: str = "/proc") -> int | None:
    """Yama's ``kernel.yama.ptrace_scope`` (0-3); None without Yama or when unreadable."""
    try:
        return int(read_bytes(None, "sys/kernel/yama/ptrace_scope", procfs_root).strip() or b"0")
    except (CowprofError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- maps


class Mapping(Frozen):
    """One line of ``/proc/PID/maps``: ``[start, end)`` virtual addresses and what backs them."""

    __slots__ = ()
    _fields = ("start", "end", "perms", "offset", "dev", "inode", "path")

    def __new__(cls, start: int, end: int, perms: str, offset: int, dev: str, inode: int, path: str) -> Mapping:
        return tuple.__new__(cls, (start, end, perms, offset, dev, inode, path))

    start: int = field(0)
    end: int = field(1)
    perms: str = field(2, 'e.g. "rw-p"')
    offset: int = field(3)
    dev: str = field(4)
    inode: int = field(5)
    path: str = field(6, '"" for anonymous, "[heap]", "[stack]", "/usr/lib/...", "[anon:name]"')

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


def no_memory(pid: int) -> ProcessGone:
    """The error of a process whose ``maps`` (or ``smaps``) is empty: a zombie or a kernel thread."""
    return ProcessGone(pid, f"process {pid} has no user memory (it exited, or it is a kernel thread)")


def read_maps(pid: int, procfs_root: str = "/proc") -> list[Mapping]:
    """Mappings of a process, in address order. An empty map (zombie) raises ProcessGone."""
    maps = parse_maps(read_bytes(pid, "maps", procfs_root))
    if not maps:
        raise no_memory(pid)
    return maps


# ------------------------------------------------------------------------------ smaps, rollup


class MemCounters(Frozen):
    """Memory counters of ``smaps``/``smaps_rollup`` in bytes (absent fields are 0)."""

    __slots__ = ()
    _fields = ("rss", "pss", "shared_clean", "shared_dirty", "private_clean", "private_dirty",
               "anonymous", "swap", "swap_pss")

    def __new__(cls, rss: int = 0, pss: int = 0, shared_clean: int = 0, shared_dirty: int = 0,
                private_clean: int = 0, private_dirty: int = 0, anonymous: int = 0, swap: int = 0,
                swap_pss: int = 0) -> MemCounters:
        return tuple.__new__(cls, (rss, pss, shared_clean, shared_dirty, private_clean, private_dirty,
                                   anonymous, swap, swap_pss))

    rss: int = field(0)
    pss: int = field(1)
    shared_clean: int = field(2)
    shared_dirty: int = field(3)
    private_clean: int = field(4)
    private_dirty: int = field(5)
    anonymous: int = field(6)
    swap: int = field(7)
    swap_pss: int = field(8)

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
        raise no_memory(pid)
    return parse_counters(data)


def _sum(counters: Iterator[MemCounters]) -> MemCounters:
    tot: dict[str, int] = dict.fromkeys(_FIELDS.values(), 0)
    for c in counters:
        for k in tot:
            tot[k] += getattr(c, k)
    return MemCounters(**tot)


class SmapsEntry(Frozen):
    """A mapping of ``smaps`` with its counters."""

    __slots__ = ()
    _fields = ("mapping", "counters")

    def __new__(cls, mapping: Mapping, counters: MemCounters | None = None) -> SmapsEntry:
        return tuple.__new__(cls, (mapping, MemCounters() if counters is None else counters))

    mapping: Mapping = field(0)
    counters: MemCounters = field(1)


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
        raise no_memory(pid)
    return [(e.mapping, e.counters) for e in entries]


# ----------------------------------------------------------------------------------- stat


class Stat(Frozen):
    """The fields of ``/proc/PID/stat`` cowprof uses."""

    __slots__ = ()
    _fields = ("pid", "comm", "state", "ppid", "starttime_ticks", "start_stack", "start_brk", "minflt",
               "majflt", "vsize", "rss_pages", "flags")

    def __new__(cls, pid: int, comm: str, state: str, ppid: int, starttime_ticks: int, start_stack: int,
                start_brk: int, minflt: int = 0, majflt: int = 0, vsize: int = 0, rss_pages: int = 0,
                flags: int = 0) -> Stat:
        return tuple.__new__(cls, (pid, comm, state, ppid, starttime_ticks, start_stack, start_brk, minflt,
                                   majflt, vsize, rss_pages, flags))

    pid: int = field(0)
    comm: str = field(1)
    state: str = field(2)
    ppid: int = field(3)
    starttime_ticks: int = field(4)
    start_stack: int = field(5, "0 without ptrace read access")
    start_brk: int = field(6, "0 without ptrace read access")
    minflt: int = field(7, "page faults served without I/O (copy-on-write copies among them)")
    majflt: int = field(8, "page faults that needed I/O (swap-in, file reads)")
    vsize: int = field(9, "bytes of address space")
    rss_pages: int = field(10, "resident pages")
    flags: int = field(11, "the kernel's PF_* flags of the task")

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


def list_pids(procfs_root: str = "/proc") -> list[int]:
    """PIDs of every process (the numeric entries of the procfs root), in ascending order."""
    with wrap_exceptions(None, procfs_root):
        names = os.listdir(procfs_root)
    return sorted(int(n) for n in names if n.isdigit())


def read_exe(pid: int, procfs_root: str = "/proc") -> str:
    """The executable of a process (the ``exe`` link, as psutil reads it: cut at a NUL, without
    a " (deleted)" suffix of a path that exists); "" when the link is missing while the process
    is there (a kernel thread). A zombie raises ProcessGone, no rights AccessDenied."""
    try:
        exe = read_link(pid, "exe", procfs_root).split("\x00")[0]
    except ProcessGone:  # no link: a kernel thread while the process is there
        if os.path.lexists(os.path.join(procfs_root, str(pid))) and not read_stat(pid, procfs_root).zombie:
            return ""
        raise
    if exe.endswith(" (deleted)") and not os.path.exists(exe):
        exe = exe[:-10]
    return exe


def read_cmdline(pid: int, procfs_root: str = "/proc") -> list[str]:
    """The command line of a process, split as psutil splits it: on NULs, or on spaces when a
    process rewrote it without them (setproctitle); [] when empty (a kernel thread). A zombie
    raises ProcessGone."""
    data = read_bytes(pid, "cmdline", procfs_root).decode(sys.getfilesystemencoding(),
                                                          sys.getfilesystemencodeerrors())
    if not data:
        if read_stat(pid, procfs_root).zombie:
            raise ProcessGone(pid, f"process {pid} has exited (zombie)")
        return []
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    cmdline = data.split(sep)
    if sep == "\x00" and len(cmdline) == 1 and " " in data:
        cmdline = data.split(" ")
    return cmdline


class ExitWatch:
    """Whether a process exited (a zombie counts) since the watch began: with a pidfd, which the
    kernel makes readable at the exit, a poll without any /proc read; with another procfs root,
    or a kernel without pidfds, by reading its ``stat`` again. A context manager (the pidfd is
    closed on leaving)."""

    def __init__(self, pid: int, procfs_root: str = "/proc") -> None:
        self.pid = pid
        self.procfs_root = procfs_root
        self._fd: int | None = None
        self._gone = False
        if procfs_root == "/proc" and hasattr(os, "pidfd_open"):
            try:
                self._fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone = True
            except OSError:  # no pidfds here (ENOSYS, or a seccomp filter): stat at the end
                self._fd = None

    def exited(self) -> bool:
        if self._gone:
            return True
        if self._fd is not None:
            return bool(select.select([self._fd], [], [], 0)[0])
        try:
            return read_stat(self.pid, self.procfs_root).zombie
        except ProcessGone:
            return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ExitWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def boot_time(procfs_root: str = "/proc") -> float:
    """System boot time (unix seconds) from ``/proc/stat``."""
    m = _BTIME.search(read_bytes(None, "stat", procfs_root))
    return float(m[1]) if m else 0.0


def start_time(pid: int, procfs_root: str = "/proc") -> float:
    """Process start time in unix seconds (boot time + starttime ticks)."""
    return boot_time(procfs_root) + read_stat(pid, procfs_root).starttime_ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------- identity


class ProcessIdentity(Frozen):
    """A process at one point in time. A PID alone names another process once this one exited
    and the PID was reused, start ticks (field 22 of ``stat``: clock ticks since boot) repeat
    after a reboot: the three together name one process. What a heap map, a master's import
    record, a sampler and the exporter keep of the master they follow."""

    __slots__ = ()
    _fields = ("pid", "start_ticks", "boot_id")

    def __new__(cls, pid: int, start_ticks: int, boot_id: str = "") -> ProcessIdentity:
        return tuple.__new__(cls, (pid, start_ticks, boot_id))

    pid: int = field(0)
    start_ticks: int = field(1, "0 when unknown (its stat was not readable)")
    boot_id: str = field(2, '"" when unknown (not compared)')

    @classmethod
    def read(cls, pid: int, procfs_root: str = "/proc", *, live: bool = False) -> ProcessIdentity:
        """The identity of the process ``pid`` is now (one ``stat`` read, and the boot id).
        ProcessGone when there is none (with ``live``, also when it is a zombie), AccessDenied
        when its stat is not readable."""
        st = read_stat(pid, procfs_root)
        if live and st.zombie:
            raise ProcessGone(pid, f"process {pid} has exited (zombie)")
        return cls(pid, st.starttime_ticks, read_boot_id(procfs_root))

    @classmethod
    def lookup(cls, pid: int, procfs_root: str = "/proc") -> ProcessIdentity | None:
        """The identity of the live process ``pid``: None when it is gone or a zombie, start ticks
        0 when its stat is not readable (alive, but only its PID is known)."""
        try:
            return cls.read(pid, procfs_root, live=True)
        except ProcessGone:
            return None
        except AccessDenied:
            return cls(pid, 0, "")

    def is_current(self, procfs_root: str = "/proc", *, live: bool = False) -> bool:
        """True while ``pid`` still names this process: the same start ticks, and the same boot id
        when this identity has one; with ``live``, a zombie is not current. False when its stat
        cannot be read."""
        try:
            st = read_stat(self.pid, procfs_root)
        except CowprofError:
            return False
        if st.starttime_ticks != self.start_ticks or (live and st.zombie):
            return False
        return not self.boot_id or read_boot_id(procfs_root) == self.boot_id

    def same_process(self, other: ProcessIdentity) -> bool:
        """Whether both name the same process as far as both know: the same PID, start ticks and
        boot id where both have one (0 and "" are unknown)."""
        return (self.pid == other.pid
                and (not self.start_ticks or not other.start_ticks or self.start_ticks == other.start_ticks)
                and (not self.boot_id or not other.boot_id or self.boot_id == other.boot_id))


# ------------------------------------------------------------------------------ rights

_PM_PRESENT = 1 << 63
_PM_PFN_MASK = (1 << 55) - 1


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


def pfns_visible(procfs_root: str = "/proc") -> bool:
    """True when pagemap shows PFNs to this process (CAP_SYS_ADMIN), probed on its own memory: the
    top page of its stack (argv and the environment: present unless swapped out), else a page it
    writes for the purpose (which needs numpy)."""
    pid = os.getpid()
    try:
        stack = next((m for m in read_maps(pid, procfs_root) if m.path == "[stack]"), None)
        if stack is not None:
            fd = os.open(_proc_path(procfs_root, pid, "pagemap"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.pread(fd, 8, ((stack.end >> PAGE_SHIFT) - 1) * 8)
            finally:
                os.close(fd)
            entry = int.from_bytes(raw, sys.byteorder) if len(raw) == 8 else 0
            if entry & _PM_PRESENT:
                return bool(entry & _PM_PFN_MASK)
    except (CowprofError, OSError):
        return False
    from .pagemap import pfns_visible_in_new_page

    return pfns_visible_in_new_page(procfs_root)


@functools.cache
def pfn_access(procfs_root: str = "/proc") -> bool:
    """Whether this process reads PFNs in pagemap and ``/proc/kpagecount`` (root, CAP_SYS_ADMIN):
    what the PFN mode of the page classification needs. Probed once per ``procfs_root`` and
    process (the rights do not change under a running profiler; ``pfn_access.cache_clear()``
    forgets the answer)."""
    return kpagecount_readable(procfs_root) and pfns_visible(procfs_root)
