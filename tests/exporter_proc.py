"""Test helper: ``cowprof.exporter.serve`` (or ``cowprof export``) as a real subprocess on a loopback port.

Started with ``port=0`` (the kernel picks a free port, no race with other tests); the port is read
from its "serving http://127.0.0.1:PORT/metrics" log line. Scrapes are parsed with
prometheus_client's own text parser. ``stop()`` signals only this process, by PID.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+)/metrics")


class ExporterProc:
    """``cowprof.exporter.serve`` in its own process; stderr goes to a file we can read."""

    def __init__(self, log_path: Path, pid: int | None, *, interval: float = 0.3,
                 pidfile: str | None = None, cli: bool = False) -> None:
        self.log_path = log_path
        if cli:  # the user's way in: ``cowprof export``
            cmd = [sys.executable, "-m", "cowprof", "export", "--port", "0",
                   "--interval", str(interval)]
            cmd += [str(pid)] if pid is not None else []
            cmd += ["--pidfile", pidfile] if pidfile is not None else []
        else:
            code = ("import sys\nfrom cowprof.exporter import serve\n"
                    f"sys.exit(serve({pid!r}, port=0, interval={interval!r}, pidfile={pidfile!r}))\n")
            cmd = [sys.executable, "-c", code]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log, cwd="/")
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = SERVING.search(self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"exporter not serving after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scrape(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    def scrape_until(self, pred, timeout: float = 15.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            fams = self.scrape()
            if pred(fams):
                return fams
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not met after {timeout}s; log:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal our own process (SIGTERM by default), wait; the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            return self.proc.returncode
        finally:
            self._log.close()
