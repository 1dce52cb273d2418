"""Periodic page scans of a pre-fork tree, as an iterator of samples.

``top``, ``record`` and ``run --record`` all need the same loop: re-discover the tree (workers come and
go with ``max_requests`` recycling and HUP reloads), scan it, wait for the next tick. Like py-spy's
sampler, each :class:`Sample` carries its own error and lateness instead of aborting the loop, and the
iteration ends cleanly when the target master exits.

The first tree discovery happens in :class:`Sampler`'s constructor, so a wrong PID (no such process,
not a pre-fork tree, permission denied) raises a :class:`~cowprof.errors.CowprofError` before any
output is produced.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cowprof import procfs
from cowprof.errors import CowprofError
from cowprof.timer import CPU_BURST_SECONDS, Timer

if TYPE_CHECKING:
    from cowprof.pages import PageReport, Scanner
    from cowprof.timer import Rereads
    from cowprof.tree import Tree

__all__ = ["Sample", "Sampler", "StopReason", "CPU_BURST_SECONDS"]

class StopReason:
    """Why a :class:`Sampler` stopped (``Sampler.stop_reason``); plain strings, stored in record files."""

    TARGET_EXITED = "target-exited"
    DURATION = "duration"
    COUNT = "count"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Sample:
    """One tick of the sampler: a page report, or the error that tick hit (never both)."""

    index: int
    """0-based sequence number, counting failed samples too."""
    time: float
    """Wall clock (unix seconds) when the sample started."""
    elapsed: float
    """Seconds since the sampler's first tick (monotonic clock)."""
    lateness: float
    """Seconds the sample started after its scheduled tick (scheduling jitter, slow previous scans)."""
    report: PageReport | None
    error: CowprofError | None
    drift_pages: int = 0
    """Pages that can have changed since ``report``'s page tables were read (its ``taken_at``): 0 when
    it is exact as of this sample (see ``Scanner``'s ``tolerance``)."""

    @property
    def ok(self) -> bool:
        """True when the sample holds a report."""
        return self.report is not None


def _process_identity(pid: int) -> procfs.ProcessIdentity | None:
    """The identity of a live (non-zombie) process, or None when it is gone.

    The start time tells a PID reused by an unrelated process apart from the original master; a
    process whose stat cannot be read has start ticks 0 (alive but unreadable: keep sampling, each
    sample reports the denial itself).
    """
    return procfs.ProcessIdentity.lookup(pid)


def _alive_check(master: int) -> Callable[[int], bool]:
    """Whether ``master`` is still the process it is now (its identity: a reused PID is not)."""
    identity = _process_identity(master)

    def is_alive(pid: int) -> bool:
        now = _process_identity(pid)
        return now is not None and (identity is None or now.same_process(identity))
    return is_alive


class Sampler:
    """Iterate over :class:`Sample` objects taken every ``interval`` seconds from the tree of ``pid``.

    ``pid`` may be the master or any worker; the sampler follows the master, so recycled workers do not
    end it. Iteration stops when the master exits (``stop_reason == "target-exited"``), after
    ``duration`` seconds, after ``count`` samples, or when :meth:`stop` is called. The first sample is
    taken immediately. Ticks are on a fixed grid (``start + k * interval``); ticks missed because a scan
    was slower than the interval are skipped, and the delay shows up as the next sample's ``lateness``.

    ``max_cpu`` (a fraction of one core) caps this process's CPU use (:class:`cowprof.timer.Timer`'s
    token bucket): each sample spends what it cost (the scan, plus what the consumer did with the
    sample before asking for the next one), so the interval stretches on trees too busy to scan
    every ``interval`` within the cap (``effective_interval`` says by how much), while an
    occasional full scan of a mostly unchanged tree does not. A full page scan of a 1 GiB tree
    costs ~12-20 ms of CPU: at 1 Hz that alone is 1.3-2% of a core.

    ``tolerance`` and ``max_age`` go to the :class:`cowprof.pages.Scanner`: with ``tolerance`` > 0 a
    sample may hold the previous report while few pages can have changed since (``drift_pages``
    bounds how many); 0 (the default, for ``record`` and ``export``) re-reads the page tables
    whenever anything changed. ``rereads`` (a :class:`cowprof.timer.Rereads`, ``top``'s) instead sets
    the Scanner's tolerance before each sample, with its max age counted in samples.

    ``keep_addresses`` keeps each worker's copied page addresses in the reports (for attribution:
    ``record --by``).

    ``find_tree``, ``scan``, ``is_alive``, ``clock``, ``wall_clock``, ``sleep`` and ``cpu_clock`` are
    injectable for tests; by default they are a :class:`cowprof.tree.TreeWatcher` (``find_tree`` that
    reuses its answer while the master's children stay the same), a :class:`cowprof.pages.Scanner`
    (``scan`` that answers from the previous report when no process of the tree faulted, unmapped or
    swapped since: ``self.scanner.unchanged`` counts those), a liveness check of the master (its
    :class:`~cowprof.procfs.ProcessIdentity`) and the ``time`` module.
    """

    def __init__(
        self,
        pid: int,
        *,
        interval: float = 1.0,
        duration: float | None = None,
        count: int | None = None,
        privileged: bool | None = None,
        max_cpu: float | None = None,
        tolerance: float = 0.0,
        max_age: float | None = None,
        rereads: Rereads | None = None,
        keep_addresses: bool = False,
        find_tree: Callable[[int], Tree] | None = None,
        scan: Callable[[Tree, bool | None], PageReport] | None = None,
        is_alive: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._timer_args: dict[str, Any] = dict(interval=interval, duration=duration, count=count,
                                                max_cpu=max_cpu, clock=clock, cpu_clock=cpu_clock)
        self.timer = Timer(**self._timer_args)  # validates the schedule's arguments
        self.interval = float(interval)
        self.max_cpu = max_cpu
        self.duration = duration
        self.count = count
        self.privileged = privileged
        self.rereads = rereads
        if find_tree is None:
            from cowprof.tree import TreeWatcher

            find_tree = TreeWatcher().find
        self.scanner: Scanner | None = None
        self._read = self._reader(scan, tolerance, max_age, keep_addresses)  # sets self.scanner
        self._find_tree = find_tree
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._stopped = False
        self.stop_reason: str | None = None
        self.samples_taken = 0

        first = self._find_tree(pid)  # raises ProcessGone / AccessDenied / NotAPreforkTree
        self.requested_pid = pid
        self.master: int = first.master
        self._first_tree: Tree | None = first
        self._is_alive = is_alive if is_alive is not None else _alive_check(self.master)

    def _reader(self, scan: Callable[[Tree, bool | None], PageReport] | None, tolerance: float,
                max_age: float | None, keep_addresses: bool) -> Callable[[Tree], tuple[PageReport, int]]:
        """What a sample calls: tree -> (report, drift_pages), from ``scan`` (exact: drift 0) or a
        :class:`cowprof.pages.Scanner` of its own (``self.scanner``)."""
        if scan is not None:
            injected = scan

            def read(tree: Tree) -> tuple[PageReport, int]:
                return injected(tree, self.privileged), 0
            return read
        from cowprof.pages import Scanner

        scanner = self.scanner = Scanner(privileged=self.privileged, tolerance=tolerance, max_age=max_age)

        rereads = self.rereads

        def scanner_read(tree: Tree) -> tuple[PageReport, int]:
            # a ScanResult: (report, drift_pages)
            if rereads is not None:
                return rereads.read(scanner, tree, keep_addresses=keep_addresses)
            return scanner.read(tree, keep_addresses=keep_addresses)
        return scanner_read

    def stop(self) -> None:
        """Ask the iteration to end before the next sample (safe from a signal handler)."""
        self._stopped = True

    def _take(self, index: int, start: float, scheduled: float) -> Sample:
        began = self._clock()
        wall = self._wall_clock()
        lateness = max(0.0, began - scheduled)
        report = None
        error: CowprofError | None = None
        drift = 0
        try:
            tree = self._first_tree if self._first_tree is not None else self._find_tree(self.master)
            self._first_tree = None
            report, drift = self._read(tree)
        except CowprofError as exc:  # ProcessGone, AccessDenied, NotAPreforkTree...: per sample
            error = exc
        return Sample(index=index, time=wall, elapsed=began - start, lateness=lateness, report=report,
                      error=error, drift_pages=drift)

    def _schedule_stop(self, timer: Timer) -> str | None:
        """Why to stop before waiting for the next tick (:meth:`stop` called, count or duration reached)."""
        if self._stopped:
            return StopReason.STOPPED
        expired = timer.expired()
        if expired is not None:
            return StopReason.COUNT if expired == "count" else StopReason.DURATION
        return None

    def _wait(self, timer: Timer) -> float:
        """Sleep until the next tick is due; returns when it was scheduled."""
        scheduled = timer.due()
        delay = scheduled - self._clock()
        if delay > 0:
            self._sleep(delay)
        return scheduled

    def _target_stop(self) -> str | None:
        """Why to stop after the wait (:meth:`stop` called meanwhile, the master gone)."""
        if self._stopped:
            return StopReason.STOPPED
        if not self._is_alive(self.master):
            return StopReason.TARGET_EXITED
        return None

    @property
    def effective_interval(self) -> float:
        """Seconds between the last sample and the next one (> interval when max_cpu stretches it)."""
        return self.timer.effective_interval

    def __iter__(self) -> Iterator[Sample]:
        timer = self.timer = Timer(**self._timer_args)
        start = timer.start()
        index = 0
        while True:
            why = self._schedule_stop(timer)
            if why is None:
                scheduled = self._wait(timer)
                why = self._target_stop()
            if why is not None:
                self.stop_reason = why
                return
            sample = self._take(index, start, scheduled)
            if sample.error is not None and not self._is_alive(self.master):
                # the scan failed because the master exited mid-scan: that is the end, not an error
                self.stop_reason = StopReason.TARGET_EXITED
                return
            index += 1
            self.samples_taken = index
            yield sample
            timer.done(start + sample.elapsed)
