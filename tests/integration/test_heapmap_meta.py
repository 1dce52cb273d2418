"""A corrupt heap map is reported as corrupt (issue 12, item 3): `snapshot --by type` exits 2 with
one line naming the file and what is wrong, not a RecursionError/OverflowError traceback (exit 1)
and not "no current heap map ... call prepare_fork()" as before the fix."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

from cowprof import cli, heapmap, procfs
from forktree import ForkTree

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture(scope="module")
def tree():
    with ForkTree(workers=2, master_mb=1, write_pages=4) as t:
        yield t


@pytest.fixture
def saved(tree, tmp_path, monkeypatch):
    """A valid, current map of the tree's master in a fresh directory (the profiler's default)."""
    monkeypatch.setenv(heapmap.DIR_ENV, str(tmp_path / "maps"))
    hm = heapmap.HeapMap(pid=tree.master_pid, start_ticks=procfs.read_stat(tree.master_pid).starttime_ticks,
                         boot_id="", created_at=1.0, addr=np.array([tree.buf_addr], dtype=np.uint64),
                         size=np.array([4096], dtype=np.uint32), type=np.array([0], dtype=np.uint32),
                         type_names=np.array(["bytearray"]), type_preheader=np.array([0], dtype=np.uint8))
    return heapmap.save(hm)


def _rewrite_meta(path: str, edit) -> None:
    raw = open(path, "rb").read()
    head = heapmap.parse_header(raw)
    end = head.offset + head.records_bytes
    new = edit(json.loads(raw[end:]))
    new_meta = (new if isinstance(new, str) else json.dumps(new)).encode()
    with open(path, "wb") as f:
        f.write(heapmap.HEADER_V3.pack(heapmap.MAGIC, head.version, len(new_meta), head.records, head.offset,
                                       head.records_bytes))
        f.write(raw[heapmap.HEADER_V3.size:end])
        f.write(new_meta)


def _snapshot_by_type(pid: int) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["snapshot", str(pid), "--by", "type"])
    return code, out.getvalue(), err.getvalue()


def test_the_valid_map_is_used(tree, saved):
    """The baseline of the cases below."""
    code, out, err = _snapshot_by_type(tree.master_pid)
    assert code == 0, err
    assert "bytearray" in out


CORRUPTIONS = {
    "nested JSON": lambda m: '{"pid": ' + DEEP + "}",
    "preheader above 255": lambda m: {**m, "type_preheader": [300]},
    "preheader negative": lambda m: {**m, "type_preheader": [-1]},
    "preheader per type": lambda m: {**m, "type_preheader": [0, 0, 0]},
    "type names not a list": lambda m: {**m, "type_names": "bytearray"},
    "type names not strings": lambda m: {**m, "type_names": [1]},
    "pid a bool": lambda m: {**m, "pid": True},
    "start ticks a string": lambda m: {**m, "start_ticks": "5"},
    "boot id a number": lambda m: {**m, "boot_id": 5},
    "no type names": lambda m: {k: v for k, v in m.items() if k != "type_names"},
    "not an object": lambda m: [m],
    "not JSON": lambda m: "{pid",
    "NaN": lambda m: json.dumps(m).replace('"created_at": 1.0', '"created_at": NaN'),
    "format not the header's": lambda m: {**m, "format": 2},
    "no type sizes (format 3)": lambda m: {k: v for k, v in m.items() if k != "type_size"},
    "type sizes per type": lambda m: {**m, "type_size": [1, 2]},
    "type size negative": lambda m: {**m, "type_size": [-1]},
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_metadata_is_reported_as_corrupt(tree, saved, how):
    _rewrite_meta(saved, CORRUPTIONS[how])
    with pytest.raises(heapmap.CorruptHeapMap, match="corrupt heap map metadata"):
        heapmap.load(tree.master_pid)
    code, out, err = _snapshot_by_type(tree.master_pid)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cowprof: ") and "Traceback" not in err, err
    assert os.path.basename(saved) in lines[0] and "corrupt" in lines[0] and "prepare_fork" not in lines[0]


@pytest.mark.parametrize("how", ["truncated", "records cut", "header cut", "other format", "bad magic",
                                 "stream width"])
def test_truncated_or_foreign_files_are_reported_as_such(tree, saved, how):
    raw = open(saved, "rb").read()
    offset = heapmap.parse_header(raw).offset
    data = {"truncated": raw[:-1], "records cut": raw[:40], "header cut": raw[:36],
            "other format": raw[:8] + (9).to_bytes(4, "little") + raw[12:],
            "bad magic": b"X" + raw[1:],
            "stream width": raw[:offset + 16] + b"\x0b" + raw[offset + 17:]}[how]
    open(saved, "wb").write(data)
    code, out, err = _snapshot_by_type(tree.master_pid)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "prepare_fork" not in err, err
    assert any(w in err for w in ("truncated", "not supported", "not a cowprof heap map",
                                  "corrupt heap map records")), err
