"""cowprof.timer.Timer on its own, with a fake clock: the grid, skipped ticks, stop rules, CPU cap."""
import pytest

from cowprof.timer import CPU_BURST_SECONDS, Timer
from conftest import FakeClocks


def run(timer: Timer, clocks: FakeClocks, work: float = 0.0, cpu: float = 0.0, limit: int = 100) -> list[float]:
    """Drives the timer as a sampler does; each sample takes ``work`` s of wall and ``cpu`` s of CPU.
    Returns when (relative to the start) each sample began."""
    start = timer.start()
    began = []
    while timer.expired() is None and len(began) < limit:
        clocks.now = max(clocks.now, timer.due())
        began.append(clocks.now - start)
        t = clocks.now
        clocks.now += work
        clocks.cpu += cpu
        timer.done(t)
    return began


def test_ticks_lie_on_a_fixed_grid_and_count_ends_it():
    c = FakeClocks()
    t = Timer(0.5, count=4, clock=c.clock, cpu_clock=c.cpu_clock)
    assert run(t, c, work=0.1) == [0.0, 0.5, 1.0, 1.5]
    assert t.expired() == "count"


def test_duration_is_inclusive():
    c = FakeClocks()
    t = Timer(1.0, duration=3.0, clock=c.clock, cpu_clock=c.cpu_clock)
    assert run(t, c) == [0.0, 1.0, 2.0, 3.0]
    assert t.expired() == "duration"


def test_a_slow_sample_skips_the_ticks_it_missed():
    """A 2.5 s sample at a 1 s interval: the next sample is on the grid at 3 s, not at 1, 2 and 3."""
    c = FakeClocks()
    t = Timer(1.0, count=3, clock=c.clock, cpu_clock=c.cpu_clock)
    assert run(t, c, work=2.5) == [0.0, 3.0, 6.0]
    assert t.effective_interval == pytest.approx(3.0)


@pytest.mark.parametrize("max_cpu, gap", [(None, 1.0), (0.02, 2.5)])
def test_cpu_cap_stretches_the_interval_after_the_burst(max_cpu, gap):
    """50 ms of CPU per sample: uncapped 1 Hz (the baseline); capped at 2%, one sample per 2.5 s
    once the burst credit (10 s at 2% = 0.2 s) is spent."""
    c = FakeClocks()
    t = Timer(1.0, count=30, max_cpu=max_cpu, clock=c.clock, cpu_clock=c.cpu_clock)
    began = run(t, c, cpu=0.05)
    gaps = [round(b - a, 6) for a, b in zip(began, began[1:])]
    assert gaps[0] == 1.0 and gaps[-10:] == [gap] * 10
    assert c.cpu - 0.05 <= (max_cpu or 1.0) * (began[-1] + CPU_BURST_SECONDS) + 1e-9


@pytest.mark.parametrize("kwargs", [dict(interval=0), dict(interval=1, max_cpu=0), dict(interval=1, max_cpu=1.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Timer(**kwargs)
