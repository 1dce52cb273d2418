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
from typing import TYPE_CHECKING, Protocol

from cowprof.errors import BadInput

if TYPE_CHECKING:
    from cowprof.pages import ScanResult
    from cowprof.tree import Tree

__all__ = ["CPU_BURST_SECONDS", "CpuBudget", "DEFAULT_EXPORT_MAX_CPU", "DEFAULT_TOP_MAX_CPU",
           "EXPORT_MAX_AGE_INTERVALS", "EXPORT_TOLERANCE", "Rereads", "TOP_AGE_SHARE", "TOP_MAX_AGE_INTERVALS",
           "TOP_MAX_AGE_LIMIT", "TOP_TOLERANCE", "Timer", "check_interval"]

DEFAULT_TOP_MAX_CPU = 1.5
"""``cowprof top``'s ``max_cpu``, in % of one core (``--max-cpu``): under the 2% budget of a live
view, with a margin for what the cap cannot see (interpreter start, terminal output)."""

DEFAULT_EXPORT_MAX_CPU = 0.8
"""``cowprof export``'s ``--max-cpu``, in % of one core: the CPU budget of its page-table re-reads
(:class:`Rereads`), under the 1% an exporter at ``--interval 5`` may take."""

EXPORT_TOLERANCE = 0.001
"""``cowprof export``'s page-table tolerance (:class:`Rereads`): as ``top``'s, 0.1% of the tree's
resident pages (at least 64) can have changed before the exporter re-reads them."""

EXPORT_MAX_AGE_INTERVALS = 12
"""``cowprof export``'s max age of a page-table read, in intervals (a minute at ``--interval 5``)."""

TOP_TOLERANCE = 0.001
"""``cowprof top``'s page-table tolerance (:class:`Rereads`): it re-reads the page tables once this
fraction of the tree's resident pages (at least the Scanner's ``MIN_TOLERANCE_PAGES``) can have
changed since the last read (counted in page faults of the tree); ``--exact`` re-reads them
whenever anything changed (tolerance 0)."""

TOP_MAX_AGE_INTERVALS = 5
"""``cowprof top``'s max age of a page-table read, in refreshes (stretched by ``TOP_AGE_SHARE``)."""

TOP_MAX_AGE_LIMIT = 60
"""The most refreshes ``TOP_AGE_SHARE`` may stretch top's max age to (a minute at 1 Hz), however
costly a re-read: past it the shown figures would be too old to call live."""

TOP_AGE_SHARE = 0.002
"""The share of one core ``cowprof top``'s max-age re-reads may take: its max age (5 refreshes)
stretches to as many refreshes as keep one re-read per max age under this (a 1 GiB tree's re-read,
12-20 ms, keeps 5-10 refreshes; a 4 GiB tree's, ~50-80 ms, 25-40)."""

#: depth of the CPU cap's token bucket, in seconds of credit at ``max_cpu``
CPU_BURST_SECONDS = 10.0


class CpuBudget:
    """A token bucket of CPU time, for :class:`Timer`'s cap and :class:`Rereads`' budget: credit
    accrues at ``rate`` (a fraction of one core) per second of wall time, up to
    ``CPU_BURST_SECONDS`` worth, and each :meth:`charge` spends the process CPU used since the
    previous one."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.depth = rate * CPU_BURST_SECONDS
        self.credit = self.depth
        self._at: float | None = None
        self._cpu = 0.0

    def reset(self, now: float, cpu: float) -> None:
        """Full credit at ``now``, the process CPU counted from ``cpu``."""
        self.credit, self._at, self._cpu = self.depth, now, cpu

    def charge(self, now: float, cpu: float) -> float:
        """Accrue credit up to ``now``, spend the CPU used since the previous call (``cpu``: the
        process CPU time now) and return the credit left (negative: in debt). The first call of a
        bucket never reset only marks the clocks."""
        if self._at is not None:
            spent = max(0.0, cpu - self._cpu)
            self.credit = min(self.depth, self.credit + (now - self._at) * self.rate) - spent
        self._at, self._cpu = now, cpu
        return self.credit


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
        self._budget = CpuBudget(max_cpu) if max_cpu is not None else None

    def start(self) -> float:
        """Starts the schedule now: the first sample is due at once. Returns the start time."""
        self.start_time = self._scheduled = self._clock()
        if self._budget is not None:
            self._budget.reset(self.start_time, self._cpu_clock())
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
        if self._budget is not None:
            # this cycle cost the CPU of the whole process (whatever it did between two calls);
            # once the credit is used up, wait until it has grown back to zero
            credit = self._budget.charge(now, self._cpu_clock())
            earliest = now - credit / self._budget.rate if credit < 0 else now
            if earliest > self._scheduled:
                self._scheduled = earliest
                self._tick = max(self._tick, math.ceil((earliest - self.start_time) / self.interval - 1e-9))
        self.effective_interval = self._scheduled - began


class _Scanner(Protocol):
    """What :class:`Rereads` uses of a :class:`cowprof.pages.Scanner`."""

    tolerance: float
    max_age: float | None
    unchanged: int

    def read(self, target: Tree, *, keep_addresses: bool = False) -> ScanResult: ...


class Rereads:
    """When a live view (``top``, ``export``) re-reads the page tables of a tree that can have
    changed: a policy over a :class:`cowprof.pages.Scanner`, which it tunes through its
    ``tolerance`` before each check (a check: one :meth:`read`; the Scanner still decides whether
    its previous report stands, and always re-reads when processes came or went or an address
    space shrank). In this order, a check

    1. while the CPU budget is used up, keeps the previous report however many pages can have
       changed (``DEFER_TOLERANCE``) until the last read is ``hard_age`` checks old (default: twice
       the max age, never less than it), then re-reads whenever anything changed. ``max_cpu`` (a
       fraction of one core; None: no budget) is a token bucket like :class:`Timer`'s
       (``CPU_BURST_SECONDS`` of credit), spent by everything this process did since the previous
       check (checks, re-reads, anything else: for the exporter, the scrapes);
    2. re-reads whenever anything changed once the last read is the max age old: ``max_age``
       checks, or, with ``age_share`` (a fraction of one core), as many as keep the last re-read's
       CPU under ``age_share`` per check interval (``interval`` seconds), whichever is more, but
       never more than ``age_limit`` checks (when given);
    3. otherwise re-reads once more than ``tolerance`` x the tree's resident pages (at least the
       Scanner's ``MIN_TOLERANCE_PAGES``) can have changed (counted in page faults).

    The :class:`~cowprof.pages.ScanResult` a check returns says what its report can be off by:
    ``drift_pages`` (0: exact now) and the report's ``taken_at`` (when its pages were read). Not
    seen by any of this, only bounded in time by the ages: pages dropped without a fault or an
    unmap (``madvise`` DONTNEED, swap-out).
    ``age`` counts the checks since the last read; ``rereads`` the checks that re-read.
    """

    #: the tolerance of a deferred check: any number of faults (the Scanner takes < 1)
    DEFER_TOLERANCE = 0.999

    def __init__(self, *, tolerance: float, max_age: int, interval: float, age_share: float | None = None,
                 max_cpu: float | None = None, hard_age: int | None = None, age_limit: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        if not 0 <= tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        if max_age < 1:
            raise ValueError("max_age must be at least 1 check")
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if max_cpu is not None and not 0 < max_cpu <= 1:
            raise ValueError("max_cpu must be in (0, 1]")
        if age_share is not None and not 0 < age_share <= 1:
            raise ValueError("age_share must be in (0, 1]")
        self.tolerance = tolerance
        self.max_age = max_age
        self.interval = float(interval)
        self.age_share = age_share
        self.max_cpu = max_cpu
        self.hard_age = hard_age
        self.age_limit = age_limit
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.age = 0
        """Checks since the page tables were last read (0: this check read them or found the
        tree exactly unchanged)."""
        self.rereads = 0
        self.reread_cpu = 0.0
        """CPU seconds the last re-read took."""
        self._read_at: float | None = None  # taken_at of the report last read
        self._budget = CpuBudget(max_cpu) if max_cpu is not None else None

    @property
    def effective_max_age(self) -> int:
        """The max age now, in checks: ``max_age``, longer for a costly re-read with ``age_share``."""
        if self.age_share is None or self.reread_cpu <= 0:
            return self.max_age
        stretched = math.ceil(self.reread_cpu / (self.age_share * self.interval) - 1e-9)
        if self.age_limit is not None:
            stretched = min(stretched, self.age_limit)
        return max(self.max_age, stretched)

    def _budget_left(self, now: float, cpu: float) -> bool:
        return self._budget is None or self._budget.charge(now, cpu) >= 0

    def tolerance_now(self) -> float:
        """The tolerance this check runs with (and updates the budget with what was spent since
        the previous check)."""
        max_age = self.effective_max_age
        if not self._budget_left(self._clock(), self._cpu_clock()):
            hard_age = 2 * max_age if self.hard_age is None else max(max_age, self.hard_age)
            return 0.0 if self.age >= hard_age else self.DEFER_TOLERANCE
        if self.age >= max_age:
            return 0.0
        return self.tolerance

    def read(self, scanner: _Scanner, tree: Tree, *, keep_addresses: bool = False) -> ScanResult:
        """One check of ``tree`` by ``scanner`` under this policy."""
        scanner.tolerance = self.tolerance_now()
        scanner.max_age = None  # the ages are counted here, in checks
        unchanged = scanner.unchanged
        cpu0 = self._cpu_clock()
        result = scanner.read(tree, keep_addresses=keep_addresses)
        report = result.report
        reread = scanner.unchanged == unchanged
        if reread:
            self.rereads += 1
            self.reread_cpu = self._cpu_clock() - cpu0
        # exact now: read, or found exactly unchanged (the Scanner re-stamps that report); a report
        # kept within the tolerance keeps the taken_at of its read
        if reread or self._read_at is None or report.taken_at > self._read_at:
            self.age = 0
            self._read_at = report.taken_at
        else:
            self.age += 1
        return result


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
