"""Running a scan's reads on a few threads: the kernel's page-table walks behind ``smaps_rollup``,
``pagemap`` and ``kpagecount`` reads (most of a scan's time) run without the GIL, so on a machine
with idle cores a scan takes less wall time for the same CPU time."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

#: threads a scan reads with (this one included): the cores this process may run on, at most 4
READ_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def in_threads(jobs: list[Callable[[], Any]], first: Callable[[], Any] | None = None,
               threads: int | None = None) -> list[tuple[bool, Any]]:
    """Run ``jobs`` on up to ``threads`` threads (default :data:`READ_THREADS`; this one
    included), taken in list order; returns
    ``(True, result)`` or ``(False, exception)`` per job. This thread calls ``first`` before it
    takes jobs too (its exception is raised). Ctrl-C stops the others taking new jobs and is
    raised once they finished theirs."""
    out: list[tuple[bool, Any]] = [(False, None)] * len(jobs)
    pending = iter(range(len(jobs)))
    lock = threading.Lock()
    stop = False

    def run() -> None:
        while not stop:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                out[i] = (True, jobs[i]())
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                out[i] = (False, exc)

    helpers = [threading.Thread(target=run, name=f"cowprof-read-{n}", daemon=True)
               for n in range(min(READ_THREADS if threads is None else threads, len(jobs)) - 1)]
    for t in helpers:
        t.start()
    try:
        if first is not None:
            first()
        run()
    except BaseException:
        stop = True
        raise
    finally:
        for t in helpers:
            t.join()
    return out
