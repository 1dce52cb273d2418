"""cowprof.sampler.Sampler on fake clocks and scans: the sampling grid, lateness and errors,
following the master, stop rules, and the CPU cap (no process is started)."""
from __future__ import annotations

import pytest

from cowprof.errors import AccessDenied, ProcessGone
from cowprof.sampler import Sampler, StopReason
from cowprof.tree import Tree
from conftest import page_report


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_sampler_grid_lateness_and_errors():
    clock = Clock()
    calls = []

    def scan(tree, privileged):
        calls.append(clock.now)
        if len(calls) == 2:
            clock.now += 2.5  # a slow scan: misses two ticks
            raise AccessDenied(11)
        return page_report()

    s = Sampler(10, interval=1.0, count=4, find_tree=lambda pid: Tree(10, (11,)), scan=scan,
                is_alive=lambda pid: True, clock=clock, wall_clock=clock, sleep=clock.sleep)
    samples = list(s)
    assert [x.index for x in samples] == [0, 1, 2, 3]
    assert samples[1].error is not None and samples[1].report is None
    assert calls == [0.0, 1.0, 4.0, 5.0]  # ticks 2 and 3 skipped after the slow scan
    assert s.stop_reason == StopReason.COUNT


def test_sampler_follows_the_master_and_stops_when_it_exits():
    clock = Clock()
    alive = [True, True, False]
    asked = []

    def find_tree(pid):
        asked.append(pid)
        return Tree(10, (11,))

    s = Sampler(11, interval=1.0, find_tree=find_tree, scan=lambda t, p: page_report(),
                is_alive=lambda pid: alive.pop(0), clock=clock, wall_clock=clock, sleep=clock.sleep)
    assert s.master == 10
    assert len(list(s)) == 2
    assert asked == [11, 10]  # the first tree from the constructor, then re-discovered by master
    assert s.stop_reason == StopReason.TARGET_EXITED


def test_sampler_duration_is_inclusive():
    clock = Clock()
    s = Sampler(10, interval=0.5, duration=2.0, find_tree=lambda pid: Tree(10, (11,)),
                scan=lambda t, p: page_report(), is_alive=lambda pid: True,
                clock=clock, wall_clock=clock, sleep=clock.sleep)
    assert [x.elapsed for x in s] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert s.stop_reason == StopReason.DURATION


@pytest.mark.parametrize("max_cpu, gap", [(None, 1.0), (0.02, 2.5)])
def test_sampler_cpu_cap_stretches_the_interval(max_cpu, gap):
    """Each sample costs 50 ms of CPU: uncapped (the baseline) that is 1 Hz; capped at 2% of a
    core, samples come every 2.5 s once the burst credit (10 s at 2% = 0.2 s) is spent."""
    from cowprof.sampler import CPU_BURST_SECONDS

    clock = Clock()
    cpu = [0.0]

    def scan(tree, privileged):
        cpu[0] += 0.05
        return page_report()

    s = Sampler(10, interval=1.0, count=30, max_cpu=max_cpu, find_tree=lambda pid: Tree(10, (11,)),
                scan=scan, is_alive=lambda pid: True, clock=clock, wall_clock=clock,
                sleep=clock.sleep, cpu_clock=lambda: cpu[0])
    times = [x.elapsed for x in s]
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    assert gaps[0] == 1.0 and gaps[-10:] == [gap] * 10
    # the CPU of all samples but the last, over the time up to the last one: at most the cap,
    # plus the burst credit
    assert cpu[0] - 0.05 <= (max_cpu or 1.0) * (times[-1] + CPU_BURST_SECONDS) + 1e-9


def test_sampler_cpu_cap_lets_a_rare_expensive_scan_through():
    """Mostly cheap samples (an unchanged tree) with a 60 ms full scan every 10th: under a 1.5% cap
    the average allows 1 Hz, so the credit absorbs the expensive ones (a smoothed per-sample
    cost would stretch the interval to 4 s after each of them)."""
    clock = Clock()
    cpu = [0.0]
    n = [0]

    def scan(tree, privileged):
        cpu[0] += 0.06 if n[0] % 10 == 0 else 0.002
        n[0] += 1
        return page_report()

    s = Sampler(10, interval=1.0, count=40, max_cpu=0.015, find_tree=lambda pid: Tree(10, (11,)),
                scan=scan, is_alive=lambda pid: True, clock=clock, wall_clock=clock,
                sleep=clock.sleep, cpu_clock=lambda: cpu[0])
    times = [x.elapsed for x in s]
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [1.0] * 39


def test_sampler_error_when_master_dies_mid_scan_ends_cleanly():
    clock = Clock()
    alive = [True, False]

    def scan(tree, privileged):
        raise ProcessGone(10)

    s = Sampler(10, find_tree=lambda pid: Tree(10, (11,)), scan=scan,
                is_alive=lambda pid: alive.pop(0), clock=clock, wall_clock=clock, sleep=clock.sleep)
    assert list(s) == [] and s.stop_reason == StopReason.TARGET_EXITED


def test_samples_carry_the_drift_bound_of_the_scanners_answer():
    from cowprof.pages import ScanResult

    clock = Clock()
    answers = [ScanResult(page_report(), 0), ScanResult(page_report(), 40)]
    s = Sampler(10, interval=1.0, count=2, tolerance=0.01, keep_addresses=True,
                find_tree=lambda pid: Tree(10, (11,)), is_alive=lambda pid: True, clock=clock, wall_clock=clock,
                sleep=clock.sleep)
    asked = []
    assert s.scanner is not None

    def read(tree, *, keep_addresses=False):
        asked.append((tree, keep_addresses))
        return answers.pop(0)

    s.scanner.read = read  # type: ignore[method-assign]
    assert [x.drift_pages for x in s] == [0, 40]
    assert asked == [(Tree(10, (11,)), True)] * 2
    # an injected scan has no bound: its samples are exact
    s = Sampler(10, interval=1.0, count=1, find_tree=lambda pid: Tree(10, (11,)), scan=lambda t, p: page_report(),
                is_alive=lambda pid: True, clock=clock, wall_clock=clock, sleep=clock.sleep)
    assert [x.drift_pages for x in s] == [0] and s.scanner is None
