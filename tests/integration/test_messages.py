"""Messages that name the right thing (issue 12, item 5): kernel threads are reported as kernel
threads under their own PID (before: "process 2 does not exist", and PID 4 named PID 2), root is
never told to run as root, and an empty path is called empty (before: ". already exists")."""
from __future__ import annotations

import os

import pytest

from cowprof import cli, procfs


def _kernel_threads() -> list[procfs.Stat]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = procfs.read_stat(int(name))
            except Exception:
                continue
            if st.kernel_thread:
                found.append(st)
    return found


def _one_line(capsys, argv: list[str], code: int) -> str:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("cowprof: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("which", ["kthreadd", "a child of kthreadd"])
@pytest.mark.parametrize("command", [["snapshot"], ["snapshot", "--by", "type"], ["top"], ["export"]])
def test_kernel_threads_are_named_as_such(capsys, which, command):
    threads = _kernel_threads()
    if not threads:
        pytest.skip("no kernel thread is visible in this PID namespace")
    if which == "kthreadd":
        st = next((t for t in threads if t.ppid == 0), None)
    else:
        st = next((t for t in threads if t.ppid != 0), None)
    if st is None:
        pytest.skip(f"no {which} visible in this PID namespace")
    argv = [command[0], str(st.pid), *command[1:]]
    if command[0] == "top":
        argv += ["--iterations", "1"]
    line = _one_line(capsys, argv, 5)
    assert f"process {st.pid} is a kernel thread ({st.comm})" in line


def test_root_is_not_told_to_run_as_root(capsys):
    rc = cli.main(["snapshot", "1"])
    err = capsys.readouterr().err
    assert rc in (0, 3, 4, 5) and "Traceback" not in err, err
    if os.geteuid() == 0:
        assert "or as root" not in err and "run cowprof as" not in err, err
    if rc == 4:
        assert "process 1" in err


@pytest.mark.parametrize("argv, option", [
    (["record", "1", "-o", ""], "'--output' / '-o'"),
    (["record", "1", "-o", " "], "'--output' / '-o'"),
    (["report", ""], "'FILE'"),
    (["report", "x.jsonl", "--html", ""], "'--html'"),
    (["run", "--record", "", "--", "gunicorn", "app:app"], "'--record'"),
    (["export", "--pidfile", ""], "'--pidfile'"),
])
def test_an_empty_path_is_called_empty(capsys, argv, option):
    line = _one_line(capsys, argv, 2)
    assert f"Invalid value for {option}: the path is empty" in line
