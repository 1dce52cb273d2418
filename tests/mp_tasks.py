"""What multiprocessing children share in tests/integration/test_multiprocessing.py, and the task each
pool worker runs on it. Never imported into the pytest process.

The heap (tests/prepare_heap.py) is built when :mod:`mp_heap` is first imported: in the parent (fork)
or in the fork server that preloads it (forkserver). The task imports it only when it runs, so the
forkserver parent, which must import this module to send the task, never builds a heap of its own."""
from __future__ import annotations

import os
import time


def read_and_wait(ready_dir: str, workers: int, stop_file: str, timeout: float = 60.0) -> int:
    """Read the whole shared heap, say so in ``ready_dir`` (this process and its parent), then hold
    this pool worker until ``stop_file`` exists: a worker blocked here takes no other task, so each
    of ``workers`` tasks runs in its own process."""
    from mp_heap import HEAP
    from prepare_heap import read_everything

    read_everything(HEAP)
    ready = os.path.join(ready_dir, str(os.getpid()))
    with open(ready + ".tmp", "w") as f:  # renamed when complete: the test never reads it half-written
        f.write(str(os.getppid()))
    os.rename(ready + ".tmp", ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        time.sleep(0.05)
    return os.getpid()
