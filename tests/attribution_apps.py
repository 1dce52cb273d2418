"""Synthetic pre-fork apps whose copy-on-write culprit is known, for the attribution tests.

The apps run as scripts, never inside the pytest process (their heap preparation would change
pytest's own heap); tests import only the ``App`` launcher at the bottom:

    python attribution_apps.py SCENARIO [--workers 2] [--n N] [--active K] [--timeout 30] [--no-cowprof]
                                        [--old-format-dir DIR]

The master builds a heap for the scenario, calls ``cowprof.prepare_fork`` (which saves the heap
map), forks ``--workers`` workers that each commit the scenario's culprit (only the first ``--active``
ones when given: the others keep sharing the originals), waits for every worker
to say it is done (a pipe), prints ``READY <master_pid> <worker_pid>...`` and sleeps until its stdin
closes or SIGTERM; then it SIGKILLs its workers, reaps them and exits. Workers die with the master
(PR_SET_PDEATHSIG plus a getppid poll). The master stays idle after fork: it writes nothing to the
shared heap, so the workers' copied pages are theirs.

Scenarios (the culprit each test expects to hold >= 80% of the copied bytes):

* ``floats``: mortal floats (``prepare_fork(immortalize=False)``: walk and heap map only, then
  ``gc.freeze``) inside GC-untracked dicts; the workers read every value. The refcount goes up and
  back down: pages of type ``float``, cause "identical content" (or refcount).
* ``gc``: tracked objects (``__slots__`` instances) the workers never read, in a chain whose
  objects the collector finds in the opposite order from the master's last collection; no
  ``gc.freeze`` (``prepare_fork(immortalize=False, freeze=False)``); the workers call
  ``gc.collect()``, which relinks every object: cause "GC header".
* ``functions``: ``--n`` is ignored; the master compiles a few big functions (``hot_0`` ... ``hot_3``,
  never run there) and each worker runs ``hot_0`` and ``hot_1`` a few thousand times: the
  specializing interpreter writes their code objects' inline caches (``--by function``).
* ``strhash``: immortal str objects (``prepare_fork()``) whose cached hash is cleared after the walk
  (the walk hashes every str; clearing the cache recreates strs never hashed in the master); the
  workers hash them: type ``str``, cause "str hash".

``--no-cowprof``: the master never imports cowprof (no heap map, nothing prepared: ``floats`` calls
``gc.freeze()``, ``gc`` ``gc.collect()``, ``strhash`` leaves its strings unhashed), for attribution
from outside (cowprof.remote).

``--old-format-dir DIR``: the walk of ``prepare_fork`` also writes its heap map in format 2 (the raw
records of the same walk, see ``cowprof.heapmap.walk_into``) into DIR, beside the default format 3.

``App`` (below) runs one scenario for a test as a context manager.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import select
import selectors
import signal
import subprocess
import sys
import time

from forktree_prog import die_with_parent, kill_children_and_exit

SCENARIOS = ("floats", "gc", "strhash", "functions")
HOT_FUNCTIONS = 4  # hot_0 .. hot_3; the workers run the first two
HOT_RUN = 2
STR_HASH_OFFSET = 24  # PyASCIIObject: ob_refcnt, ob_type, length, hash (checked at run time below)


# ------------------------------------------------------------------------------ the master


class Node:
    """A GC-tracked object with one reference slot and no __dict__/__weakref__ (pre-header = GC only)."""

    __slots__ = ("prev",)

    def __init__(self) -> None:
        self.prev = None


def hot_functions() -> list:
    """Functions with big code objects (a few KiB of bytecode each), defined in this module."""
    out = []
    for i in range(HOT_FUNCTIONS):
        body = "\n".join(f"    x = (x * {j + 3} + y) % 1000003\n    y = y ^ (x >> {j % 7 + 1})" for j in range(400))
        src = f"def hot_{i}(x, y):\n{body}\n    return x + y\n"
        exec(compile(src, f"<hot_{i}>", "exec"), globals())
        out.append(globals()[f"hot_{i}"])
    return out


def build_without_cowprof(scenario: str, n: int) -> object:
    """The scenario's data as an unprepared server has it (cowprof is never imported)."""
    if scenario == "floats":
        keys = [sys.intern(f"k{j}") for j in range(50)]
        rows = [dict(zip(keys, [i * 50.0 + j + 0.5 for j in range(50)])) for i in range(max(n // 50, 1))]
        gc.freeze()
        return rows
    if scenario == "gc":
        nodes = [Node() for _ in range(n)]
        gc.collect()
        for i in range(1, n):
            nodes[i].prev = nodes[i - 1]
        last = nodes[-1]
        nodes.clear()
        return last
    if scenario == "strhash":
        return [("s%07d-" % i) * 3 for i in range(n)]
    if scenario == "functions":
        return hot_functions()
    raise SystemExit(f"unknown scenario {scenario!r}")


def tee_old_format(directory: str) -> None:
    """Have every walk of prepare_fork also write its heap map in format 2 into ``directory``."""
    from cowprof import heapmap

    walk_into = heapmap.walk_into

    def both(seg, walk_fn, **kwargs):
        copy = heapmap.Segment(seg.pid, directory, seg.seq, format_version=2)
        return walk_into(seg, walk_fn, copy=copy, **kwargs)

    heapmap.walk_into = both


def build(scenario: str, n: int) -> object:
    """The scenario's data, prepared (heap map saved) and ready to be shared with the workers."""
    import cowprof

    if scenario == "functions":
        funcs = hot_functions()
        cowprof.prepare_fork()
        return funcs
    if scenario == "floats":
        keys = [sys.intern(f"k{j}") for j in range(50)]
        rows = [dict(zip(keys, [i * 50.0 + j + 0.5 for j in range(50)])) for i in range(max(n // 50, 1))]
        # 3.12/3.13 untrack dicts of atomic values; 3.14 keeps every dict tracked (frozen below)
        if sys.version_info < (3, 14):
            assert not any(gc.is_tracked(r) for r in rows[:100]), "atomic dicts should be GC-untracked"
        cowprof.prepare_fork(immortalize=False)
        return rows
    if scenario == "gc":
        nodes = [Node() for _ in range(n)]
        cowprof.prepare_fork(immortalize=False, freeze=False)
        # After the master's collection the nodes sit in the GC list in creation order. Link each
        # to the one created before it and keep only the last: a collection in the worker then
        # finds them last-to-first and reverses the list, rewriting every node's GC header, and
        # nothing else of theirs (the workers never touch them).
        for i in range(1, n):
            nodes[i].prev = nodes[i - 1]
        last = nodes[-1]
        nodes.clear()
        return last
    if scenario == "strhash":
        words = [("s%07d-" % i) * 3 for i in range(n)]
        cowprof.prepare_fork()
        probe = words[0]
        cached = ctypes.c_ssize_t.from_address(id(probe) + STR_HASH_OFFSET)
        if cached.value != hash(probe):
            raise RuntimeError("unexpected str layout: the hash is not at offset 24")
        for w in words:  # forget the hash the walk cached: the workers will compute it again
            ctypes.c_ssize_t.from_address(id(w) + STR_HASH_OFFSET).value = -1
        return words
    raise SystemExit(f"unknown scenario {scenario!r}")


def culprit(scenario: str, data: object) -> None:
    """What each worker does to the shared heap."""
    if scenario == "floats":
        for row in data:  # type: ignore[attr-defined]
            for _v in row.values():
                pass
    elif scenario == "gc":
        gc.collect()
    elif scenario == "strhash":
        for w in data:  # type: ignore[attr-defined]
            hash(w)
    elif scenario == "functions":
        for f in data[:HOT_RUN]:  # type: ignore[index]
            for i in range(3000):
                f(i, 7)


def _worker(master: int, scenario: str, data: object, done_w: int, active: bool) -> None:
    die_with_parent(master)
    if active:
        culprit(scenario, data)
    os.write(done_w, f"{os.getpid()}\n".encode())
    os.close(done_w)
    while os.getppid() == master:
        time.sleep(0.2)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--active", type=int, default=None,
                    help="only the first ACTIVE workers commit the culprit (default: all)")
    ap.add_argument("--no-cowprof", action="store_true", help="never import cowprof (nothing prepared)")
    ap.add_argument("--old-format-dir", help="also write the heap map in format 2 there")
    args = ap.parse_args(argv)
    if args.old_format_dir:
        tee_old_format(args.old_format_dir)
    active = args.workers if args.active is None else args.active

    data = build_without_cowprof(args.scenario, args.n) if args.no_cowprof else build(args.scenario, args.n)
    children: set[int] = set()

    def shutdown(*_a: object) -> None:
        kill_children_and_exit(children)

    signal.signal(signal.SIGTERM, shutdown)
    master = os.getpid()
    done_r, done_w = os.pipe()
    sys.stdout.flush()
    forked: list[int] = []
    for i in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(done_r)
            try:
                _worker(master, args.scenario, data, done_w, i < active)
            finally:
                os._exit(1)
        children.add(pid)
        forked.append(pid)
    os.close(done_w)

    pids: list[str] = []  # in fork order once all are done (the done lines may come in any order)
    pending = b""
    deadline = time.monotonic() + args.timeout
    while len(pids) < args.workers:
        r, _, _ = select.select([done_r], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(done_r, 4096) if r else b""
        if not chunk:
            print("ERROR workers not done", flush=True)
            shutdown()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        pids.extend(line.decode() for line in lines)
    os.close(done_r)
    order = {pid: i for i, pid in enumerate(forked)}
    pids.sort(key=lambda p: order.get(int(p), len(order)))
    print(f"READY {master} {' '.join(pids)}", flush=True)
    while True:  # idle until stdin closes or SIGTERM
        r, _, _ = select.select([sys.stdin.fileno()], [], [], 0.5)
        if r and not os.read(sys.stdin.fileno(), 4096):
            shutdown()


# ------------------------------------------------------------------------- test-side launcher


def app_python() -> str | None:
    """An interpreter that can run the apps (CPython 3.12+ with cowprof): this one, or on 3.11 the
    project's 3.12/3.13 venv (the profiler then runs on 3.11 against a 3.12+ master)."""
    if sys.version_info >= (3, 12):
        return sys.executable
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for v in ("3.12", "3.13"):
        py = os.path.join(repo, ".venv", f"py{v}", "bin", "python")
        if os.access(py, os.X_OK):
            return py
    return None


class App:
    """Runs one scenario as a subprocess master; ``master`` and ``workers`` (in fork order: the
    first ``active`` ones committed the culprit) once ready."""

    def __init__(self, scenario: str, *, n: int = 100_000, workers: int = 2, timeout: float = 30.0,
                 active: int | None = None, python: str | None = None, cowprof: bool = True,
                 old_format_dir: str | None = None) -> None:
        python = python or app_python()
        if python is None:
            raise RuntimeError("no CPython 3.12+ interpreter to run the app")
        self.master = 0
        self.workers: list[int] = []
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), scenario, "--n", str(n), "--workers", str(workers),
             "--timeout", str(timeout)] + ([] if active is None else ["--active", str(active)])
            + ([] if cowprof else ["--no-cowprof"])
            + ([] if old_format_dir is None else ["--old-format-dir", old_format_dir]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        try:
            self._wait_ready(timeout + 10)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while not (b"READY" in buf and buf.endswith(b"\n")):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"app not ready after {timeout}s")
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"app exited before READY: {buf!r} {err[-2000:]}")
                buf += data
                if b"ERROR" in buf:
                    raise RuntimeError(f"app failed: {buf.decode(errors='replace')}")
        finally:
            sel.close()
        for line in buf.decode().splitlines():
            if line.startswith("READY "):
                self.master, *self.workers = (int(x) for x in line.split()[1:])

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop our master (it kills and reaps its workers); SIGKILL our own workers if left."""
        from forktree import stop_master

        stop_master(self.proc, self.workers)


if __name__ == "__main__":
    sys.exit(main())
