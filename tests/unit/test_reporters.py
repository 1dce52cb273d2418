"""Reporters render what they are given: table, JSON, live view state, HTML."""
from __future__ import annotations

import io
import json
import re
import sys

import pytest

from cowprof.errors import AccessDenied, CowprofError
from cowprof.pages import PageReport
from cowprof.record import RecordWriter, read_record
from cowprof.reporters import fmt_bytes, fmt_size, live, table, worker_series
from cowprof.reporters import html as html_reporter
from cowprof.reporters import jsonout
from cowprof.sampler import Sample
from conftest import MiB, master_dict, page_report, region_dict, sample, worker_dict


def report(t: float = 1000.0, workers: dict[int, int] | None = None, *,
           started: dict[int, float] | None = None) -> PageReport:
    """Three workers by default; ``workers`` maps PID -> copied bytes (a quarter of them in the heap)."""
    workers = {11: 3 * MiB, 12: 7 * MiB, 13: 1 * MiB} if workers is None else workers
    started = started or {}
    return page_report(
        [worker_dict(pid, c, started_at=started.get(pid, 901.0), uss=c + MiB,
                     regions={"python": region_dict(12 * MiB, c - c // 4, MiB), "heap": region_dict(4 * MiB, c // 4)})
         for pid, c in workers.items()],
        taken_at=t, master=master_dict(diverged=8192, regions={"python": region_dict(30 * MiB)}))


def render_table(rep: PageReport, by: str = "worker") -> str:
    buf = io.StringIO()
    table.render(rep, file=buf, by=by)
    return buf.getvalue()


# --- helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, short, long", [
    (0, "0", "0 B"), (512, "512B", "512 B"), (4096, "4.00K", "4.0 KiB"), (400 * 1024, "400K", "400.0 KiB"),
    (int(2.5 * MiB), "2.50M", "2.5 MiB"), (36 * MiB, "36.0M", "36.0 MiB"), (3 << 30, "3.00G", "3.00 GiB"),
    (-MiB, "-1.00M", "-1.0 MiB"),
])
def test_size_formats(n, short, long):
    assert fmt_size(n) == short
    assert fmt_bytes(n) == long


def test_worker_series_splits_reused_pids():
    reps = [report(1000.0, {11: MiB}), report(1001.0, {11: 2 * MiB}),
            report(1002.0, {11: 0}, started={11: 999.0})]  # PID 11 recycled: new start time
    series = worker_series(reps)
    assert [s.label for s in series] == ["11", "11 #2"]
    assert series[0].copied_bytes == [MiB, 2 * MiB] and series[1].copied_bytes == [0]


# --- table -----------------------------------------------------------------------------------

def test_table_sorts_workers_by_copied_with_master_and_totals():
    out = render_table(report())
    rows = [line.split() for line in out.splitlines() if line.split()]
    pids = [r[0] for r in rows if r[0] in {"10", "11", "12", "13"}]
    assert pids == ["10", "12", "11", "13"]  # master first, then copied 7 > 3 > 1 MiB
    master_row = next(r for r in rows if r[0] == "10")
    assert "master" in master_row and "(8.00K)" in master_row  # its own post-fork writes
    total = next(line for line in out.splitlines() if "total (3 workers)" in line)
    assert fmt_size(11 * MiB) in total.split()  # copied: 7 + 3 + 1
    assert fmt_size(40 * MiB + 3 * 30 * MiB) in total.split()  # RSS includes the master


def test_table_by_region_sums_workers():
    out = render_table(report(), by="region")
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # copied: python = sum(c - c//4), heap = sum(c//4)
    heap = sum(c // 4 for c in (3 * MiB, 7 * MiB, MiB))
    assert fmt_size(heap) in lines["heap"]
    assert fmt_size(11 * MiB - heap) in lines["python"]
    assert "100.0%" in next(line for line in out.splitlines() if "total" in line)


def test_table_rejects_unknown_grouping():
    with pytest.raises(ValueError, match="worker, region"):
        render_table(report(), by="colour")


def test_json_is_the_documented_dict():
    buf = io.StringIO()
    rep = report()
    jsonout.render(rep, file=buf)
    assert json.loads(buf.getvalue()) == rep.to_dict()


# --- live ------------------------------------------------------------------------------------

def test_top_rates_and_worker_changes():
    view = live.TopView(interval=1.0)
    view.update(sample(0, report(1000.0, {11: MiB, 12: MiB})))
    assert view.rates == {11: None, 12: None} and view.appeared == []
    # one second later: 11 copied 2 MiB more, 12 exited, 13 is new
    view.update(sample(1, report(1001.0, {11: 3 * MiB, 13: 0})))
    assert view.rates[11] == pytest.approx(2 * MiB)
    assert view.rates[13] is None
    assert view.appeared == [13] and view.disappeared == [12]
    # PID 11 reused by a new worker (other start time): no rate across the two
    view.update(sample(2, report(1002.0, {11: 0, 13: MiB}, started={11: 1001.5})))
    assert view.rates[11] is None and view.rates[13] == pytest.approx(MiB)
    assert view.appeared == [11] and view.disappeared == [11]


def test_top_says_when_the_cpu_cap_stretches_refreshes():
    from rich.console import Console

    view = live.TopView(interval=1.0, max_cpu=0.02)
    for i, elapsed in enumerate((0.0, 1.0, 4.0)):
        view.update(Sample(index=i, time=1000.0 + elapsed, elapsed=elapsed, lateness=0.0,
                           report=report(1000.0 + elapsed), error=None))
        buf = io.StringIO()
        Console(file=buf, width=120).print(view.renderable())
        stretched = "refreshing every 3.0s (CPU cap 2%)" in buf.getvalue()
        assert stretched == (i == 2)


def test_top_shows_the_age_and_bound_of_reused_page_data():
    from rich.console import Console

    view = live.TopView(interval=1.0)
    first = report(1000.0, {11: MiB})
    view.update(sample(0, first))
    # one second later a real scan: 11 copied 1 MiB more
    view.update(sample(1, report(1001.0, {11: 2 * MiB})))
    assert view.rates[11] == pytest.approx(MiB)
    # then top's scanner answers twice from that report (same taken_at), with a drift bound
    reused = report(1001.0, {11: 2 * MiB})
    for i, t in ((2, 1002.0), (3, 1003.0)):
        view.update(Sample(index=i, time=t, elapsed=float(i), lateness=0.0, report=reused, error=None,
                           drift_pages=40))
        assert view.rates[11] == pytest.approx(MiB)  # the rate of the last real change, not 0
        buf = io.StringIO()
        Console(file=buf, width=120).print(view.renderable())
        assert f"pages read {int(t - 1001)}s ago; at most 160K can have changed since" in buf.getvalue()
    # an exact sample again: no such line
    view.update(sample(4, report(1004.0, {11: 5 * MiB})))
    assert view.rates[11] == pytest.approx(MiB)  # 3 MiB over the 3 s since the data was read
    buf = io.StringIO()
    Console(file=buf, width=120).print(view.renderable())
    assert "can have changed" not in buf.getvalue()


def test_top_keeps_last_report_on_error():
    view = live.TopView(interval=1.0)
    view.update(sample(0, report(1000.0)))
    view.update(sample(1, None, error=AccessDenied(11)))
    buf = io.StringIO()
    from rich.console import Console
    Console(file=buf, width=120).print(view.renderable())
    out = buf.getvalue()
    assert "last sample failed (1 of 2)" in out and "permission denied" in out
    assert "12" in out  # the last good table is still shown


def test_top_view_prints_each_sample_without_a_terminal():
    buf = io.StringIO()
    samples = [sample(0, report(1000.0, {11: MiB})), sample(1, report(1002.0, {11: 5 * MiB}))]
    view = live.render(samples, buf, interval=2.0)
    out = buf.getvalue()
    assert out.count("cowprof top") == 2
    assert "2.00" in out  # (5 - 1) MiB over 2 s
    assert view.samples == 2


# --- html ------------------------------------------------------------------------------------

@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path, target={"pid": 10, "interval": 1.0, "cmdline": ["gunicorn", "<app>", "[/x]"]}) as w:
        for i in range(4):
            w.write(sample(i, report(1000.0 + i, {11: i * MiB, 12: 2 * i * MiB})))
        w.write(sample(4, None, error=AccessDenied(12)))
        w.close("duration")
    return read_record(path)


def test_html_is_self_contained_with_three_charts(recording):
    pytest.importorskip("plotly")
    buf = io.StringIO()
    html_reporter.render(recording, file=buf)
    doc = buf.getvalue()
    for div_id in (html_reporter.CHART_IDS[k] for k in html_reporter.PAGE_CHARTS):
        assert f'id="{div_id}"' in doc
    for title in ("Copied MiB per worker over time", "Shared % over time", "Region breakdown"):
        assert title in doc
    assert not re.search(r"<script[^>]*\bsrc\s*=", doc, re.IGNORECASE)  # no external script
    assert len(re.findall(r"Plotly\.newPlot", doc)) >= 3
    assert len(doc) > 1_000_000  # plotly.js itself is inlined
    assert "&lt;app&gt;" in doc and "<app>" not in doc  # escaped user text


def test_html_without_plotly_is_a_one_line_error(recording, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(CowprofError, match=r"pip install 'cowprof\[html\]'"):
        html_reporter.render(recording, file=io.StringIO())


def test_recording_summary(recording):
    buf = io.StringIO()
    table.render(recording, buf)
    out = buf.getvalue()
    assert "5 samples" in out and "1 failed" in out and "ended: duration" in out
    assert "command: gunicorn <app> [/x]" in out  # user text is not Rich markup
    # worker 12 copied 0 -> 6 MiB over 3 s: 2 MiB/s; it is listed before 11 (3 MiB)
    summary = out[out.index("Workers over the recording"):out.index("Last sample")]
    rows = [line.split() for line in summary.splitlines() if line.split()[:1] in (["11"], ["12"])]
    assert [r[0] for r in rows] == ["12", "11"]
    assert rows[0][1:7] == ["3s", "4", "0", "6.00M", "6.00M", "2.00M"]


# --- one interface: render(data, file, *, options) -------------------------------------------

def test_table_render_takes_a_report_or_a_recording(recording):
    by_call, by_summary = io.StringIO(), io.StringIO()
    table.render(recording, by_call)
    from rich.console import Console

    Console(file=by_summary, highlight=False).print(table.recording_summary(recording))
    assert by_call.getvalue() == by_summary.getvalue() and "5 samples" in by_call.getvalue()
    with pytest.raises(ValueError, match="one summary"):
        table.render(recording, io.StringIO(), by="region")


def test_jsonout_renders_reports_and_recordings(recording):
    buf = io.StringIO()
    jsonout.render(recording, buf)
    assert json.loads(buf.getvalue()) == jsonout.recording_dict(recording)
    buf = io.StringIO()
    jsonout.render(recording.reports[-1], buf, indent=None, extra={"late_imports": [], "workers": "no"})
    doc = json.loads(buf.getvalue())
    assert buf.getvalue().count("\n") == 1 and doc["late_imports"] == [] and isinstance(doc["workers"], list)


def test_progress_passes_every_sample_on_and_prints_nothing_off_a_terminal():
    from cowprof.reporters import progress

    samples = [sample(0, report(1000.0, {11: MiB})), sample(1, None, error=AccessDenied(11)),
               sample(2, report(1002.0, {11: 3 * MiB}))]
    buf = io.StringIO()
    assert list(progress.render(iter(samples), buf, title="recording [bold]x[/bold]", duration=2.0)) == samples
    assert buf.getvalue() == ""
    assert progress.status(samples[2], 3) == "3 samples  1 workers  copied 3.0 MiB"
    assert progress.status(samples[1], 2).startswith("2 samples  last failed: permission denied")
