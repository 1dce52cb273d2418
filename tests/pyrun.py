"""Run Python snippets in a fresh interpreter (the same one running pytest).

Heap preparation immortalizes and freezes the whole heap of the process it runs in, so tests do it
in a child interpreter and read back one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: the children's timeouts are multiplied by this (scripts/check_native: under valgrind they run 30-100x slower)
TIMEOUT_SCALE = float(os.environ.get("COWPROF_TEST_TIMEOUT_SCALE", "1"))


def run_py(code: str, *args: str, timeout: float = 120.0, env: dict | None = None,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout * TIMEOUT_SCALE, cwd=cwd or TESTS_DIR,
        env={**os.environ, **(env or {})},
    )


def run_json(code: str, *args: str, timeout: float = 120.0, env: dict | None = None, cwd: str | None = None):
    """Run code that prints one JSON document as its last stdout line; return it parsed."""
    proc = run_py(code, *args, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_script_json(script: str, *args: str, timeout: float = 300.0):
    proc = subprocess.run([sys.executable, os.path.join(TESTS_DIR, script), *args],
                          capture_output=True, text=True, timeout=timeout * TIMEOUT_SCALE, cwd=TESTS_DIR)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
