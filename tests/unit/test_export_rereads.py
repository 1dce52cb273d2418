"""The page-table re-read policy of ``top`` and ``export`` (cowprof.timer.Rereads) on fake clocks:
against a real Scanner over a fake /proc (the model tree of test_pages_model, its page faults
bumped in ``stat``), and against a stand-in Scanner for the CPU arithmetic; and what the exporter
publishes of it (cowprof_pages_drift_bytes, cowprof_pages_read_timestamp_seconds)."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cowprof import pages, procfs
from cowprof.errors import BadInput
from cowprof.exporter import Exporter, MasterFinder, check_options, identify, make_scan
from cowprof.pages import ScanResult
from cowprof.reporters.prometheus import ExporterStatus, exposition, metric_families
from cowprof.timer import (CPU_BURST_SECONDS, DEFAULT_EXPORT_MAX_CPU, EXPORT_MAX_AGE_INTERVALS,
                           EXPORT_TOLERANCE, TOP_AGE_SHARE, Rereads)
from cowprof.tree import Tree
from conftest import FakeClocks, MiB, master_dict, page_report, worker_dict

# the model tree of test_pages_model (loaded by path: the test modules are not a package)
_spec = importlib.util.spec_from_file_location("_pages_model", pathlib.Path(__file__).with_name("test_pages_model.py"))
assert _spec is not None and _spec.loader is not None
_pages_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pages_model)
MASTER, _model = _pages_model.MASTER, _pages_model._model




# --- a real Scanner over a fake /proc ---------------------------------------------------------

def _fault(root: str, pid: int, n: int) -> None:
    """``n`` more minor faults in the fake ``/proc/PID/stat`` (field 10)."""
    path = os.path.join(root, str(pid), "stat")
    with open(path) as f:
        head, rest = f.read().rsplit(") ", 1)
    fields = rest.split()
    fields[7] = str(int(fields[7]) + n)
    with open(path, "w") as f:
        f.write(f"{head}) {' '.join(fields)}\n")


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    model, root = _model(tmp_path, monkeypatch, 3, 2)

    class NoExit(procfs.ExitWatch):  # its pidfd check would look at the real /proc
        def exited(self) -> bool:
            return False

    monkeypatch.setattr(procfs, "ExitWatch", NoExit)
    return Tree(MASTER, tuple(model.workers)), root


def test_top_policy_on_a_scanner_reads_when_over_the_tolerance_or_max_age_refreshes(fake_tree):
    """Tolerance 64 pages (the model tree is small); 10 faults a refresh stay under it for 6
    refreshes, so the max age (5 refreshes, counted in refreshes) ends each stretch."""
    tree, root = fake_tree
    sc = pages.Scanner(privileged=False, procfs_root=root, tolerance=0.001)
    c = FakeClocks(now=1000.0)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, clock=c.clock, cpu_clock=c.cpu_clock)
    read, drifts = [], []
    for i in range(13):
        if i:
            _fault(root, tree.workers[0], 10)
        before = policy.rereads
        r = policy.read(sc, tree)
        read.append(policy.rereads > before)
        drifts.append(r.drift_pages)
        assert sc.max_age is None  # ages are counted by the policy, in checks
    assert [i for i, r in enumerate(read) if r] == [0, 6, 12]
    assert drifts[:7] == [0, 10, 20, 30, 40, 50, 0]
    # more than the tolerance at once: read now
    _fault(root, tree.workers[1], 65)
    before = policy.rereads
    r = policy.read(sc, tree)
    assert policy.rereads == before + 1 and r.drift_pages == 0 and policy.age == 0


def test_an_idle_tree_is_never_read_again_and_stays_exact(fake_tree):
    tree, root = fake_tree
    sc = pages.Scanner(privileged=False, procfs_root=root, tolerance=0.001)
    c = FakeClocks(now=1000.0)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, clock=c.clock, cpu_clock=c.cpu_clock)
    for _ in range(20):
        r = policy.read(sc, tree)
        assert r.drift_pages == 0 and policy.age == 0
    assert policy.rereads == 1 and sc.unchanged == 19


def test_a_kept_report_after_an_exactly_unchanged_check_still_ages(fake_tree):
    """An exactly unchanged check re-stamps its report (exact now: age 0); a later check that keeps
    the report within the tolerance returns it with its read's taken_at and counts as older."""
    tree, root = fake_tree
    sc = pages.Scanner(privileged=False, procfs_root=root, tolerance=0.001)
    c = FakeClocks(now=1000.0)
    policy = Rereads(tolerance=0.001, max_age=2, interval=1.0, clock=c.clock, cpu_clock=c.cpu_clock)
    r = policy.read(sc, tree)
    first = r.report
    r = policy.read(sc, tree)  # unchanged: re-stamped
    assert policy.age == 0
    _fault(root, tree.workers[0], 3)
    r = policy.read(sc, tree)
    kept = r.report
    assert kept.taken_at == first.taken_at and r.drift_pages == 3 and policy.age == 1
    _fault(root, tree.workers[0], 3)
    r = policy.read(sc, tree)
    assert policy.age == 2 and policy.rereads == 1
    _fault(root, tree.workers[0], 3)
    r = policy.read(sc, tree)  # max age: read
    assert policy.rereads == 2 and policy.age == 0 and r.drift_pages == 0


def test_a_deferred_check_keeps_the_report_past_the_tolerance_and_says_so(fake_tree):
    """With the CPU budget used up a check keeps the report however many pages faulted (the
    drift says how many), until the hard age; new or gone processes are read at once anyway."""
    tree, root = fake_tree
    sc = pages.Scanner(privileged=False, procfs_root=root, tolerance=0.001)
    c = FakeClocks(now=1000.0)
    policy = Rereads(tolerance=0.001, max_age=3, interval=1.0, max_cpu=0.01, hard_age=4,
                     clock=c.clock, cpu_clock=c.cpu_clock)
    r = policy.read(sc, tree)
    first = r.report
    rss_pages = (first.master.rss_bytes + sum(w.rss_bytes for w in first.workers)) // first.page_size
    step = 40
    assert 4 * step > sc.MIN_TOLERANCE_PAGES and 4 * step < Rereads.DEFER_TOLERANCE * rss_pages
    c.cpu += 10.0  # far over the budget: no credit for a long while
    for i in range(1, 5):
        c.now += 1.0
        _fault(root, tree.workers[0], step)
        before = policy.rereads
        r = policy.read(sc, tree)
        assert policy.rereads == before and r.drift_pages == step * i and policy.age == i
    c.now += 1.0
    _fault(root, tree.workers[0], 1)
    r = policy.read(sc, tree)  # the hard age: read, budget or not
    assert policy.rereads == 2 and r.drift_pages == 0
    fewer = Tree(MASTER, tree.workers[:1])
    before = policy.rereads
    r = policy.read(sc, fewer)
    assert policy.rereads == before + 1


# --- the CPU arithmetic, on a stand-in Scanner ------------------------------------------------

class FakeScanner:
    """What Rereads uses of a Scanner: ``faults`` pending since the last read decide, as the
    Scanner does (``rss_pages`` resident, at least 64 pages of tolerance); a read costs ``cost``
    CPU seconds on the fake clocks."""

    MIN_TOLERANCE_PAGES = 64

    def __init__(self, clocks: FakeClocks, *, cost: float, rss_pages: int = 1_000_000) -> None:
        self.c = clocks
        self.cost = cost
        self.rss_pages = rss_pages
        self.tolerance = 0.0
        self.max_age: float | None = 99.0
        self.unchanged = 0
        self.drift_pages = 0
        self.faults = 0
        self.report = None
        self.tolerances: list[float] = []

    def read(self, target, *, keep_addresses=False):
        self.tolerances.append(self.tolerance)
        if self.report is not None and self.faults == 0:
            self.unchanged += 1
            self.drift_pages = 0
            self.report = self.report.replace(taken_at=self.c.now)
            return ScanResult(self.report, self.drift_pages)
        limit = max(self.MIN_TOLERANCE_PAGES, int(self.tolerance * self.rss_pages))
        if self.report is not None and self.tolerance > 0 and self.faults <= limit:
            self.unchanged += 1
            self.drift_pages = self.faults
            return ScanResult(self.report, self.drift_pages)
        self.c.cpu += self.cost
        self.faults = self.drift_pages = 0
        self.report = page_report([worker_dict(11, MiB)], master=master_dict(10), taken_at=self.c.now)
        return ScanResult(self.report, self.drift_pages)


def _run(policy: Rereads, sc: FakeScanner, c: FakeClocks, *, checks: int, faults: int, interval: float,
         check_cpu: float = 0.0) -> list[int]:
    """``checks`` checks ``interval`` apart, ``faults`` new faults before each; the indices that read."""
    read = []
    for i in range(checks):
        before = policy.rereads
        r = policy.read(sc, None)  # type: ignore[arg-type]
        if policy.rereads > before:
            read.append(i)
        c.cpu += check_cpu
        c.now += interval
        sc.faults += faults
    return read


def test_top_max_age_stretches_with_the_cost_of_a_read():
    """A 60 ms read at 1 Hz: at most TOP_AGE_SHARE (0.2%) of a core for max-age reads, i.e. every
    30 refreshes; a 6 ms read keeps the 5 refreshes."""
    c = FakeClocks(now=1000.0)
    sc = FakeScanner(c, cost=0.060)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, age_share=TOP_AGE_SHARE,
                     clock=c.clock, cpu_clock=c.cpu_clock)
    assert _run(policy, sc, c, checks=70, faults=10, interval=1.0) == [0, 31, 62]
    assert policy.effective_max_age == 30
    c2 = FakeClocks(now=1000.0)
    cheap = FakeScanner(c2, cost=0.006)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, age_share=TOP_AGE_SHARE,
                     clock=c2.clock, cpu_clock=c2.cpu_clock)
    assert _run(policy, cheap, c2, checks=13, faults=10, interval=1.0) == [0, 6, 12]


def test_over_the_tolerance_every_check_reads_without_a_budget():
    c = FakeClocks(now=1000.0)
    sc = FakeScanner(c, cost=0.060)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, age_share=TOP_AGE_SHARE,
                     clock=c.clock, cpu_clock=c.cpu_clock)
    assert _run(policy, sc, c, checks=10, faults=5000, interval=1.0) == list(range(10))


@pytest.mark.parametrize("cost, check_cpu", [(0.1, 0.001), (0.3, 0.002), (0.02, 0.0)])
def test_the_budget_holds_the_exporters_cpu(cost, check_cpu):
    """A tree always over the tolerance, 5 s checks, 0.8% of a core: reads wait for credit, and
    over any run the CPU stays within max_cpu x (T + the burst)."""
    c = FakeClocks(now=1000.0)
    sc = FakeScanner(c, cost=cost)
    max_cpu = DEFAULT_EXPORT_MAX_CPU / 100
    policy = Rereads(tolerance=EXPORT_TOLERANCE, max_age=EXPORT_MAX_AGE_INTERVALS, interval=5.0,
                     max_cpu=max_cpu, clock=c.clock, cpu_clock=c.cpu_clock)
    start = c.now
    read = _run(policy, sc, c, checks=200, faults=5000, interval=5.0, check_cpu=check_cpu)
    spent, span = c.cpu, c.now - start
    assert spent <= max_cpu * (span + CPU_BURST_SECONDS) + cost  # the last read may overdraw once
    if 5.0 * max_cpu >= check_cpu + cost:  # cheap enough for every check
        assert read == list(range(200))
    else:
        assert 0 < len(read) < 200
        assert spent >= 0.8 * max_cpu * span  # the budget is used, not starved
    # deferred checks kept the report past the tolerance, with their drift
    assert set(sc.tolerances) <= {EXPORT_TOLERANCE, Rereads.DEFER_TOLERANCE, 0.0}


def test_a_budget_the_checks_alone_exceed_still_reads_at_the_hard_age():
    c = FakeClocks(now=1000.0)
    sc = FakeScanner(c, cost=0.1)
    policy = Rereads(tolerance=0.001, max_age=3, interval=1.0, max_cpu=0.001, clock=c.clock,
                     cpu_clock=c.cpu_clock)
    read = _run(policy, sc, c, checks=30, faults=5000, interval=1.0, check_cpu=0.01)
    assert read == [0, 7, 14, 21, 28]  # twice the max age (6 checks) old, then read


def test_bad_policy_arguments():
    for kw in ({"tolerance": 1.0}, {"max_age": 0}, {"interval": 0}, {"max_cpu": 0.0},
               {"age_share": 2.0}):
        args = {"tolerance": 0.001, "max_age": 5, "interval": 1.0, **kw}
        with pytest.raises(ValueError):
            Rereads(**args)


# --- what the exporter publishes --------------------------------------------------------------

def _families(text: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def test_the_exporter_publishes_the_drift_and_when_the_pages_were_read():
    """cowprof_last_scan_timestamp_seconds is the check's time (every check);
    cowprof_pages_read_timestamp_seconds the kept report's taken_at; the drift in bytes."""
    me = identify(os.getpid())
    assert me is not None
    report = page_report([worker_dict(11, MiB)], master=master_dict(os.getpid()), taken_at=1234.5)
    drift = [0]
    exp = Exporter(me, MasterFinder(pidfile=None, cmdline="x", find_tree=lambda pid: Tree(pid, (11,))),
                   find_tree=lambda pid: Tree(pid, (11,)), scan=lambda tree: ScanResult(report, drift[0]))
    exp.step()
    _, status = exp.snapshot()
    assert status.pages_read_at == 1234.5 and status.drift_bytes == 0
    first_check = status.last_scan_at
    assert first_check is not None and first_check > 1234.5
    drift[0] = 7
    exp.step()
    snap_report, status = exp.snapshot()
    assert status.drift_bytes == 7 * report.page_size and status.pages_read_at == 1234.5
    assert status.last_scan_at is not None and status.last_scan_at >= first_check
    fams = {m.name: m for m in metric_families(snap_report, status)}
    assert fams["cowprof_pages_drift_bytes"].samples[0].value == 7 * report.page_size
    assert fams["cowprof_pages_read_timestamp_seconds"].samples[0].value == 1234.5
    assert fams["cowprof_last_scan_timestamp_seconds"].samples[0].value == status.last_scan_at


def test_new_metrics_only_with_a_report_and_not_in_a_one_shot_exposition():
    report = page_report([worker_dict(11, MiB)], master=master_dict(10))
    one_shot = _families(exposition(report))
    assert "cowprof_pages_drift_bytes" not in one_shot  # cowprof snapshot's exposition: unchanged
    assert "cowprof_pages_read_timestamp_seconds" not in one_shot
    status = ExporterStatus(up=False, drift_bytes=0.0, pages_read_at=5.0, last_scan_at=6.0)
    names = {m.name for m in metric_families(None, status)}
    assert "cowprof_pages_drift_bytes" not in names and "cowprof_pages_read_timestamp_seconds" not in names
    with_report = _families(exposition(report, ExporterStatus(up=True, last_scan_at=6.0, drift_bytes=4096.0,
                                                              pages_read_at=5.0)))
    assert with_report["cowprof_pages_drift_bytes"][0].value == 4096.0
    assert with_report["cowprof_pages_read_timestamp_seconds"][0].value == 5.0
    assert with_report["cowprof_last_scan_timestamp_seconds"][0].value == 6.0


def test_make_scan_exact_has_no_tolerance(monkeypatch):
    made = []
    real = pages.Scanner

    def scanner(**kw):
        made.append(kw)
        return real(**kw)

    monkeypatch.setattr(pages, "Scanner", scanner)
    make_scan(interval=5.0, exact=True)
    make_scan(interval=5.0)
    assert made == [{"privileged": False}, {"privileged": False, "tolerance": EXPORT_TOLERANCE}]


@pytest.mark.parametrize("bad", [-1, 101, float("nan"), True])
def test_bad_max_cpu_is_a_one_line_bad_input(bad):
    with pytest.raises(BadInput, match="--max-cpu"):
        check_options(port=0, interval=5.0, bind="127.0.0.1", max_cpu=bad)


def test_top_max_age_stretch_stops_at_the_limit():
    """A 1 s re-read at 1 Hz would stretch the max age to 500 refreshes; the limit keeps 60."""
    c = FakeClocks(now=1000.0)
    sc = FakeScanner(c, cost=1.0)
    policy = Rereads(tolerance=0.001, max_age=5, interval=1.0, age_share=TOP_AGE_SHARE, age_limit=60,
                     clock=c.clock, cpu_clock=c.cpu_clock)
    assert _run(policy, sc, c, checks=130, faults=10, interval=1.0) == [0, 61, 122]
    assert policy.effective_max_age == 60
