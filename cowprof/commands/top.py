"""``cowprof top``: the live view until Ctrl-C or the master exits."""
from __future__ import annotations

import sys

from cowprof.commands.common import err, interrupt_on_term, numpy_on_one_blas_thread
from cowprof.timer import (
    DEFAULT_TOP_MAX_CPU,
    TOP_AGE_SHARE,
    TOP_MAX_AGE_INTERVALS,
    TOP_MAX_AGE_LIMIT,
    TOP_TOLERANCE,
    Rereads,
)

__all__ = ["main"]


def main(pid: int, *, interval: float = 1.0, max_cpu: float = DEFAULT_TOP_MAX_CPU, exact: bool = False,
         iterations: int | None = None) -> int:
    """Sample the tree of ``pid`` every ``interval`` seconds into the live view, with top's CPU cap
    (``max_cpu``, % of one core; 0: none) and page-table tolerance (none with ``exact``): a re-read
    once 0.1% of the tree's pages can have changed, or after 5 refreshes (more on a tree whose
    re-read costs more than ``TOP_AGE_SHARE`` of a core over 5 refreshes, at most 60)."""
    from cowprof.reporters import live
    from cowprof.sampler import Sampler, StopReason

    cap = max_cpu / 100.0 if max_cpu > 0 else None
    rereads = None if exact else Rereads(tolerance=TOP_TOLERANCE, max_age=TOP_MAX_AGE_INTERVALS,
                                         age_share=TOP_AGE_SHARE, age_limit=TOP_MAX_AGE_LIMIT, interval=interval)
    with numpy_on_one_blas_thread():
        sampler = Sampler(pid, interval=interval, count=iterations, privileged=False, max_cpu=cap,
                          tolerance=0.0 if exact else TOP_TOLERANCE, rereads=rereads)
    with interrupt_on_term():
        try:
            live.render(sampler, sys.stdout, interval=interval, max_cpu=cap)
        except KeyboardInterrupt:
            return 0
    if sampler.stop_reason == StopReason.TARGET_EXITED:
        err(f"master {sampler.master} exited")
    return 0
