"""Record files are read strictly (issue 12, item 3): deep nesting, wrong types and huge lines are
corrupt files (RecordFileError, `cowprof report` exit 6 with one line), never a traceback or
garbage output. On cowprof before the fix: RecursionError tracebacks (exit 1), "command: n o t a
l i s t", headers with ``"version": true`` accepted, and ~3x a huge line's size in memory."""
from __future__ import annotations

import json
import os

import pytest

from cowprof import cli, record
from cowprof.errors import RecordFileError
from cowprof.record import RecordWriter, read_record
from conftest import page_report, record_header, report_dict, sample

MAX_LINE_BYTES = 16 << 20  # documented: a longer line is corrupt
DEEP = "[" * 5000 + "]" * 5000
HEADER = record_header()
SAMPLE = {"kind": "sample", "index": 0, "time": 1000.0, "elapsed": 0.0, "lateness": 0.0, "error": None,
          "report": report_dict()}
END = {"kind": "end", "time": 1001.0, "samples": 1, "reason": "count"}


def _file(tmp_path, *lines: str | dict) -> str:
    path = tmp_path / "r.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _with(d: dict, path: tuple[str, ...], value) -> dict:
    out = json.loads(json.dumps(d))
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def _report_fails(tmp_path, capsys, path: str, needle: str) -> None:
    """`cowprof report` on it: exit 6, one line naming the problem, no traceback."""
    capsys.readouterr()
    code = cli.main(["report", path])
    out, err = capsys.readouterr()
    assert code == 6, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cowprof: ") and needle in err, err
    assert "Traceback" not in err and out == ""


def test_the_well_formed_file_of_these_tests_is_read(tmp_path, capsys):
    """The baseline of every case below: the unmodified lines make a valid recording."""
    rec = read_record(_file(tmp_path, HEADER, SAMPLE, END))
    assert len(rec.samples) == 1 and rec.end["reason"] == "count"
    assert cli.main(["report", str(tmp_path / "r.jsonl")]) == 0
    assert "command: gunicorn app:app" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["header", "sample", "end", "last line"])
def test_deep_nesting_is_a_corrupt_file(tmp_path, capsys, where):
    lines: list = {"header": [DEEP], "sample": [HEADER, DEEP, END],
                   "end": [HEADER, SAMPLE, '{"kind": "end", "x": ' + DEEP + "}"],
                   "last line": [HEADER, SAMPLE, '{"kind": "sample", "report": ' + DEEP + "}"]}[where]
    path = _file(tmp_path, *lines)
    with pytest.raises(RecordFileError):
        read_record(path)
    _report_fails(tmp_path, capsys, path, "r.jsonl")


@pytest.mark.parametrize("field, value, needle", [
    (("version",), True, "version"),
    (("version",), "1", "version"),
    (("created_at",), "yesterday", "created_at"),
    (("created_at",), 1e300, "created_at"),
    (("target",), "x", "target"),
    (("target", "pid"), True, "pid"),
    (("target", "pid"), KeyError, "pid"),
    (("target", "cmdline"), "not a list", "cmdline"),
    (("target", "cmdline"), [1, 2], "cmdline"),
    (("target", "interval"), "x", "interval"),
    (("target", "interval"), -1, "interval"),
    (("target", "duration"), [], "duration"),
    (("hostname",), 5, "hostname"),
])
def test_header_fields_of_the_wrong_type_are_corrupt(tmp_path, capsys, field, value, needle):
    path = _file(tmp_path, _with(HEADER, field, value), SAMPLE, END)
    with pytest.raises(RecordFileError, match=needle):
        read_record(path)
    _report_fails(tmp_path, capsys, path, needle)


@pytest.mark.parametrize("line, needle", [
    (_with(SAMPLE, ("index",), True), "index"),
    (_with(SAMPLE, ("index",), -1), "index"),
    (_with(SAMPLE, ("time",), "now"), "time"),
    (_with(SAMPLE, ("time",), 1e300), "time"),
    (_with(SAMPLE, ("elapsed",), [1]), "elapsed"),
    (_with(SAMPLE, ("error",), 5), "error"),
    (_with(SAMPLE, ("error",), {"message": ["x"]}), "message"),
    (_with(SAMPLE, ("report",), KeyError), "report"),
    (_with(SAMPLE, ("report",), "x"), "report"),
    (_with(SAMPLE, ("report", "taken_at"), 1e300), "taken_at"),
    (_with(SAMPLE, ("report", "privileged"), "no"), "privileged"),
    (_with(SAMPLE, ("report", "mode"), 5), "mode"),
    (_with(SAMPLE, ("report", "workers", 0, "copied_bytes"), -5), "copied_bytes"),
    (_with(SAMPLE, ("report", "workers", 0, "copied_bytes"), 1.5), "copied_bytes"),
    (_with(SAMPLE, ("report", "workers", 0, "pid"), "11"), "pid"),
    (_with(SAMPLE, ("report", "master", "rss_bytes"), True), "rss_bytes"),
    (_with(SAMPLE, ("report", "workers", 0, "regions"), []), "regions"),
    (_with(SAMPLE, ("report", "workers", 0, "sharers"), {"a": 1}), "sharers"),
    (_with(SAMPLE, ("report", "gone"), ["12"]), "gone"),
    ('{"kind": "sample", "index": 0, "time": NaN, "report": null, "error": "x"}', "corrupt"),
    ('{"kind": "sample", "index": 0, "time": 1e999, "report": null, "error": "x"}', "time"),
    ('{"kind": "sample", "index": 1' + "0" * 5000 + ', "time": 1.0, "report": null, "error": "x"}', "corrupt"),
])
def test_sample_fields_of_the_wrong_type_are_corrupt(tmp_path, capsys, line, needle):
    path = _file(tmp_path, HEADER, line, END)
    with pytest.raises(RecordFileError, match=needle):
        read_record(path)
    _report_fails(tmp_path, capsys, path, "line 2")


@pytest.mark.parametrize("line, needle", [
    ({"kind": "end"}, "time"),
    (_with(END, ("samples",), "one"), "samples"),
    (_with(END, ("reason",), 5), "reason"),
    (_with(END, ("time",), None), "time"),
])
def test_bad_end_lines_are_corrupt(tmp_path, capsys, line, needle):
    path = _file(tmp_path, HEADER, SAMPLE, line)
    with pytest.raises(RecordFileError, match=f"line 3: corrupt end line.*{needle}"):
        read_record(path)
    _report_fails(tmp_path, capsys, path, "end line")


def test_a_line_over_the_limit_is_corrupt(tmp_path, capsys):
    assert record.MAX_LINE_BYTES == MAX_LINE_BYTES
    path = tmp_path / "r.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(HEADER) + "\n")
        f.write('{"kind": "note", "pad": "' + "x" * MAX_LINE_BYTES + '"}\n')
    with pytest.raises(RecordFileError, match="line 2: corrupt .longer than 16 MiB"):
        read_record(path)
    _report_fails(tmp_path, capsys, str(path), "longer than")
    with open(path, "w") as f:  # just under the limit: an unknown line kind, skipped
        f.write(json.dumps(HEADER) + "\n")
        f.write('{"kind": "note", "pad": "' + "x" * (MAX_LINE_BYTES - 30) + '"}\n')
    assert read_record(path).samples == []


def test_the_writer_makes_private_files_and_refuses_symlinks(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path, target={"pid": 10, "interval": 1.0}) as w:
        w.write(sample(0, page_report()))
    assert os.stat(path).st_mode & 0o777 == 0o600
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link.jsonl"
    os.symlink(victim, link)
    from cowprof.errors import BadInput

    with pytest.raises(BadInput, match="symbolic link"):
        RecordWriter(link, target={"pid": 10}, force=True)
    assert victim.read_text() == "precious\n"
