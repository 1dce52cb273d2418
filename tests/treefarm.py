"""Test helper: a warm process that forks fresh small pre-fork trees on request, in milliseconds.

Starting an interpreter per tree costs 50-300 ms; tests that need hundreds of throw-away trees
(the fault-injection matrix) ask ``TreeFarm`` instead. The farm runs this file as a script (never
in the pytest process) with the interpreter given; on request it forks a *master* that (with
``heapmap=True``) calls ``cowprof.prepare_fork()`` (which saves its heap map), fills a buffer,
forks ``workers`` workers that each change a few pages of it (copy-on-write copies), and reports::

    with TreeFarm(python) as farm:
        tree = farm.tree(heapmap=True)     # FarmTree: .master, .workers
        farm.reap(tree.master)             # after the test killed it: the farm reaps it

The farm is a child subreaper: a master it forked is reaped only when asked (``reap``), so a killed
master can be left a zombie on purpose; orphaned workers are reaped at once. A master reaps its
own workers (SIGCHLD). Masters and workers die with their parent (PR_SET_PDEATHSIG) and the farm
dies with the test process. ``FarmTree.stop()`` SIGKILLs what is left of one tree (its PIDs only).

Protocol (stdin/stdout lines): ``tree HEAPMAP WORKERS`` -> ``TREE master worker...``;
``reap PID`` -> ``REAPED PID``.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import subprocess
import sys
import time

from forktree_prog import die_with_parent

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PAGE = mmap.PAGESIZE
BUF_PAGES = 64
WRITE_PAGES = (3, 17, 40)
_HEAP: list[str] = []


def _prctl(option: int, arg: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


# ------------------------------------------------------------------------------ farm side


def _worker(master: int, buf: mmap.mmap, ready_w: int) -> None:
    die_with_parent(master)
    for idx in WRITE_PAGES:
        buf[idx * PAGE] ^= 0xFF
    os.write(ready_w, f"{os.getpid()}\n".encode())
    os.close(ready_w)
    while True:
        time.sleep(0.2)
        if os.getppid() != master:
            os._exit(0)


def _master(heapmap: bool, workers: int, farm: int) -> None:
    die_with_parent(farm)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if heapmap:
        import cowprof

        _HEAP.extend(("w%05d" % i) * 4 for i in range(2000))  # some heap to map
        cowprof.prepare_fork()
    buf = mmap.mmap(-1, BUF_PAGES * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf[:] = b"\x5a" * (BUF_PAGES * PAGE)
    ready_r, ready_w = os.pipe()
    master = os.getpid()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            try:
                _worker(master, buf, ready_w)
            finally:
                os._exit(1)
        pids.append(pid)
    os.close(ready_w)

    def reap(*_a: object) -> None:
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    signal.signal(signal.SIGCHLD, reap)
    got = b""
    while got.count(b"\n") < workers:
        r, _, _ = select.select([ready_r], [], [], 10)
        data = os.read(ready_r, 4096) if r else b""
        if not data:
            os.write(1, b"ERROR workers not ready\n")
            os._exit(1)
        got += data
    os.close(ready_r)
    os.write(1, f"TREE {master} {' '.join(map(str, pids))}\n".encode())
    while True:
        time.sleep(3600)


def serve() -> None:
    try:  # imported once here, not in every master
        import cowprof  # noqa: F401  (imported for the masters it forks)
    except ImportError:
        pass
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    farm = os.getpid()
    masters: set[int] = set()

    def reap_orphans(*_a: object) -> None:
        # every child that is not a master we forked: orphaned workers of killed masters
        for pid in _children(farm):
            if pid in masters:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    signal.signal(signal.SIGCHLD, reap_orphans)
    for line in sys.stdin:
        word, *args = line.split()
        if word == "tree":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    _master(args[0] == "1", int(args[1]), farm)
                finally:
                    os._exit(1)
            masters.add(pid)
        elif word == "reap":
            pid = int(args[0])
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            masters.discard(pid)
            os.write(1, f"REAPED {pid}\n".encode())


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# ------------------------------------------------------------------------------ test side


class FarmTree:
    """One tree of the farm: ``master`` and ``workers`` (PIDs)."""

    def __init__(self, farm: TreeFarm, master: int, workers: list[int]) -> None:
        self.farm, self.master, self.workers = farm, master, workers

    def stop(self) -> None:
        """SIGKILL this tree's processes (only these PIDs) and have the farm reap the master."""
        for pid in [self.master, *self.workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.farm.reap(self.master)


class TreeFarm:
    """Context manager around a farm process (see the module doc)."""

    def __init__(self, python: str | None = None) -> None:
        self.proc = subprocess.Popen([python or sys.executable, os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                         [os.path.dirname(os.path.abspath(__file__)),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])})
        self._buf = b""

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _reply(self, word: str, timeout: float = 30.0) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                parts = line.decode().split()
                if parts and parts[0] == "ERROR":
                    raise RuntimeError(f"tree farm: {line.decode()}")
                if parts and parts[0] == word:
                    return parts[1:]
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(0.0, left))
            data = os.read(fd, 65536) if r else b""
            if not data:
                raise RuntimeError(f"tree farm: no {word} reply")
            self._buf += data

    def tree(self, *, heapmap: bool = False, workers: int = 2) -> FarmTree:
        self._send(f"tree {int(heapmap)} {workers}")
        master, *pids = (int(p) for p in self._reply("TREE"))
        return FarmTree(self, master, pids)

    def reap(self, pid: int) -> None:
        self._send(f"reap {pid}")
        self._reply("REAPED")

    def __enter__(self) -> TreeFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


if __name__ == "__main__":
    serve()
