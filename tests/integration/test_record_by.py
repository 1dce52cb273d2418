"""record --by on live pre-fork trees whose culprit is known (tests/attribution_apps.py): every
sample carries the attribution a snapshot of the same idle tree gives, from the master's heap map
and from its memory (a master that never imported cowprof); report shows it over time.

The bars are the ones of the snapshot tests, each paired with a baseline that must fail it: the
str-hash app's culprits (type str, cause "str hash") hold >= 80% of every worker's copied bytes in
every sample while the GC-header cause holds < 80%; in the functions app the two functions the
workers ran are the top two of every sample, and in a run where the workers ran nothing they are not.
"""
from __future__ import annotations

import json

import pytest

from attribution_apps import HOT_RUN, App, app_python
from cowprof import attribution
from cowprof.attributor import Attributor
from cowprof.cli import main
from cowprof.record import read_record
from cowprof.sampler import Sampler

pytestmark = pytest.mark.skipif(app_python() is None, reason="the synthetic apps need CPython 3.12+")

BAR = 0.80
HOT = sorted(f"__main__.hot_{i}" for i in range(HOT_RUN))


def _share(w: attribution.WorkerAttribution, name: str) -> float:
    return dict(w.types).get(name, 0) / w.copied_bytes


def test_record_by_cause_on_a_prepared_tree(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    with App("strhash", n=100_000) as app:
        assert main(["record", str(app.master), "-o", str(path), "--by", "cause", "--count", "3",
                     "--interval", "0.2"]) == 0
        snap = attribution.snapshot(app.master, causes=True)
    rec = read_record(path)
    assert rec.attributed_by == ["cause"] and len(rec.samples) == 3
    for s in rec.samples:
        attr = s.attribution
        assert attr is not None and attr.source == "heapmap" and attr.has_causes, s.attribution_error
        assert {w.pid for w in attr.workers} == set(app.workers)
        for w in attr.workers:
            assert w.copied_bytes == next(x.copied_bytes for x in s.report.workers if x.pid == w.pid)
            assert _share(w, "str") >= BAR, w.types[:3]
            assert w.causes["str_hash"] >= BAR * w.copied_bytes, w.causes
            assert w.causes["gc_header"] < BAR * w.copied_bytes  # the baseline fails the bar
    # what the recording says is what a snapshot of the same (idle) tree says
    last = {w.pid: w for w in rec.samples[-1].attribution.workers}
    for w in snap.workers:
        assert abs(dict(last[w.pid].types)["str"] - dict(w.types)["str"]) <= 0.01 * w.copied_bytes
    capsys.readouterr()
    assert main(["report", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    a = doc["attribution"]
    assert len(a["times"]) == 3 and a["types"][0]["type"] == "str"
    assert next(c for c in a["causes"] if c["cause"] == "str_hash")["bytes"][-1] >= BAR * a["copied_bytes"][-1]
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Copied bytes by type over the recording" in out and "str hash" in out


@pytest.mark.parametrize("active, ran", [(None, True), (0, False)], ids=["workers-ran-them", "baseline-idle"])
def test_record_by_function_from_the_masters_memory(tmp_path, active, ran):
    """A master that never imported cowprof: the objects are read from its memory, once, then only
    for pages copied since (none: the tree is idle)."""
    path = tmp_path / "run.jsonl"
    with App("functions", n=0, active=active, cowprof=False) as app:
        assert main(["record", str(app.master), "-o", str(path), "--by", "type", "--by", "function",
                     "--count", "3", "--interval", "0.2"]) == 0
        if ran:  # the same loop in-process, to see what was read
            sampler = Sampler(app.master, interval=0.2, count=3, keep_addresses=True)
            att = Attributor(sampler.master, functions=True)
            pages = [sum(w.copied_bytes for w in s.report.workers) // s.report.page_size
                     for s in sampler if att.attribute(s.report).error is None]
            assert len(pages) == 3 and att.map_loads == 0
            assert att.remote_pages < 1.5 * pages[0], (att.remote_pages, pages)  # not re-read per sample
    rec = read_record(path)
    assert len(rec.samples) == 3
    for s in rec.samples:
        assert s.attribution is not None and s.attribution.source.startswith("memory (CPython")
        assert s.functions is not None, s.attribution_error
        top = sorted(f.name for f, _b in s.functions.functions[:HOT_RUN])
        assert (top == HOT) == ran, s.functions.functions[:4]
