"""A real gunicorn started for a test or a benchmark: any app, any directory, a free loopback port.

``GunicornServer(cwd, app, workers, env, log_path)`` runs ``python -m gunicorn -c
python:cowprof.gunicorn --preload`` (the hook module and nothing else, as the docs tell users)
with the caller's environment additions; ``wait_ready()`` waits for the workers (and for the
hook's report when ``COWPROF_PREPARE_REPORT`` is set); ``stop()`` ends the master by PID (SIGTERM,
then SIGKILL) and any worker left over.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from demo.run import free_port, stop_master
from cowprof.errors import CowprofError
from cowprof.tree import Tree, find_tree


class GunicornServer:
    def __init__(self, cwd: str, app: str, workers: int, env: dict[str, str], log_path: Path,
                 extra_args: tuple[str, ...] = (), python: str = sys.executable) -> None:
        self.port = free_port()
        self.n_workers = workers
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("COWPROF_") or k.endswith("_DIR")}
        full_env.update(env, PYTHONUNBUFFERED="1")
        self.report = Path(full_env["COWPROF_PREPARE_REPORT"]) if "COWPROF_PREPARE_REPORT" in full_env else None
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "gunicorn", "-c", "python:cowprof.gunicorn", "--preload", "-w", str(workers),
             "-b", f"127.0.0.1:{self.port}", "--no-control-socket", *extra_args, app],
            cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.workers: tuple[int, ...] = ()

    def wait_ready(self, timeout: float = 120) -> Tree:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CowprofError(f"gunicorn exited ({self.proc.returncode}): {self.log_path.read_text()[-3000:]}")
            try:
                tree = find_tree(self.proc.pid)
            except CowprofError:
                tree = None
            if (tree is not None and tree.master == self.proc.pid and len(tree.workers) >= self.n_workers
                    and (self.report is None or self.report.exists())):
                self.workers = tree.workers
                return tree
            time.sleep(0.2)
        raise CowprofError(f"gunicorn not ready within {timeout:g} s: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        try:
            stop_master(self.proc, self.workers, timeout)
        finally:
            self._log.close()
