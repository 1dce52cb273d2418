#!/usr/bin/env python3
"""Benchmark of ``cowprof top``: CPU it costs, as % of one core, at a given refresh interval.

Starts the bundled sample app under gunicorn (``--tree sample``: 4 workers, preloaded, loopback port
0) or a synthetic fork tree (``--tree forktree``: tests/forktree_prog.py), then runs
``python -m cowprof top MASTER --interval S`` on a pseudo-terminal (so Rich ``Live`` refreshes in
place, as for a user) and reads the top process's CPU times (psutil, user + system) after a warm-up
(imports, first scan) and again ``--duration`` seconds later. Also times ``pages.scan`` of the same
tree in this process to show where the CPU goes. Target: under 2% of one core at 1 Hz on the
sample app. Every process it starts is stopped by PID at the end.

``--load N`` (sample app only) also drives the app with N client threads from a separate process
(the bundled load generator, loopback only, stopping by itself after the run), starting
``--load-lead`` seconds before top so the first burst of copy-on-write faults is over: a busy server
faults every second, so top really rescans instead of reusing an unchanged report.

    .venv/py3.12/bin/python scripts/bench_top.py [--tree sample|forktree] [--interval 1]
        [--duration 30] [--warmup 5] [--top-args "--max-cpu 0"] [--load 2]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import platform
import pty
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from cowprof.errors import CowprofError  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from cowprof.tree import find_tree  # noqa: E402


LOAD = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/sample_app"]
from traffic import request_paths
from demo.loadgen import run_load
r = run_load("127.0.0.1", int(sys.argv[2]), request_paths(2_000_000), concurrency=int(sys.argv[3]),
             deadline=float(sys.argv[4]))
print(f"load: {r.sent} requests, {r.rps:.0f} req/s, {r.errors} errors")
"""


def start_sample_app(workers: int, mb: float | None, port: int = 0) -> tuple[subprocess.Popen, int]:
    """gunicorn with sample_app/gunicorn.conf.py on 127.0.0.1:port; returns (process, master PID)."""
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    env = {**os.environ, "SAMPLE_APP_BIND": f"127.0.0.1:{port}", "SAMPLE_APP_WORKERS": str(workers),
           "PYTHONPATH": ROOT}
    if mb is not None:
        env["SAMPLE_APP_MB"] = str(mb)
    proc = subprocess.Popen([gunicorn, "-c", os.path.join(ROOT, "sample_app", "gunicorn.conf.py")],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the sample app exited with {proc.returncode}")
        try:
            tree = find_tree(proc.pid)
            if len(tree.workers) == workers:
                return proc, proc.pid
        except CowprofError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the sample app did not start its workers within 180 s")


def stop(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM a process this benchmark started, SIGKILL it if it does not exit within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Drain(threading.Thread):
    """Reads the top's terminal output (a full pty would block it) and counts its refreshes."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.refreshes = 0
        self._tail = b""

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            buf = self._tail + data
            # each refresh redraws the header once
            self.refreshes += buf.count(b"cowprof top  master") - self._tail.count(b"cowprof top  master")
            self._tail = buf[-64:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", choices=("sample", "forktree"), default="sample")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sample-mb", type=float, default=None, help="SAMPLE_APP_MB (default: the app's)")
    ap.add_argument("--master-mb", type=float, default=256, help="forktree master buffer")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--top-args", default="", help="extra arguments for cowprof top")
    ap.add_argument("--load", type=int, default=0, metavar="THREADS",
                    help="sample app: keep it busy with this many client threads (0: idle)")
    ap.add_argument("--load-lead", type=float, default=20.0, help="seconds of load before top starts")
    args = ap.parse_args(argv)

    server = None
    forktree = None
    load = None
    if args.tree == "sample":
        from demo.run import free_port

        port = free_port()
        server, master = start_sample_app(args.workers, args.sample_mb, port)
        if args.load:
            seconds = args.load_lead + args.warmup + args.duration + 30
            load = subprocess.Popen([sys.executable, "-c", LOAD, ROOT, str(port), str(args.load), str(seconds)],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(args.load_lead)
    else:
        from forktree import ForkTree

        forktree = ForkTree(workers=args.workers, master_mb=args.master_mb, write_pages=2048,
                            new_pages=256, timeout=120)
        master = forktree.master_pid
    top = None
    try:
        tree = find_tree(master)
        report = scan(tree)
        rss = report.master.rss_bytes + sum(w.rss_bytes for w in report.workers)
        scans = {}
        for priv in (None, False):
            costs = []
            for _ in range(5):
                c0 = time.process_time()
                r = scan(tree, privileged=priv)
                costs.append(time.process_time() - c0)
            scans[r.mode] = statistics.median(costs)
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; "
              f"tree: {args.tree}, master + {len(tree.workers)} workers, RSS {rss / 2**20:.0f} MiB; "
              f"{f'busy ({args.load} client threads)' if load else 'idle'}")
        # what top pays when the tree changed: a full rescan by its Scanner (parsed maps, buffers and
        # index reused), exclusive-bit mode
        from cowprof.pages import Scanner

        scanner = Scanner(privileged=False)
        scanner.scan(tree)
        costs = []
        for _ in range(5):
            scanner._last = None  # forget the previous report: a full rescan, caches kept
            c0 = time.process_time()
            scanner.scan(tree)
            costs.append(time.process_time() - c0)
        print("scan CPU (median of 5): " + ", ".join(f"{m} {s * 1000:.1f} ms" for m, s in scans.items())
              + f"; top's full rescan (Scanner, exclusive-bit) {statistics.median(costs) * 1000:.1f} ms")

        main_fd, sub_fd = pty.openpty()
        fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        cmd = [sys.executable, "-m", "cowprof", "top", str(master), "--interval", str(args.interval),
               *shlex.split(args.top_args)]
        top = subprocess.Popen(cmd, stdin=sub_fd, stdout=sub_fd, stderr=sub_fd, cwd=ROOT,
                               env={**os.environ, "TERM": "xterm-256color"})
        os.close(sub_fd)
        drain = Drain(main_fd)
        drain.start()
        ptop = psutil.Process(top.pid)
        time.sleep(args.warmup)
        if top.poll() is not None:
            raise SystemExit(f"cowprof top exited early with {top.returncode}")
        c0 = sum(ptop.cpu_times()[:2])
        r0 = drain.refreshes
        t0 = time.monotonic()
        time.sleep(args.duration)
        c1 = sum(ptop.cpu_times()[:2])
        r1 = drain.refreshes
        t1 = time.monotonic()
        startup = c0
        top.send_signal(signal.SIGINT)
        rc = top.wait(timeout=15)
        pct = 100.0 * (c1 - c0) / (t1 - t0)
        print(f"cowprof top {' '.join(cmd[4:])}: {pct:.2f}% of one core over {t1 - t0:.1f} s "
              f"(steady state, after {args.warmup:g} s warm-up that used {startup:.2f} s CPU); "
              f"{r1 - r0} refreshes (one every {(t1 - t0) / max(1, r1 - r0):.2f} s); "
              f"exit status after SIGINT: {rc}")
        return 0
    finally:
        if top is not None and top.poll() is None:
            top.kill()
            top.wait()
        if load is not None:
            load.terminate()
            out, _ = load.communicate(timeout=30)
            if out.strip():
                print(out.strip())
        stop(server)
        if forktree is not None:
            forktree.stop()


if __name__ == "__main__":
    sys.exit(main())
