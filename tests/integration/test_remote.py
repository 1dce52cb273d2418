"""Attribution from outside (cowprof.remote): the objects on copied pages read from the master's
memory, without a heap map, on live trees of the synthetic apps (tests/attribution_apps.py).

* Accuracy: on the same tree (the app prepared with cowprof, so it has a heap map), the by-type
  table read from memory agrees with the heap map's within 5% of the copied bytes for every type,
  and within 5% of its own bytes for the culprit.
* Without cowprof (``--no-cowprof``: the master never imports it, no map): the culprit bars of
  test_attribution.py hold from outside, and fail for the other apps' culprits (baseline).
* By function: the functions the workers ran come out on top; in a run where the workers run
  nothing, they do not (baseline).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attribution_apps import HOT_RUN, App, app_python
from cowprof import attribution, cli, functions, heapmap
from cowprof.memreader import MemoryAccessDenied
from cowprof.pages import scan
from cowprof.remote import heapmap_from_memory
from cowprof.tree import find_tree

pytestmark = pytest.mark.skipif(app_python() is None, reason="the synthetic apps need CPython 3.12+")

BAR = 0.80
AGREE = 0.05
SIZES = {"floats": 300_000, "gc": 800_000, "strhash": 100_000}
CULPRIT_TYPE = {"floats": "float", "gc": "__main__.Node", "strhash": "str"}


def _table(w: attribution.WorkerAttribution) -> dict[str, int]:
    return dict(w.types)


@pytest.fixture(scope="module")
def same_tree():
    """Each app prepared with cowprof (heap map saved), attributed from the map and from memory."""
    out = {}
    for scenario, n in SIZES.items():
        with App(scenario, n=n) as app:
            tree = find_tree(app.master)
            report = scan(tree, keep_addresses=True)
            hm = heapmap.find_heapmap(tree.master)
            from_map = attribution.attribute(report, hm, causes=False)
            from_mem = attribution.attribute(report, heapmap_from_memory(report), causes=False)
            out[scenario] = (from_map, from_mem)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SIZES))
def test_from_memory_agrees_with_the_heap_map_within_5_percent_per_type(same_tree, scenario):
    from_map, from_mem = same_tree[scenario]
    assert from_mem.source.startswith("memory (CPython") and from_map.source == "heapmap"
    for wm, wr in zip(sorted(from_map.workers, key=lambda w: w.pid), sorted(from_mem.workers, key=lambda w: w.pid)):
        assert wm.pid == wr.pid and wm.copied_bytes == wr.copied_bytes > 1 << 20
        assert sum(b for _t, b in wr.types) + wr.no_object_bytes + wr.unknown_bytes == wr.copied_bytes
        a, b = _table(wm), _table(wr)
        for t in set(a) | set(b):
            diff = abs(a.get(t, 0) - b.get(t, 0))
            assert diff <= AGREE * wm.copied_bytes, (scenario, t, a.get(t, 0), b.get(t, 0), wm.copied_bytes)
        culprit = CULPRIT_TYPE[scenario]
        assert abs(a[culprit] - b[culprit]) <= AGREE * a[culprit]
        assert wr.unknown_bytes <= AGREE * wr.copied_bytes


@pytest.mark.slow
def test_agreement_bar_fails_for_a_wrong_table(same_tree):
    """Baseline of the agreement bar: the floats app's table from memory does not agree with the
    strhash app's map (the check can fail)."""
    floats_mem = same_tree["floats"][1].workers[0]
    strhash_map = same_tree["strhash"][0].workers[0]
    a, b = _table(strhash_map), _table(floats_mem)
    worst = max(abs(a.get(t, 0) - b.get(t, 0)) / strhash_map.copied_bytes for t in set(a) | set(b))
    assert worst > AGREE


@pytest.fixture(scope="module")
def unprepared():
    """Each app with a master that never imported cowprof, attributed from outside by type and cause."""
    out = {}
    for scenario, n in SIZES.items():
        with App(scenario, n=n, cowprof=False) as app:
            maps = open(f"/proc/{app.master}/maps").read()
            assert "cowprof" not in maps, "the master must not have loaded cowprof"
            with pytest.raises(heapmap.NoHeapMap):
                heapmap.find_heapmap(app.master)
            out[scenario] = attribution.snapshot(app.master, causes=True)
    return out


def _share(w: attribution.WorkerAttribution, name: str) -> float:
    return _table(w).get(name, 0) / w.copied_bytes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SIZES))
def test_culprit_type_holds_80_percent_from_outside(unprepared, scenario):
    attr = unprepared[scenario]
    assert attr.source.startswith("memory") and attr.causes_error is None
    for w in attr.workers:
        assert w.copied_bytes > 1 << 20
        assert _share(w, CULPRIT_TYPE[scenario]) >= BAR, (scenario, w.types[:3])
        assert w.causes is not None and sum(w.causes.values()) == w.copied_bytes
    if scenario == "gc":  # the cause view works from outside too
        assert all(w.causes["gc_header"] >= BAR * w.copied_bytes for w in attr.workers)
    if scenario == "strhash":
        assert all(w.causes["str_hash"] + w.causes["refcount"] >= BAR * w.copied_bytes for w in attr.workers)


@pytest.mark.slow
@pytest.mark.parametrize("bar_of", list(SIZES))
def test_culprit_bar_fails_for_the_other_apps_from_outside(unprepared, bar_of):
    for scenario, attr in unprepared.items():
        if scenario != bar_of:
            assert all(_share(w, CULPRIT_TYPE[bar_of]) < BAR for w in attr.workers)


def _functions(active: int | None, cowprof: bool) -> functions.FunctionAttribution:
    with App("functions", n=0, active=active, cowprof=cowprof) as app:
        return functions.snapshot(app.master)


@pytest.mark.slow
@pytest.mark.parametrize("cowprof", [True, False], ids=["heapmap", "from-outside"])
def test_functions_the_workers_ran_come_out_on_top(cowprof):
    fa = _functions(None, cowprof)
    top = [f.name for f, _b in fa.functions[:HOT_RUN]]
    assert sorted(top) == [f"__main__.hot_{i}" for i in range(HOT_RUN)], fa.functions[:5]
    for f, _b in fa.functions[:HOT_RUN]:
        assert f.filename.startswith("<hot_") and f.firstlineno == 1
    assert fa.code_bytes > 0 and fa.to_dict(top=3)["functions"][0]["function"].startswith("__main__.hot_")
    assert ("__main__", fa.to_dict()["modules"][0]["bytes"]) != ("__main__", 0)


@pytest.mark.slow
def test_functions_baseline_idle_workers_do_not_put_them_on_top():
    fa = _functions(0, False)
    top = [f.name for f, _b in fa.functions[:HOT_RUN]]
    assert sorted(top) != [f"__main__.hot_{i}" for i in range(HOT_RUN)]


@pytest.mark.slow
def test_cli_by_type_and_function_on_a_master_without_cowprof():
    with App("floats", n=100_000, cowprof=False) as app:
        def run(*args):
            return subprocess.run([sys.executable, "-m", "cowprof", "snapshot", str(app.master), *args],
                                  capture_output=True, text=True, timeout=120)
        by_type = run("--by", "type", "--json")
        table = run("--by", "type")
        by_fn = run("--by", "function", "--json", "--top", "5")
    assert by_type.returncode == 0, by_type.stderr
    data = json.loads(by_type.stdout)
    assert data["source"].startswith("memory (CPython")
    assert data["workers"][0]["types"][0]["type"] == "float"
    assert "unknown_bytes" in data["workers"][0]
    assert table.returncode == 0 and "float" in table.stdout and "read from outside" in " ".join(table.stdout.split())
    assert by_fn.returncode == 0, by_fn.stderr
    fn = json.loads(by_fn.stdout)
    assert len(fn["functions"]) <= 5 and fn["modules"] and fn["code_bytes"] >= 0


@pytest.mark.slow
def test_cli_without_rights_prints_regions_and_one_line(monkeypatch, capsys):
    """No heap map and no ptrace rights: the by-region view, one line saying what is needed, exit 4."""
    from cowprof.remote import target

    def denied(pid, procfs_root="/proc"):
        raise MemoryAccessDenied(pid, procfs_root)

    with App("floats", n=50_000, cowprof=False) as app:
        monkeypatch.setattr(target, "MemReader", denied)
        code = cli.main(["snapshot", str(app.master), "--by", "type"])
    out, err = capsys.readouterr()
    assert code == 4
    assert err.startswith("cowprof: ") and len(err.strip().splitlines()) == 1
    assert "ptrace" in err and "root" in err and "prepare_fork" in err
    assert "python" in out.lower() and "heap" in out.lower()  # the region table
