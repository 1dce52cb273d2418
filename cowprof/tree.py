"""Find the pre-fork tree (master and live workers) from any PID of it.

A worker is a child the master *forked without exec*: it runs the same executable and, because
address-space layout is randomized at exec time only, it keeps the master's stack and brk start
addresses (``/proc/PID/stat`` fields 28 and 47). That test works for gunicorn, uWSGI, Celery
prefork, ``multiprocessing`` (fork) and a plain ``os.fork()`` parent, and it rejects a child that
exec'd the same interpreter (``subprocess.Popen([sys.executable, ...])``). With ASLR disabled
the layout test proves nothing, so the command lines must match too.

Given a PID: if it has live forked children, it is the master; otherwise, if its parent forked it,
the parent is the master; otherwise it is not part of a pre-fork tree (:class:`NotAPreforkTree`).
"""
from __future__ import annotations

import os

from . import procfs
from ._values import Frozen, field
from .errors import AccessDenied, CowprofError, NotAPreforkTree, ProcessGone


class Tree(Frozen):
    """A pre-fork master and its live workers (PIDs, workers in ascending order)."""

    __slots__ = ()
    _fields = ("master", "workers")

    def __new__(cls, master: int, workers: tuple[int, ...]) -> Tree:
        return tuple.__new__(cls, (master, workers))

    master: int = field(0)
    workers: tuple[int, ...] = field(1)


def _aslr_enabled(procfs_root: str) -> bool:
    try:
        return procfs.read_bytes(None, "sys/kernel/randomize_va_space", procfs_root).strip() != b"0"
    except CowprofError:
        return True


class _Exe:
    """The executables of a search, each read once: the ``exe`` link, else (no rights to it) the
    command line's first word when that is an absolute path to an executable file, which is what
    psutil's ``Process.exe()`` answers (the search used it before)."""

    def __init__(self, procfs_root: str) -> None:
        self.procfs_root = procfs_root
        self._seen: dict[int, str] = {}

    def __call__(self, pid: int) -> str:
        exe = self._seen.get(pid)
        if exe is None:
            try:
                exe = procfs.read_exe(pid, self.procfs_root)
            except AccessDenied:
                exe = self._guess(pid)
                if exe is None:
                    raise
            else:
                if not exe:
                    try:
                        exe = self._guess(pid) or ""
                    except AccessDenied:
                        pass
            self._seen[pid] = exe
        return exe

    def _guess(self, pid: int) -> str | None:
        cmdline = procfs.read_cmdline(pid, self.procfs_root)
        exe = cmdline[0] if cmdline else ""
        if os.path.isabs(exe) and os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
        return None


def _is_fork_of(child: procfs.Stat, parent: procfs.Stat, procfs_root: str, aslr: bool, exe: _Exe) -> bool:
    """True when ``child`` is a fork (without exec) of ``parent``; False for zombies and exec'd ones."""
    try:
        if child.zombie or parent.zombie or child.ppid != parent.pid:
            return False
        if exe(child.pid) != exe(parent.pid):
            return False
        if (child.start_stack, child.start_brk) != (parent.start_stack, parent.start_brk):
            return False
        if child.start_stack == 0 and child.start_brk == 0:
            # no ptrace read access to the layout: fall back on the command line
            return procfs.read_cmdline(child.pid, procfs_root) == procfs.read_cmdline(parent.pid, procfs_root)
        return aslr or procfs.read_cmdline(child.pid, procfs_root) == procfs.read_cmdline(parent.pid, procfs_root)
    except ProcessGone:
        return False


def _children(parent: procfs.Stat, procfs_root: str) -> list[procfs.Stat]:
    """Every process whose parent is ``parent`` and that started no earlier than it (an older one
    has a reused parent PID), zombies included, in PID order: ``psutil.Process.children()``."""
    out = []
    for pid in procfs.list_pids(procfs_root):
        try:
            st = procfs.read_stat(pid, procfs_root)
        except ProcessGone:
            continue
        if st.ppid == parent.pid and st.starttime_ticks >= parent.starttime_ticks:
            out.append(st)
    return out


def _forked_children(parent: procfs.Stat, procfs_root: str, aslr: bool, exe: _Exe) -> list[int]:
    return sorted(c.pid for c in _children(parent, procfs_root) if _is_fork_of(c, parent, procfs_root, aslr, exe))


def _parent(st: procfs.Stat, procfs_root: str) -> procfs.Stat | None:
    """The parent of ``st``, unless it is gone or started after it (its PID was reused)."""
    if st.ppid <= 0:
        return None
    try:
        parent = procfs.read_stat(st.ppid, procfs_root)
    except ProcessGone:
        return None
    return parent if parent.starttime_ticks <= st.starttime_ticks else None


def find_tree(pid: int, *, procfs_root: str = "/proc") -> Tree:
    """The pre-fork tree that ``pid`` (master or worker) belongs to.

    Raises :class:`ProcessGone` (no such PID, a zombie, or it or its parent exited while the tree
    was being read), :class:`AccessDenied` (another user's process, without root) and
    :class:`NotAPreforkTree` (a kernel thread, or no forked children and no forking parent).
    """
    if pid <= 0:
        raise NotAPreforkTree(f"{pid} is not a process ID")
    st = procfs.read_stat(pid, procfs_root)
    if st.zombie:
        raise ProcessGone(pid, f"process {pid} has exited (zombie)")
    if st.kernel_thread:
        raise NotAPreforkTree(f"process {pid} is a kernel thread ({st.comm}), not a Python pre-fork server")
    exe = _Exe(procfs_root)
    try:
        aslr = _aslr_enabled(procfs_root)
        # the exe link of a process we may not read would be guessed from its command line: ask the kernel
        procfs.check_access(pid, procfs_root)
        workers = _forked_children(st, procfs_root, aslr, exe)
        if workers:
            return Tree(pid, tuple(workers))
        parent = _parent(st, procfs_root)
        if parent is not None and parent.pid > 1 and _is_fork_of(st, parent, procfs_root, aslr, exe):
            return Tree(parent.pid, tuple(_forked_children(parent, procfs_root, aslr, exe)))
    except AccessDenied:
        raise AccessDenied(pid) from None
    _raise_if_exited(st, procfs_root)
    raise NotAPreforkTree(
        f"process {pid} is not part of a pre-fork tree: it has no forked children and its parent "
        "did not fork it (give the PID of the server's master or of one of its workers)"
    )


def _raise_if_exited(before: procfs.Stat, procfs_root: str) -> None:
    """A search that found no tree may have raced with an exit (the master's, or the worker's
    parent's): raise ProcessGone for that instead of calling the process no part of a tree."""
    pid = before.pid
    now = procfs.read_stat(pid, procfs_root)  # ProcessGone when it is gone
    if now.zombie or now.starttime_ticks != before.starttime_ticks:
        raise ProcessGone(pid, f"process {pid} exited while its process tree was being read")
    parent = before.ppid
    if parent <= 1:
        return
    try:
        gone = now.ppid != parent or procfs.read_stat(parent, procfs_root).zombie
    except ProcessGone:
        gone = True
    if gone:
        raise ProcessGone(parent, f"process {parent}, the parent of process {pid}, exited while the "
                                  "process tree was being read")


def _children_state(master: int, procfs_root: str) -> tuple[tuple[int, int, int, int], ...] | None:
    """Every child of ``master`` with what decides whether it is a worker (start time, and the stack
    and brk addresses an exec would change), from ``/proc/PID/task/TID/children``; None when the
    kernel lacks that file (CONFIG_PROC_CHILDREN) or anything is unreadable."""
    try:
        children = procfs.read_children(master, procfs_root)
    except CowprofError:
        return None
    out = []
    for pid in children:
        try:
            st = procfs.read_stat(pid, procfs_root)
        except CowprofError:
            return None
        out.append((pid, st.starttime_ticks, st.start_stack, st.start_brk))
    return tuple(out)


class TreeWatcher:
    """``find_tree`` for a loop that looks at the same tree again and again (``top``, ``record``):
    while the master's children are the same processes (PID, start time, stack and brk address),
    the previous answer stands, for a few ``/proc`` reads instead of a walk of the process table."""

    def __init__(self, procfs_root: str = "/proc") -> None:
        self.procfs_root = procfs_root
        self._last: Tree | None = None
        self._state: tuple[tuple[int, int, int, int], ...] | None = None

    def find(self, pid: int) -> Tree:
        last = self._last
        if last is not None and pid == last.master and self._state is not None:
            if _children_state(pid, self.procfs_root) == self._state:
                if not procfs.read_stat(pid, self.procfs_root).zombie:  # ProcessGone when it is gone
                    return last
        master = pid if last is not None and pid == last.master else find_tree(pid, procfs_root=self.procfs_root).master
        # a child born between the two reads would be missed for good: keep the answer only when
        # the children did not change while find_tree looked at them
        before = _children_state(master, self.procfs_root)
        tree = find_tree(master, procfs_root=self.procfs_root)
        after = _children_state(master, self.procfs_root)
        self._last = tree
        self._state = after if before == after else None
        return tree
