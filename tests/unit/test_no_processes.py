"""The guard of tests/unit/conftest.py: starting a process fails the test that does it."""
import multiprocessing
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("start", [
    lambda: subprocess.run([sys.executable, "-c", "pass"]),
    lambda: os.system("true"),
    lambda: os.fork() == 0 and os._exit(0),  # (were the guard broken, the child would leave at once)
    lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
], ids=["subprocess", "system", "fork", "multiprocessing"])
def test_starting_a_process_fails_here(start):
    with pytest.raises(AssertionError, match="tests/unit starts no processes"):
        start()
