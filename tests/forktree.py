"""Test helper: a real pre-fork tree (master + forked workers) with known copy-on-write writes.

``ForkTree`` starts ``forktree_prog.py`` with the current interpreter (so the pytest process is
never the master), waits for its ``READY`` line and exposes what it did::

    with ForkTree(workers=2, master_mb=32, write_pages=7, new_pages=50) as tree:
        tree.master_pid, tree.worker_pids      # ints
        tree.buf_addr, tree.buf_size           # the master's private anonymous buffer
        tree.written_addrs                     # page addresses each worker wrote to (same in all)
        tree.master_written_addrs              # pages the master wrote to after the fork
        tree.new_mappings[pid]                 # (addr, size) of a worker's fresh mapping
        tree.kill_worker(pid)                  # SIGKILL, returns once the PID is reaped

Only processes it started are ever signalled, by PID. ``stop()`` (also on exit of the ``with``
block) closes the master's stdin and SIGTERMs it; the master SIGKILLs and reaps its workers.
Extra knobs: ``master_write_pages`` (master's own post-fork writes, at pages no worker writes),
``heap_mb`` (a Python heap of small str objects in the master) and ``touch_heap`` (workers iterate
it, so refcount writes copy its pages), ``user`` (uid, gid) to run the tree as another user
(root only, through ``setpriv``) and ``python`` (the interpreter, e.g. from ``unprivileged_python``).
"""
from __future__ import annotations

import glob
import os
import selectors
import signal
import subprocess
import sys
import time

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forktree_prog.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = (65534, 65534)


def unprivileged_python(uid_gid: tuple[int, int] = NOBODY) -> tuple[str | None, str]:
    """An interpreter that runs as another user (``setpriv``) and imports cowprof, numpy, psutil.

    Returns ``(python, "")`` or ``(None, reason)``. Tries this interpreter first, then the other
    project venvs (an interpreter under a directory the user cannot enter fails). Needs root.
    """
    if os.geteuid() != 0:
        return None, "needs root to switch to another uid with setpriv"
    if not os.path.exists("/usr/bin/setpriv") and not any(
            os.path.exists(os.path.join(d, "setpriv")) for d in os.environ.get("PATH", "").split(":")):
        return None, "setpriv (util-linux) not installed"
    uid, gid = uid_gid
    tried = []
    for py in [sys.executable] + sorted(glob.glob(os.path.join(REPO, ".venv", "py3.*", "bin", "python"))):
        try:
            r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", py, "-c",
                                "import cowprof.pages, numpy, psutil"], cwd="/", capture_output=True,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            tried.append(f"{py}: {err}")
            continue
        if r.returncode == 0:
            return py, ""
        tried.append(f"{py}: {r.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return None, f"no interpreter runs as uid {uid} with cowprof importable ({'; '.join(tried)})"


def _gone(pid: int) -> bool:
    """True once /proc/PID is gone or the process is a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def stop_master(proc: subprocess.Popen, worker_pids: list[int] | tuple[int, ...]) -> None:
    """Stop a master this test started (stdin closed, SIGTERM, SIGKILL after 10 s), close its pipes,
    then make sure its workers are gone: they die with it (PDEATHSIG); SIGKILL only these PIDs."""
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if f:
                f.close()
        except OSError:
            pass
    deadline = time.monotonic() + 10
    for pid in worker_pids:
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not _gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class ForkTree:
    """Context manager around a running master and its forked workers (see the module doc)."""

    def __init__(self, workers: int = 2, master_mb: float = 32, write_pages: int = 0,
                 new_pages: int = 0, timeout: float = 30.0, *, master_write_pages: int = 0,
                 heap_mb: float = 0, touch_heap: bool = False,
                 user: tuple[int, int] | None = None, python: str | None = None) -> None:
        self.workers = workers
        self.timeout = timeout
        self.master_pid: int = 0
        self.worker_pids: list[int] = []
        self.buf_addr = 0
        self.buf_size = 0
        self.written_addrs: list[int] = []
        self.master_written_addrs: list[int] = []
        self.new_mappings: dict[int, tuple[int, int]] = {}
        cmd = [python or sys.executable, PROG, "--workers", str(workers), "--master-mb", str(master_mb),
               "--write-pages", str(write_pages), "--new-pages", str(new_pages),
               "--master-write-pages", str(master_write_pages), "--heap-mb", str(heap_mb),
               "--timeout", str(timeout)]
        if touch_heap:
            cmd.append("--touch-heap")
        if user is not None:
            uid, gid = user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd="/")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout + 5
        buf = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"fork tree not ready after {self.timeout}s")
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"fork tree exited before READY: {buf!r} {err[-2000:]}")
                buf += data
                if b"ERROR" in buf:
                    raise RuntimeError(f"fork tree failed: {buf.decode(errors='replace')}")
                if b"READY" in buf and buf.endswith(b"\n"):
                    break
        finally:
            sel.close()
        for line in buf.decode().splitlines():
            word, *rest = line.split()
            if word == "BUF":
                self.buf_addr, self.buf_size = int(rest[0]), int(rest[1])
            elif word == "WORKER":
                self.new_mappings[int(rest[0])] = (int(rest[1]), int(rest[2]))
            elif word == "WRITTEN":
                self.written_addrs = [int(x) for x in rest]
            elif word == "MASTER_WRITTEN":
                self.master_written_addrs = [int(x) for x in rest]
            elif word == "READY":
                self.master_pid = int(rest[0])
                self.worker_pids = [int(x) for x in rest[1:]]

    def __enter__(self) -> ForkTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one of our workers and wait until the master has reaped it (PID gone)."""
        if pid not in self.worker_pids:
            raise ValueError(f"{pid} is not a worker of this tree")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while not _gone(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {pid} still alive 10 s after SIGKILL")
            time.sleep(0.01)
        # wait for the reap too, so /proc/PID disappears (the master reaps on SIGCHLD)
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        self.worker_pids.remove(pid)

    def stop(self) -> None:
        """Stop the master and its workers (only those), and wait for them."""
        stop_master(self.proc, self.worker_pids)
