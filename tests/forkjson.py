"""For snippets run by pyrun: fork a child, run a function in it, read back what it returns as JSON."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def in_child(work: Callable[[], Any]) -> Any:
    """Forks; the child calls ``cowprof.after_fork()`` and ``work()``, sends its JSON result and
    exits; returns that result once the child is gone."""
    import cowprof

    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            cowprof.after_fork()
            os.write(wr, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(wr)
    data = b""
    while chunk := os.read(rd, 1 << 16):
        data += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    return json.loads(data)
