"""record --by: attribution lines (record format 1.1), both directions of compatibility with format
1.0, the over-time series, report --json/--html of them, and report --html's file safety."""
from __future__ import annotations

import io
import json
import os
import re

import pytest

import record_1_0
from cowprof.attribution import Attribution
from cowprof.cli import main
from cowprof.errors import RecordFileError
from cowprof.record import MINOR, VERSION, RecordWriter, read_record
from cowprof.reporters import OTHER_TYPES, attribution_series
from cowprof.reporters import html as html_reporter
from recordings import MiB, attributed, write_attributed

@pytest.fixture
def rec_path(tmp_path):
    path = tmp_path / "run.jsonl"
    write_attributed(path)
    return path


# --- format 1.1 round trip --------------------------------------------------------------------

def test_attribution_lines_round_trip(rec_path):
    rec = read_record(rec_path)
    assert rec.header["version"] == VERSION and rec.header["minor"] == MINOR == 1
    assert rec.attributed_by == ["cause", "function"]
    assert [s.index for s in rec.samples] == [0, 1, 2, 3, 4] and not rec.warnings
    for i, s in enumerate(rec.samples[:4]):
        _, sa = attributed(i)
        assert s.attribution is not None and s.functions is not None
        # what was written (each worker cut to its top 2 types) is what is read back
        assert s.attribution.to_dict() == Attribution.from_dict(sa.attribution.to_dict(2)).to_dict()
        assert s.functions.to_dict() == sa.functions.to_dict(2)
        w = s.attribution.workers[0]
        assert sum(b for _t, b in w.types) + w.no_object_bytes == w.copied_bytes  # nothing lost in the cut
    last = rec.samples[4]
    assert last.attribution is None and last.attribution_error == "no heap map and no ptrace rights"


def test_attribution_series_stacks_to_the_copied_bytes(rec_path):
    series = attribution_series(read_record(rec_path), top=1)
    assert series is not None and len(series.times) == 4 and series.missing == 1
    assert [n for n, _v in series.types] == ["str", OTHER_TYPES, "no object"]
    for i, copied in enumerate(series.copied_bytes):
        assert copied == (6 + 3 * i) * MiB
        assert sum(v[i] for _n, v in series.types) == copied
    assert dict(series.types)["str"] == [c * 3 // 4 for c in series.copied_bytes]
    causes = dict(series.causes or [])
    assert set(causes) == {"refcount", "str_hash", "other_field", "allocator"}
    assert all(sum(v[i] for v in causes.values()) == c for i, c in enumerate(series.copied_bytes))
    assert [f.name for f, _b, _m in series.functions] == ["app.views.hot", "app.models.save"]
    assert series.functions[0][1] == 5 * 8192 and dict(series.function_series)["app.views.hot"] == [
        16384, 24576, 32768, 40960]


def test_a_recording_without_by_has_no_attribution_series(tmp_path):
    path = tmp_path / "pages.jsonl"
    with RecordWriter(path, target={"pid": 10}) as w:
        w.write(attributed(0)[0])
        w.close("count")
    rec = read_record(path)
    assert rec.attributed_by == [] and rec.samples[0].attribution is None
    assert attribution_series(rec) is None


# --- compatibility: format 1.0 readers and writers ----------------------------------------------

def test_todays_reader_reads_a_file_written_by_format_1_0(tmp_path):
    path = tmp_path / "old.jsonl"
    with record_1_0.RecordWriter(path, target={"pid": 10, "interval": 1.0}) as w:
        for i in range(3):
            w.write(attributed(i)[0])
        w.close("duration")
    header = json.loads(path.read_text().splitlines()[0])
    assert header["version"] == 1 and "minor" not in header  # really a 1.0 file
    rec = read_record(path)
    assert len(rec.reports) == 3 and rec.end["reason"] == "duration" and not rec.warnings
    assert rec.attributed_by == [] and all(s.attribution is None for s in rec.samples)
    assert rec.reports[2].to_dict() == attributed(2)[0].report.to_dict()
    out = io.StringIO()
    from cowprof.reporters import table
    table.render(rec, out)
    assert "v1.0" in out.getvalue() and "by type" not in out.getvalue()


def test_a_format_1_0_reader_reads_todays_file_as_pages(rec_path):
    old = record_1_0.read_record(rec_path)
    new = read_record(rec_path)
    assert not old.warnings and old.end["reason"] == "count"
    assert [s.index for s in old.samples] == [s.index for s in new.samples]
    assert [r.to_dict() for r in old.reports] == [r.to_dict() for r in new.reports]


def test_unknown_line_kinds_and_a_later_minor_are_skipped_by_both_readers(rec_path, tmp_path):
    lines = rec_path.read_text().splitlines()
    header = json.loads(lines[0])
    header["minor"] = 7
    header["something_new"] = {"x": 1}
    future = json.dumps({"kind": "flamegraph", "sample": 0, "frames": [["a", 1]]})
    path = tmp_path / "future.jsonl"
    path.write_text("\n".join([json.dumps(header), lines[1], future, *lines[2:]]) + "\n")
    for reader in (read_record, record_1_0.read_record):
        rec = reader(path)
        assert len(rec.samples) == 5 and rec.end["reason"] == "count" and not rec.warnings
    assert read_record(path).samples[0].attribution is not None


def test_a_later_attribution_version_is_skipped_with_a_warning(rec_path, tmp_path):
    lines = rec_path.read_text().splitlines()
    line = json.loads(lines[2])
    assert line["kind"] == "attribution"
    line["attribution"]["version"] = 2
    lines[2] = json.dumps(line)
    path = tmp_path / "v2attr.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rec = read_record(path)
    assert rec.samples[0].attribution is None and rec.samples[0].functions is not None
    assert len(rec.warnings) == 1 and "version 2" in rec.warnings[0]
    assert rec.samples[1].attribution is not None


@pytest.mark.parametrize("change, message", [
    (lambda a: a["attribution"]["workers"][0].update(copied_bytes="12"), "copied_bytes"),
    (lambda a: a["attribution"]["workers"][0]["types"][0].update(bytes=-1), "bytes"),
    (lambda a: a["attribution"]["workers"][0]["causes"].update(refcount=1.5), "refcount"),
    (lambda a: a["functions"]["functions"][0].update(line="12"), "line"),
    (lambda a: a.update(sample=3), "not the sample before it"),
    (lambda a: a.update(error="oops"), "error"),
])
def test_a_corrupt_attribution_line_is_a_record_file_error(rec_path, tmp_path, change, message):
    lines = rec_path.read_text().splitlines()
    line = json.loads(lines[2])
    change(line)
    lines[2] = json.dumps(line)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordFileError, match=rf"line 3: corrupt attribution .*{message}"):
        read_record(path)
    assert main(["report", str(path)]) == RecordFileError.exit_code == 6


# --- report: text, JSON, HTML -------------------------------------------------------------------

def test_report_text_shows_types_causes_and_functions_over_time(rec_path, capsys):
    assert main(["report", str(rec_path)]) == 0
    out = capsys.readouterr().out
    assert "v1.1" in out
    types = out[out.index("Copied bytes by type over the recording"):out.index("Copied bytes by cause")]
    row = next(line.split() for line in types.splitlines() if line.split()[:1] == ["str"])
    assert row[1:4] == ["4.50M", "11.2M", "11.2M"]  # first, last, max of 3/4 of 6..15 MiB
    assert "1 without attribution (last: no heap map and no ptrace rights)" in " ".join(types.split())
    causes = out[out.index("Copied bytes by cause"):out.index("Top functions")]
    assert "refcount" in causes and "str hash" in causes
    assert "app.views.hot" in out and "/srv/app/views.py:12" in out


def test_report_json_over_time(rec_path, capsys):
    assert main(["report", str(rec_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["record_version"] == "1.1" and doc["samples"] == 5 and doc["end"] == "count"
    a = doc["attribution"]
    assert a["copied_bytes"] == [6 * MiB, 9 * MiB, 12 * MiB, 15 * MiB] and a["missing"] == 1
    types = {t["type"]: t["bytes"] for t in a["types"]}
    assert types["str"] == [c * 3 // 4 for c in a["copied_bytes"]]
    for i, c in enumerate(a["copied_bytes"]):
        assert sum(v[i] for v in types.values()) == c
        assert sum(x["bytes"][i] for x in a["causes"]) == c
    assert a["functions"][0] == {"function": "app.views.hot", "file": "/srv/app/views.py", "line": 12,
                                 "bytes": 5 * 8192, "max_bytes": 5 * 8192}
    assert {w["pid"] for w in doc["workers"]} == {11, 12}


def test_html_has_the_attribution_charts_only_when_recorded(rec_path, tmp_path):
    pytest.importorskip("plotly")
    buf = io.StringIO()
    html_reporter.render(read_record(rec_path), file=buf)
    doc = buf.getvalue()
    for div in html_reporter.CHART_IDS.values():
        assert f'id="{div}"' in doc
    assert doc.count('"stackgroup":"types"') == 4  # str, float, (other types), no object
    assert "app.views.hot" in doc and not re.search(r"<script[^>]*\bsrc\s*=", doc, re.IGNORECASE)
    pages_only = tmp_path / "pages.jsonl"
    with RecordWriter(pages_only, target={"pid": 10}) as w:
        w.write(attributed(0)[0])
        w.close("count")
    buf = io.StringIO()
    html_reporter.render(read_record(pages_only), file=buf)
    assert 'id="cowprof-types"' not in buf.getvalue() and 'id="cowprof-copied"' in buf.getvalue()


# --- report --html: never overwrite, never through a symlink, private ---------------------------

def test_report_html_refuses_an_existing_file_without_force(rec_path, tmp_path, capsys):
    pytest.importorskip("plotly")
    out = tmp_path / "r.html"
    out.write_text("keep me")
    assert main(["report", str(rec_path), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"cowprof: {out} already exists (use --force to overwrite it)\n"
    assert out.read_text() == "keep me"


def test_report_html_is_created_0600_and_force_replaces_a_file(rec_path, tmp_path, capsys):
    pytest.importorskip("plotly")
    out = tmp_path / "r.html"
    old = os.umask(0)
    try:
        assert main(["report", str(rec_path), "--html", str(out)]) == 0
        assert os.stat(out).st_mode & 0o777 == 0o600
        out.write_text("old")
        os.chmod(out, 0o644)
        assert main(["report", str(rec_path), "--html", str(out), "--force"]) == 0
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o600 and out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(os.listdir(tmp_path)) == ["r.html", "run.jsonl"]  # no temporary file left


@pytest.mark.parametrize("force", [False, True])
def test_report_html_never_follows_a_symlink(rec_path, tmp_path, capsys, force):
    pytest.importorskip("plotly")
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "r.html"
    link.symlink_to(target)
    dangling = tmp_path / "d.html"
    dangling.symlink_to(tmp_path / "nothing-here")
    for path in (link, dangling):
        assert main(["report", str(rec_path), "--html", str(path), *(["--force"] if force else [])]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("symbolic link" in err or "already exists" in err)
    assert target.read_text() == "precious" and link.is_symlink() and not (tmp_path / "nothing-here").exists()


def test_report_html_into_a_missing_directory_is_one_line(rec_path, tmp_path, capsys):
    pytest.importorskip("plotly")
    assert main(["report", str(rec_path), "--html", str(tmp_path / "no" / "r.html")]) == 2
    assert capsys.readouterr().err.endswith("no such directory\n")
