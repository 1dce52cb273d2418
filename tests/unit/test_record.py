"""Record files: round trip, crash tolerance (truncated last line), corrupt files, no overwrite."""
from __future__ import annotations

import json
import os

import pytest

from cowprof.errors import AccessDenied, BadInput, RecordFileError
from cowprof.pages import PageReport
from cowprof.record import FORMAT, VERSION, RecordWriter, read_record
from cowprof.sampler import Sample
from conftest import MiB, master_dict, region_dict, worker_dict
from conftest import report_dict as shared_report_dict
from conftest import sample as shared_sample


def report_dict(t: float = 1000.0, copied: tuple[int, ...] = (3 * MiB, 1 * MiB)) -> dict:
    """Workers 11, 12, ... that copied ``copied`` bytes each."""
    return shared_report_dict([worker_dict(11 + i, c, shared=8 * MiB) for i, c in enumerate(copied)], taken_at=t,
                              master=master_dict(diverged=4096, regions={"python": region_dict(8 * MiB)}))


def sample(i: int, *, error: Exception | None = None, copied: tuple[int, ...] = (3 * MiB, MiB)) -> Sample:
    report = None if error else PageReport.from_dict(report_dict(1000.0 + i, copied))
    return shared_sample(i, report, error=error, time=1000.0 + i, lateness=0.001 * i)


def write_record(path, n: int = 3, *, end: str | None = "duration") -> None:
    with RecordWriter(path, target={"pid": 10, "interval": 1.0}) as w:
        for i in range(n):
            w.write(sample(i))
        if end:
            w.close(end)


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path, target={"pid": 10, "interval": 1.0}) as w:
        w.write(sample(0))
        w.write(sample(1, error=AccessDenied(11)))
        w.write(sample(2, copied=(5 * MiB, 2 * MiB)))
        w.close("target-exited")
    rec = read_record(path)
    assert rec.header["format"] == FORMAT and rec.header["version"] == VERSION
    assert rec.header["target"]["pid"] == 10
    assert [s.index for s in rec.samples] == [0, 1, 2]
    assert rec.samples[1].report is None and "permission denied" in rec.samples[1].error
    assert rec.samples[0].report.to_dict() == PageReport.from_dict(report_dict(1000.0)).to_dict()
    assert [w.copied_bytes for w in rec.reports[-1].workers] == [5 * MiB, 2 * MiB]
    assert rec.end["reason"] == "target-exited" and rec.end["samples"] == 3
    assert rec.warnings == []


def test_every_line_is_json_text_and_flushed_before_close(tmp_path):
    """What a killed recorder leaves: each completed sample is a full line on disk already."""
    path = tmp_path / "r.jsonl"
    w = RecordWriter(path, target={"pid": 10})
    w.write(sample(0))
    w.write(sample(1))
    # not closed: read what is on disk right now (another process would see the same)
    lines = path.read_bytes().decode("utf-8").splitlines()
    assert len(lines) == 3 and all(isinstance(json.loads(line), dict) for line in lines)
    rec = read_record(path)
    assert len(rec.samples) == 2 and rec.end is None
    w.close()


def test_truncated_last_line_is_tolerated(tmp_path):
    path = tmp_path / "r.jsonl"
    write_record(path, 3, end=None)
    full = path.read_bytes()
    last_line = json.dumps({"kind": "sample", "index": 3, "report": report_dict()}).encode()
    path.write_bytes(full + last_line[: len(last_line) // 2])  # killed mid-write
    rec = read_record(path)
    assert len(rec.samples) == 3
    assert len(rec.warnings) == 1 and "truncated" in rec.warnings[0]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write_record(path, 3)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:20]  # a cut line that is *not* the last one
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RecordFileError, match="line 3"):
        read_record(path)


def test_corrupt_complete_last_line_is_an_error(tmp_path):
    """A newline-terminated garbage line is corruption, not a crash artefact."""
    path = tmp_path / "r.jsonl"
    write_record(path, 2, end=None)
    with open(path, "ab") as f:
        f.write(b"{not json\n")
    with pytest.raises(RecordFileError, match="corrupt"):
        read_record(path)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x00\x01garbage\n", "not a cowprof record"),
    (b"[1, 2]\n", "not a cowprof record"),
    (b'{"format": "something-else", "version": 1}\n', "not a cowprof record"),
    (b'{"format": "cowprof-record", "version": 99, "target": {}}\n', "version 99"),
    (b'{"format": "cowprof-record", "version": 1}\n', "corrupt header"),
])
def test_bad_headers(tmp_path, content, match):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordFileError, match=match):
        read_record(path)


def test_pickle_is_rejected(tmp_path):
    import pickle

    path = tmp_path / "r.jsonl"
    path.write_bytes(pickle.dumps({"format": "cowprof-record"}))
    with pytest.raises(RecordFileError):
        read_record(path)


def test_bad_sample_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    write_record(path, 1, end=None)
    good = path.read_bytes()
    bad_report = report_dict()
    del bad_report["workers"]
    for line, match in [
        ({"kind": "sample", "index": 1, "time": 1.0, "report": bad_report}, "line 3: corrupt sample"),
        ({"kind": "sample", "index": 1, "time": 1.0, "report": None, "error": None}, "corrupt sample"),
        ({"kind": "sample", "time": 1.0, "report": report_dict()}, "missing 'index'"),
        ([1, 2, 3], "not a JSON object"),
        ({"no": "kind"}, "no line kind"),
    ]:
        path.write_bytes(good + json.dumps(line).encode() + b"\n")
        with pytest.raises(RecordFileError, match=match):
            read_record(path)


def test_unknown_line_kind_is_skipped_and_data_after_end_is_not(tmp_path):
    path = tmp_path / "r.jsonl"
    write_record(path, 1, end=None)
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "future-thing", "x": 1}) + "\n")
    assert len(read_record(path).samples) == 1
    write_record(tmp_path / "e.jsonl", 1, end="count")
    with open(tmp_path / "e.jsonl", "a") as f:
        f.write(json.dumps({"kind": "sample", "index": 5, "time": 1.0, "report": report_dict()}) + "\n")
    with pytest.raises(RecordFileError, match="after the end"):
        read_record(tmp_path / "e.jsonl")


def test_never_overwrites_without_force(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("precious\n")
    with pytest.raises(BadInput, match="already exists.*--force"):
        RecordWriter(path, target={"pid": 1})
    assert path.read_text() == "precious\n"
    with RecordWriter(path, target={"pid": 1}, force=True) as w:
        w.write(sample(0))
    assert len(read_record(path).samples) == 1


def test_unwritable_locations(tmp_path):
    with pytest.raises(BadInput, match="no such directory"):
        RecordWriter(tmp_path / "missing" / "r.jsonl", target={})
    with pytest.raises(BadInput, match="directory"):
        RecordWriter(tmp_path, target={}, force=True)
    with pytest.raises(BadInput, match="no such file"):
        read_record(tmp_path / "nope.jsonl")


def test_fsync_is_rate_limited(tmp_path, monkeypatch):
    """Flush every line, fsync only every few seconds; the baseline (fsync_every=0) syncs each line."""
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    with RecordWriter(tmp_path / "a.jsonl", target={}) as w:
        for i in range(50):
            w.write(sample(i))
    limited = len(calls)
    calls.clear()
    with RecordWriter(tmp_path / "b.jsonl", target={}, fsync_every=0) as w:
        for i in range(50):
            w.write(sample(i))
    assert limited <= 2  # the header (and possibly one periodic sync)
    assert len(calls) >= 50
