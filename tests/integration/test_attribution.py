"""Attribution on live pre-fork trees whose culprit is known (tests/attribution_apps.py).

Each app's culprit must hold at least 80% of every worker's copied bytes, and the same 80% bar
must fail for the culprits of the other apps (the baselines: a classifier that named everything
after one cause would fail them). The apps need CPython 3.12+; on 3.11 they run under the
project's 3.12/3.13 venv while the profiler side runs on 3.11.
"""
from __future__ import annotations

import pytest

from attribution_apps import App, app_python
from cowprof import attribution, heapmap
from cowprof.memreader import MemoryAccessDenied
from cowprof.pages import scan
from cowprof.tree import find_tree

# The profiler (this process) is an ancestor of the workers, so it may read their memory even
# under Yama's ptrace_scope=1.
pytestmark = pytest.mark.skipif(app_python() is None, reason="the synthetic apps need CPython 3.12+")

BAR = 0.80
SIZES = {"floats": 300_000, "gc": 800_000, "strhash": 100_000}


def _share_type(w: attribution.WorkerAttribution, name: str) -> float:
    return dict(w.types).get(name, 0) / w.copied_bytes


def _share_causes(w: attribution.WorkerAttribution, *causes: str) -> float:
    assert w.causes is not None
    return sum(w.causes[c] for c in causes) / w.copied_bytes


# the bar of each app: (description, share function)
BARS = {
    "floats": [("type float", lambda w: _share_type(w, "float")),
               ("refcount + identical content", lambda w: _share_causes(w, "refcount", "identical"))],
    "gc": [("GC header", lambda w: _share_causes(w, "gc_header"))],
    "strhash": [("type str", lambda w: _share_type(w, "str")),
                ("str hash", lambda w: _share_causes(w, "str_hash"))],
}


@pytest.fixture(scope="module")
def runs():
    """Each app once (2 workers), attributed by type and cause, then stopped."""
    out = {}
    for scenario, n in SIZES.items():
        with App(scenario, n=n) as app:
            attr = attribution.snapshot(app.master, causes=True)
            out[scenario] = (app.master, app.workers, attr)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SIZES))
def test_culprit_holds_80_percent_of_every_workers_copied_bytes(runs, scenario):
    _master, workers, attr = runs[scenario]
    assert attr.causes_error is None
    assert sorted(w.pid for w in attr.workers) == sorted(workers)
    for w in attr.workers:
        assert w.copied_bytes > 1 << 20  # the culprit really copied memory
        assert w.causes is not None and sum(w.causes.values()) == w.copied_bytes
        assert sum(b for _t, b in w.types) + w.no_object_bytes == w.copied_bytes
        for what, share in BARS[scenario]:
            assert share(w) >= BAR, f"{scenario}: {what} holds only {share(w):.1%} of worker {w.pid}'s copies"


@pytest.mark.slow
@pytest.mark.parametrize("bar_of", list(SIZES))
def test_same_bar_fails_for_the_other_apps(runs, bar_of):
    """Baselines: the other apps' copies are not attributed to this app's culprit."""
    for scenario, (_m, _w, attr) in runs.items():
        if scenario == bar_of:
            continue
        for w in attr.workers:
            for what, share in BARS[bar_of]:
                assert share(w) < BAR, f"{what} holds {share(w):.1%} of the {scenario} app's copies"


@pytest.mark.slow
def test_top_types_and_causes_name_the_culprit(runs):
    assert runs["floats"][2].total_types()[0][0] == "float"
    assert (runs["floats"][2].total_causes() or [])[0][0] == "identical"
    assert (runs["gc"][2].total_causes() or [])[0][0] == "gc_header"
    assert runs["strhash"][2].total_types()[0][0] == "str"
    assert (runs["strhash"][2].total_causes() or [])[0][0] == "str_hash"


@pytest.mark.slow
def test_idle_sibling_keeps_the_original_and_it_is_used():
    """Only the first worker hashes: the master's page is still shared (with the idle worker), so
    the original is certain; the idle worker copied little and none of it is str hashes."""
    with App("strhash", n=SIZES["strhash"], active=1) as app:
        attr = attribution.snapshot(app.master, causes=True)
    by_pid = {w.pid: w for w in attr.workers}
    busy, idle = by_pid[app.workers[0]], by_pid[app.workers[1]]
    assert busy.originals is not None
    assert busy.originals["master"] >= BAR * busy.copied_bytes
    assert _share_causes(busy, "str_hash") >= BAR
    assert idle.copied_bytes < busy.copied_bytes / 4
    assert idle.causes is not None and idle.causes["str_hash"] < BAR * idle.copied_bytes


@pytest.mark.slow
def test_without_memory_access_by_type_remains_and_says_what_is_needed(monkeypatch):
    def denied(pid: int):
        raise MemoryAccessDenied(pid)

    with App("strhash", n=50_000) as app:
        tree = find_tree(app.master)
        hm = heapmap.find_heapmap(tree.master)
        report = scan(tree, keep_addresses=True)
        attr = attribution.attribute(report, hm, causes=True, open_reader=denied)
        monkeypatch.setattr(attribution, "MemReader", lambda pid, root="/proc": denied(pid))
        via_snapshot = attribution.snapshot(app.master, causes=True)
    for a in (attr, via_snapshot):
        assert a.causes_error is not None
        assert "ptrace" in a.causes_error and "root" in a.causes_error
        assert not a.has_causes and a.total_causes() is None
        assert a.workers and all(w.causes is None for w in a.workers)
        assert all(_share_type(w, "str") >= BAR for w in a.workers)


@pytest.mark.slow
def test_heapmap_is_found_through_the_masters_environment(tmp_path, monkeypatch):
    """A profiler whose own heap map directory differs (e.g. root inspecting a server user) finds
    the map where the master's environment says it saved it."""
    with App("strhash", n=20_000) as app:
        monkeypatch.setenv(heapmap.DIR_ENV, str(tmp_path / "elsewhere"))
        hm = heapmap.find_heapmap(app.master)
        assert hm.pid == app.master and len(hm) > 20_000
        with pytest.raises(heapmap.NoHeapMap, match="prepare_fork"):
            heapmap.find_heapmap(app.master, directory=str(tmp_path / "elsewhere"))


@pytest.mark.slow
def test_cli_snapshot_by_type_and_by_cause_on_a_live_tree():
    """The CLI path end to end: `cowprof snapshot PID --by type|cause` in a real subprocess."""
    import json
    import subprocess
    import sys

    with App("floats", n=100_000) as app:
        def run(*args):
            return subprocess.run([sys.executable, "-m", "cowprof", "snapshot", str(app.master), *args],
                                  capture_output=True, text=True, timeout=60)
        by_type = run("--by", "type", "--json")
        by_cause = run("--by", "cause", "--top", "3")
    assert by_type.returncode == 0, by_type.stderr
    data = json.loads(by_type.stdout)
    assert "Traceback" not in by_type.stderr
    assert "float" in by_type.stdout and str(app.workers[0]) in by_type.stdout
    assert data
    assert by_cause.returncode == 0, by_cause.stderr
    assert "refcount" in by_cause.stdout.lower() or "identical" in by_cause.stdout.lower()


def test_cli_snapshot_by_type_without_heap_map_reads_the_objects_from_memory(tmp_path):
    """No heap map where the profiler looks: as root the objects are read from the master's memory
    (tests/integration/test_remote.py covers it in depth; without the rights it is a one-line error)."""
    import json
    import os
    import subprocess
    import sys

    from forktree import ForkTree

    # the master runs 3.12+ (whose layouts the reader knows); the profiler is this interpreter
    with ForkTree(workers=1, master_mb=4, python=app_python()) as tree:
        proc = subprocess.run([sys.executable, "-m", "cowprof", "snapshot", str(tree.master_pid), "--by", "type",
                               "--json"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COWPROF_HEAPMAP_DIR": str(tmp_path)})
    if os.geteuid() != 0:
        assert proc.returncode == 4 and len(proc.stderr.strip().splitlines()) == 1
        return
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"].startswith("memory (CPython")
