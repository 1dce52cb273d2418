"""`cowprof record` when the output cannot be written (issue 12, item 3): one line, exit 7, and the
file keeps only complete lines (every sample written before the failure), never a traceback nor a
half-written last line.

Three real failures: /dev/full (ENOSPC on the header), a file size limit hit mid-recording
(RLIMIT_FSIZE: the kernel writes part of the line, then EFBIG) and a tmpfs that fills up
mid-recording (ENOSPC after a partial write). Before the fix each was an OSError traceback (exit 1)
and the last two left a cut line at the end of the file.
"""
from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys

import pytest

from cowprof import cli
from cowprof.record import read_record
from forktree import ForkTree


def _run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def _assert_complete_lines(path: str, samples_said: str) -> int:
    data = open(path, "rb").read()
    assert data.endswith(b"\n"), data[-200:]
    assert all(isinstance(json.loads(line), dict) for line in data.splitlines())
    rec = read_record(path)
    assert rec.warnings == [] and rec.end is None
    assert f"{len(rec.samples)} complete samples" in samples_said, (samples_said, len(rec.samples))
    return len(rec.samples)


def _one_line(err: str, needle: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cowprof: ") and needle in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def tree():
    with ForkTree(workers=2, master_mb=2, write_pages=8) as t:
        yield t


def test_dev_full(tree):
    code, err = _run_main(["record", str(tree.master_pid), "-o", "/dev/full", "--force", "--count", "2"])
    assert code == 7, err
    _one_line(err, "cannot write /dev/full: No space left on device")


def test_file_size_limit_mid_recording(tree, tmp_path):
    path = str(tmp_path / "r.jsonl")

    def limit() -> None:  # in the child: the file may not grow past 6 KiB (SIGXFSZ is ignored by Python)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6144, 6144))

    proc = subprocess.run([sys.executable, "-m", "cowprof", "record", str(tree.master_pid), "-o", path,
                           "--interval", "0.02", "--count", "200"], preexec_fn=limit,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    line = _one_line(proc.stderr, "File too large")
    assert _assert_complete_lines(path, line) >= 1


def test_disk_full_mid_recording(tree, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k,mode=0700", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {mount.stderr.strip()}")
    try:
        path = str(mnt / "r.jsonl")
        code, err = _run_main(["record", str(tree.master_pid), "-o", path, "--interval", "0.02",
                               "--count", "200"])
        assert code == 7, err
        line = _one_line(err, "No space left on device")
        assert _assert_complete_lines(path, line) >= 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
