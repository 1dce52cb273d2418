"""When a periodic sampler takes its next sample: the schedule alone, no sampling (py-spy's
``timer.rs`` plays the same part).

Ticks lie on a fixed grid, ``start + k * interval``; ticks missed because a sample took longer than
the interval are skipped, never bunched up. ``max_cpu`` (a fraction of one core) caps the sampling
process's CPU use with a token bucket: credit accrues at ``max_cpu`` per second of wall time, up to
``CPU_BURST_SECONDS`` worth, and each cycle spends what it cost; once the credit runs out, the next
tick waits until it has grown back to zero. Over any span of T seconds the sampler then uses at most
``max_cpu * (T + CPU_BURST_SECONDS)`` CPU seconds. ``duration`` and ``count`` end the schedule.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from cowprof.errors import BadInput

__all__ = ["CPU_BURST_SECONDS", "DEFAULT_TOP_MAX_CPU", "Timer", "check_interval"]

DEFAULT_TOP_MAX_CPU = 1.5
"""``cowprof top``'s ``max_cpu``, in % of one core (``--max-cpu``): under the 2% budget of a live
view, with a margin for what the cap cannot see (interpreter start, terminal output)."""

#: depth of the CPU cap's token bucket, in seconds of credit at ``max_cpu``
CPU_BURST_SECONDS = 10.0


class Timer:
    """The schedule of a sampler. Call :meth:`start` once, then per cycle: :meth:`expired` (is the
    schedule over?), :meth:`due` (when the next sample is due, on the ``clock``), take the sample,
    and :meth:`done` with the clock time it began."""

    def __init__(self, interval: float, *, duration: float | None = None, count: int | None = None,
                 max_cpu: float | None = None, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if max_cpu is not None and not 0 < max_cpu <= 1:
            raise ValueError("max_cpu must be in (0, 1]")
        self.interval = float(interval)
        self.duration = duration
        self.count = count
        self.max_cpu = max_cpu
        self.effective_interval = float(interval)
        """Seconds between the last sample and the next one (> interval when max_cpu stretches it)."""
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.start_time = 0.0
        self._tick = 0  # index on the grid start + k * interval
        self._scheduled = 0.0
        self._taken = 0
        self._depth = (max_cpu or 0.0) * CPU_BURST_SECONDS
        self._credit = self._credit_at = self._cpu_mark = 0.0

    def start(self) -> float:
        """Starts the schedule now: the first sample is due at once. Returns the start time."""
        self.start_time = self._scheduled = self._clock()
        self._credit, self._credit_at = self._depth, self.start_time
        self._cpu_mark = self._cpu_clock()
        return self.start_time

    def expired(self) -> str | None:
        """``"count"`` or ``"duration"`` when the schedule is over, else None. The last sample is the
        one at ``duration`` (inclusive)."""
        if self.count is not None and self._taken >= self.count:
            return "count"
        if self.duration is not None and self._scheduled - self.start_time > self.duration + 1e-9:
            return "duration"
        return None

    def due(self) -> float:
        """Clock time at which the next sample is due."""
        return self._scheduled

    def done(self, began: float) -> None:
        """A sample that began at clock time ``began`` is done (and consumed): schedule the next one
        on the first grid tick still in the future, later if the CPU cap says so."""
        self._taken += 1
        now = self._clock()
        self._tick = max(self._tick + 1, math.floor((now - self.start_time) / self.interval) + 1)
        self._scheduled = self.start_time + self._tick * self.interval
        if self.max_cpu is not None:
            # this cycle cost `spent` CPU seconds of the whole process (whatever it did between two
            # calls); once the credit is used up, wait until it has grown back to zero
            cpu_now = self._cpu_clock()
            spent = max(0.0, cpu_now - self._cpu_mark)
            self._cpu_mark = cpu_now
            self._credit = min(self._depth, self._credit + (now - self._credit_at) * self.max_cpu) - spent
            self._credit_at = now
            earliest = now - self._credit / self.max_cpu if self._credit < 0 else now
            if earliest > self._scheduled:
                self._scheduled = earliest
                self._tick = max(self._tick, math.ceil((earliest - self.start_time) / self.interval - 1e-9))
        self.effective_interval = self._scheduled - began


def check_interval(value: object, *, minimum: float = 0.0, option: str | None = None) -> float:
    """``value`` (a number, or its text as typed) as an interval in seconds, or
    :class:`~cowprof.errors.BadInput`: finite and > 0, or at least ``minimum`` when that is > 0.
    The one check of every interval option, by the CLI's parser and by the library functions that
    take one (:func:`cowprof.exporter.serve`); the message names ``option`` when given (else
    the value, for a parser that adds the option's name itself)."""
    seconds = None
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    if seconds is None:
        raise BadInput(f"{option}: {value!r} is not a number of seconds" if option
                       else f"{value!r} is not a number of seconds")
    shown = value if isinstance(value, str) else f"{seconds:g}"  # as typed, or 0.5 and -1 for numbers
    if minimum > 0:
        if not math.isfinite(seconds) or seconds < minimum:
            raise BadInput(f"{option} must be at least {minimum:g} seconds, not {shown}" if option
                           else f"{shown} must be at least {minimum:g} seconds")
    elif not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(f"{option} must be a number of seconds > 0, not {shown}" if option
                       else f"{shown} must be a number of seconds > 0")
    return seconds
