"""The CLI as a user runs it: real subprocesses against real forked trees (and a real gunicorn)."""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from forktree import ForkTree

from cowprof.pages import PageReport
from cowprof.record import read_record
from conftest import assert_one_line_error, run_main

PAGE = os.sysconf("SC_PAGE_SIZE")
COWPROF = [sys.executable, "-m", "cowprof"]
REPO = Path(__file__).resolve().parents[2]


def cowprof(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COWPROF, *args], capture_output=True, text=True, timeout=timeout, **kw)


class Reader:
    """Collects a child's stdout without blocking, so a test can wait for some text to appear."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.text = ""
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not self.sel.select(0):
                return predicate(self.text)
            if self.sel.select(min(left, 0.2)):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return predicate(self.text)
                self.text += chunk.decode(errors="replace")
        return True

    def rest(self) -> str:
        self.sel.close()
        self.text += self.proc.stdout.read().decode(errors="replace")
        return self.text


def stop(proc: subprocess.Popen) -> None:
    """Make sure a cowprof we started is gone (by its PID only)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def wait_lines(path: Path, n: int, timeout: float = 20.0) -> int:
    """Wait until ``path`` holds ``n`` complete lines; returns the count seen."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        if path.exists():
            count = path.read_bytes().count(b"\n")
            if count >= n:
                break
        time.sleep(0.05)
    return count


def test_snapshot_json_reports_the_tree_and_its_writes():
    """The JSON lists the tree's real PIDs, and workers that wrote N pages of the master's
    anonymous buffer show at least N copied pages there; workers that wrote none (the baseline)
    do not reach that bar."""
    writes = 256
    copied: dict[int, list[int]] = {}
    for w in (0, writes):
        with ForkTree(workers=2, master_mb=8, write_pages=w) as tree:
            out = cowprof("snapshot", str(tree.worker_pids[0]), "--json")
            assert out.returncode == 0, out.stderr
            data = json.loads(out.stdout)
            assert PageReport.from_dict(data).to_dict() == data
            assert data["master"]["pid"] == tree.master_pid
            assert sorted(x["pid"] for x in data["workers"]) == sorted(tree.worker_pids)
            copied[w] = [x["regions"]["python"]["copied_bytes"] for x in data["workers"]]
    assert all(c >= writes * PAGE for c in copied[writes]), copied
    assert all(c < writes * PAGE for c in copied[0]), copied


def test_top_follows_workers_and_exits_zero_on_ctrl_c():
    with ForkTree(workers=3, master_mb=8) as tree:
        proc = subprocess.Popen([*COWPROF, "top", str(tree.master_pid), "--interval", "0.3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "COLUMNS": "120"})
        try:
            reader = Reader(proc)
            assert reader.wait_for(lambda t: all(str(p) in t for p in tree.worker_pids)), reader.text
            victim = tree.worker_pids[0]
            tree.kill_worker(victim)  # like max_requests recycling: a worker disappears
            assert reader.wait_for(lambda t: f"workers gone: {victim}" in t), reader.text
            assert reader.wait_for(lambda t: t.count("cowprof top") >= 4)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            out, err = reader.rest(), proc.stderr.read().decode()
        finally:
            stop(proc)
    assert "Traceback" not in err and err == ""
    assert "2 workers" in out  # after the kill


def test_record_survives_sigkill_and_reports(tmp_path):
    path = tmp_path / "rec.jsonl"
    with ForkTree(workers=2, master_mb=8, write_pages=16) as tree:
        proc = subprocess.Popen([*COWPROF, "record", str(tree.master_pid), "-o", str(path),
                                 "--interval", "0.2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert wait_lines(path, 4) >= 4  # header + 3 samples
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop(proc)
            proc.stdout.close()
            proc.stderr.close()
    rec = read_record(path)
    assert len(rec.samples) >= 3 and rec.end is None
    assert all(r.master.pid == tree.master_pid for r in rec.reports)
    assert all(sorted(w.pid for w in r.workers) == sorted(tree.worker_pids) for r in rec.reports)
    out = cowprof("report", str(path))
    assert out.returncode == 0 and "no end line" in out.stdout


def test_record_stops_cleanly_on_ctrl_c_and_when_the_master_exits(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    tree = ForkTree(workers=2, master_mb=8)
    procs = []
    try:
        proc = subprocess.Popen([*COWPROF, "record", str(tree.master_pid), "-o", str(first),
                                 "-i", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        assert wait_lines(first, 3) >= 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and b"Traceback" not in err
        assert read_record(first).end["reason"] == "interrupted"

        proc = subprocess.Popen([*COWPROF, "record", str(tree.master_pid), "-o", str(second),
                                 "-i", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        assert wait_lines(second, 3) >= 3
        tree.stop()  # the server goes away: the recorder ends by itself
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        tree.stop()
        for p in procs:
            stop(p)
    rec = read_record(second)
    assert rec.end["reason"] == "target-exited" and len(rec.samples) >= 2
    out_html = tmp_path / "b.html"
    out = cowprof("report", str(second), "--html", str(out_html))
    assert out.returncode == 0, out.stderr
    assert 'id="cowprof-shared"' in out_html.read_text()


def _unprivileged_python() -> tuple[list[str], dict[str, str]] | None:
    """A command that runs cowprof as uid 65534 (needs root and setpriv), or None.

    The test interpreter may live where nobody else can read (e.g. pyenv under /root); then a
    system python of a version with a venv in the repo is used, with that venv's site-packages.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    candidates = [([sys.executable], {})]
    for minor in (11, 12, 13):
        site = REPO / f".venv/py3.{minor}/lib/python3.{minor}/site-packages"
        exe = f"/usr/bin/python3.{minor}"
        if site.is_dir() and os.access(exe, os.X_OK):
            candidates.append(([exe], {"PYTHONPATH": f"{REPO}:{site}"}))
    for cmd, env in candidates:
        probe = subprocess.run([*drop, *cmd, "-c", "import cowprof.cli, psutil"], cwd="/",
                               capture_output=True, timeout=60, env={**os.environ, **env})
        if probe.returncode == 0:
            return [*drop, *cmd, "-m", "cowprof"], env
    return None


def test_permission_denied_for_real():
    found = _unprivileged_python()
    if found is None:
        pytest.skip("needs root, setpriv and a Python that uid 65534 can run")
    cmd, env = found
    with ForkTree(workers=1, master_mb=4) as tree:  # owned by root
        out = subprocess.run([*cmd, "snapshot", str(tree.master_pid)], capture_output=True,
                             text=True, timeout=60, cwd="/", env={**os.environ, **env})
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith("cowprof: permission denied") and len(out.stderr.splitlines()) == 1


WSGI_APP = """\


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

GUNICORN_CONF = """\
workers = 2
preload_app = True
bind = "127.0.0.1:0"
graceful_timeout = 5
"""


@pytest.mark.slow
def test_run_gunicorn_with_record(tmp_path):
    """``cowprof run`` keeps the user's config (2 workers, gunicorn's default is 1), injects the
    hook (its log line), records the tree, forwards SIGTERM and exits with gunicorn's status."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed next to this Python")
    (tmp_path / "tinyapp.py").write_text(WSGI_APP)
    (tmp_path / "my.conf.py").write_text(GUNICORN_CONF)
    rec = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [*COWPROF, "run", "--record", str(rec), "--interval", "0.3", "--", str(gunicorn),
         "-c", "my.conf.py", "tinyapp:app"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "COWPROF_WARMUP": ""})
    try:
        assert wait_lines(rec, 3, timeout=60) >= 3, proc.stderr.read1().decode() if proc.poll() is not None else ""
        deadline = time.monotonic() + 30  # until a sample sees both workers (or give up)
        while time.monotonic() < deadline and proc.poll() is None:
            if any(len(r.workers) == 2 for r in read_record(rec).reports):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    err_text = err.decode(errors="replace")
    assert proc.returncode == 0, err_text
    assert "[INFO] cowprof: " in err_text  # the hook's log line, through gunicorn's logger
    recording = read_record(rec)
    assert recording.end["reason"] == "target-exited"
    reports = recording.reports
    assert len(reports) >= 2
    # the user's workers = 2 applied (gunicorn's default is 1); the first sample may come between
    # the two forks
    assert max(len(r.workers) for r in reports) == 2
    assert recording.header["target"]["pid"] == reports[0].master.pid


# --- cowprof.cli.main in this process, on real processes ------------------------------------

def test_real_missing_pid_and_lone_process(capsys):
    with open("/proc/sys/kernel/pid_max") as fh:
        missing = int(fh.read()) + 1  # above pid_max: can never exist
    code, _, err = run_main(capsys, "snapshot", str(missing))
    assert_one_line_error(err, code, 3, str(missing))
    lone = subprocess.Popen(["sleep", "30"])
    try:
        code, _, err = run_main(capsys, "snapshot", str(lone.pid))
        assert_one_line_error(err, code, 5, "not part of a pre-fork tree")
    finally:
        lone.kill()
        lone.wait()


@pytest.fixture
def fake_gunicorn(tmp_path):
    """An executable named gunicorn that reports its argv and env, then exits with $FAKE_RC."""
    path = tmp_path / "bin" / "gunicorn"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        print(json.dumps({{"argv": sys.argv[1:], "config": os.environ.get("COWPROF_GUNICORN_CONFIG"),
                          "prepare": os.environ.get("COWPROF_PREPARE")}}), flush=True)
        sys.exit(int(os.environ.get("FAKE_RC", "0")))
        """))
    path.chmod(0o755)
    return path


def test_run_execs_the_rewritten_command_and_returns_its_status(fake_gunicorn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_RC", "3")
    out = subprocess.run([sys.executable, "-m", "cowprof", "run", "--no-prepare", "--",
                          str(fake_gunicorn), "-c", "g.conf.py", "-w", "2", "app:app"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    seen = json.loads(out.stdout)
    assert seen["argv"] == ["-c", "python:cowprof.gunicorn", "-w", "2", "app:app"]
    assert seen["config"] == str(tmp_path / "g.conf.py") and seen["prepare"] == "0"


def test_run_refuses_to_overwrite_record_before_starting(fake_gunicorn, tmp_path, capsys):
    rec = tmp_path / "r.jsonl"
    rec.write_text("keep\n")
    code, out, err = run_main(capsys, "run", "--record", str(rec), "--", str(fake_gunicorn), "app:app")
    assert_one_line_error(err, code, 2, "already exists")
    assert out == ""  # the fake gunicorn never ran


def test_python_m_cowprof():
    out = subprocess.run([sys.executable, "-m", "cowprof", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0 and "Usage: cowprof" in out.stdout and "snapshot" in out.stdout


# sitecustomize: once the module run by -m starts importing, a string exec cut short by a
# KeyboardInterrupt that is caught at once (what a Ctrl-C landing inside an import can do)
_CAUGHT_STRING_INTERRUPT = """
import sys

def hook(event, args):
    if event == "import" and args[0] in ("cowprof.cli", "plain_helper") and not hasattr(sys, "_interrupted_once"):
        sys._interrupted_once = True
        try:
            exec("raise KeyboardInterrupt", {})
        except KeyboardInterrupt:
            pass

sys.addaudithook(hook)
"""


def test_python_m_cowprof_keeps_its_exit_code_after_a_caught_interrupt(tmp_path):
    """A Ctrl-C that `record` or `top` catches while a string exec runs (an import building a
    dataclass) must not turn ``python -m cowprof``'s exit code into a death by SIGINT."""
    (tmp_path / "sitecustomize.py").write_text(_CAUGHT_STRING_INTERRUPT)
    (tmp_path / "plain_helper.py").write_text("")
    (tmp_path / "plain_main.py").write_text("import sys\nimport plain_helper\nsys.exit(0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    ours = subprocess.run([sys.executable, "-m", "cowprof", "--version"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert ours.returncode == 0 and ours.stdout.strip(), (ours.returncode, ours.stderr)
    plain = subprocess.run([sys.executable, "-m", "plain_main"], capture_output=True, timeout=60, env=env,
                           cwd=tmp_path)
    if sys.version_info < (3, 14):  # the interpreter's behaviour the fix is for (fixed in 3.14)
        assert plain.returncode == -signal.SIGINT, plain
    else:
        assert plain.returncode == 0, plain


# --- start-up: what is imported before the work begins (scripts/bench_startup.py times it) -------

_AT_FIRST_PROC_READ = r'''
import os, sys
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/") and args[0][6:7].isdigit():
        sys.stdout.write(" ".join(sorted(sys.modules)) + "\n")
        sys.stdout.flush()
        os._exit(0)
sys.addaudithook(hook)
from cowprof.cli import main
sys.exit(main())
'''
_START_UP_HEAVY = ("typer", "pydantic", "rich", "numpy", "psutil", "dataclasses", "cowprof.prepare",
                   "cowprof.pages", "cowprof.cli_app")


@pytest.mark.parametrize("argv", [["snapshot", "{pid}", "--json"], ["snapshot", "{pid}", "--by", "region"]])
def test_snapshot_reaches_its_first_proc_read_without_the_heavy_imports(argv):
    """Before this test's branch: typer (and with it rich and pydantic), numpy, psutil and
    dataclasses were all imported before snapshot read /proc at all."""
    args = [a.replace("{pid}", str(os.getpid())) for a in argv]
    r = subprocess.run([sys.executable, "-c", _AT_FIRST_PROC_READ, *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "cowprof.tree" in loaded
    assert not {m for m in loaded if m.split(".")[0] in _START_UP_HEAVY or m in _START_UP_HEAVY}


def test_help_is_typers_without_markdown_and_tracebacks():
    """``--help`` loads no numpy, pydantic, psutil or cowprof.prepare, and typer.rich_utils without
    rich.markdown/rich.traceback, for the very same text as with them loaded first."""
    code = ("import sys\npre = sys.argv.pop(1)\nif pre:\n    import rich.markdown, rich.traceback\n"
            "from cowprof.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', ' '.join(sorted(sys.modules)))\n")
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color", "FORCE_COLOR": "1",
           "COWPROF_HELP_CACHE": "0"}  # Typer's rendering each time
    lean, full = (subprocess.run([sys.executable, "-c", code, pre], capture_output=True, text=True, env=env,
                                 timeout=60) for pre in ("", "1"))
    assert lean.returncode == 0 and full.returncode == 0, (lean.stderr, full.stderr)
    lean_help, lean_modules = lean.stdout.rsplit("MODULES ", 1)
    full_help, _ = full.stdout.rsplit("MODULES ", 1)
    assert lean_help == full_help and "Usage" in lean_help and "snapshot" in lean_help and "\x1b[" in lean_help
    loaded = set(lean_modules.split())
    assert "typer.rich_utils" in loaded
    assert not loaded & {"rich.markdown", "rich.traceback", "markdown_it", "numpy", "pydantic", "psutil",
                         "cowprof.prepare"}


def test_procfs_text_readers_and_tree_import_no_numpy():
    code = "import sys, cowprof.procfs, cowprof.tree, cowprof.pages; print(sorted({'numpy', 'psutil'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_command_modules_and_the_runner_import_only_the_standard_library():
    """cli_app imports the command modules to build the app, the fast path imports snapshot's: none
    of them may pull in what a command needs only when it runs; and the gunicorn config module the
    master loads (``-c python:cowprof.gunicorn``) does not import the runner."""
    code = ("import sys\nimport cowprof.commands.snapshot, cowprof.commands.top, cowprof.commands.record, "
            "cowprof.commands.report, cowprof.commands.run, cowprof.commands.export, cowprof.gunicorn_run\n"
            "print(' '.join(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "cowprof.commands.common" in loaded
    assert not {m for m in loaded if m.split(".")[0] in _START_UP_HEAVY or m in _START_UP_HEAVY}
    assert not {m for m in loaded if m.startswith("cowprof.") and m.split(".")[1] in (
        "tree", "sampler", "record", "reporters", "exporter", "gunicorn", "prepare", "attribution")}
    code = "import sys, cowprof.gunicorn\nprint(' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "cowprof.gunicorn" in loaded and not {"cowprof.gunicorn_run", "cowprof.commands"} & loaded


_HELP_RUN = r'''
import sys
from cowprof.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\n")
sys.exit(code)
'''


def _help_in_a_terminal(argv, env, columns=87):
    """``cowprof ARGV`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide: (output, exit code)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "cowprof", *argv], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks), proc.wait(timeout=60)


@pytest.mark.parametrize("argv", [["--help"], ["record", "--help"], ["export", "-h"]])
def test_cached_help_is_typers_help_byte_for_byte(tmp_path, argv):
    """The second request is served from the cache without Typer, Click or Rich, and prints exactly
    what Typer printed, through a pipe and on a terminal (colours, its width)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["COWPROF_HELP_CACHE"] = str(tmp_path / "help")
    runs = [subprocess.run([sys.executable, "-c", _HELP_RUN, *argv], capture_output=True, env=env, timeout=60)
            for _ in range(2)]
    uncached = subprocess.run([sys.executable, "-c", _HELP_RUN, *argv], capture_output=True, timeout=60,
                              env={**env, "COWPROF_HELP_CACHE": "0"})
    assert [r.returncode for r in (*runs, uncached)] == [0, 0, 0]
    assert runs[0].stdout == runs[1].stdout == uncached.stdout and b"Usage: cowprof" in uncached.stdout
    first_modules, second_modules = (set(r.stderr.decode().split("MODULES ", 1)[1].split()) for r in runs)
    assert "typer" in first_modules and "rich" in first_modules
    assert not {m for m in second_modules if m.split(".")[0] in ("typer", "click", "rich", "pydantic")}

    tty_env = {**env, "TERM": "xterm-256color"}
    on_tty = [_help_in_a_terminal(argv, tty_env) for _ in range(2)]
    tty_uncached = _help_in_a_terminal(argv, {**tty_env, "COWPROF_HELP_CACHE": "0"})
    assert on_tty[0] == on_tty[1] == tty_uncached and tty_uncached[1] == 0
    assert b"\x1b[" in tty_uncached[0] and tty_uncached[0] != uncached.stdout
    narrower = _help_in_a_terminal(argv, tty_env, columns=61)
    assert narrower == _help_in_a_terminal(argv, {**tty_env, "COWPROF_HELP_CACHE": "0"}, columns=61)
    assert narrower[0] != tty_uncached[0]


def test_cached_help_into_a_closed_pipe_is_one_exit_code_without_a_traceback(tmp_path):
    env = {**os.environ, "COWPROF_HELP_CACHE": str(tmp_path / "help")}
    assert subprocess.run([sys.executable, "-m", "cowprof", "--help"], capture_output=True, env=env,
                          timeout=60).returncode == 0
    assert list((tmp_path / "help").iterdir())  # the next one is served from the cache
    r, w = os.pipe()
    os.close(r)
    try:
        out = subprocess.run([sys.executable, "-m", "cowprof", "--help"], stdout=w, stderr=subprocess.PIPE,
                             env=env, timeout=60)
    finally:
        os.close(w)
    assert out.returncode == 1 and out.stderr == b""
