"""The CLI with typer's CliRunner and ``main(argv)``: commands on a fake tree, one-line errors, exit
codes, and the ``run`` argument rewriting. Real processes are in tests/integration/test_cli.py."""
from __future__ import annotations

import json
import re
import sys

import pytest
from typer.testing import CliRunner

import cowprof.preload
import cowprof.pages
import cowprof.sampler
import cowprof.tree
import cowprof.timer
from cowprof import cli, gunicorn_run
from cowprof.commands.snapshot import By
from cowprof.errors import AccessDenied, BadInput, NotAPreforkTree, ProcessGone
from cowprof.pages import PageReport
from cowprof.procfs import ProcessIdentity
from cowprof.record import read_record
from cowprof.sampler import StopReason
from cowprof.tree import Tree
from conftest import MiB, assert_one_line_error, page_report, run_main, worker_dict

runner = CliRunner()


class FakeTree:
    """Stands in for tree.find_tree / pages.scan / the master liveness check."""

    def __init__(self, error: Exception | None = None, scan_error: Exception | None = None) -> None:
        self.error = error
        self.scan_error = scan_error
        self.scans = 0

    def find_tree(self, pid: int, **kw) -> Tree:
        if self.error is not None:
            raise self.error
        return Tree(10, (11, 12))

    def scan(self, target, **kw) -> PageReport:
        if self.scan_error is not None:
            raise self.scan_error
        self.scans += 1
        return page_report([worker_dict(11, 3 * MiB + self.scans * MiB), worker_dict(12, 7 * MiB)],
                           taken_at=1000.0 + self.scans)


@pytest.fixture
def fake(monkeypatch):
    f = FakeTree()
    monkeypatch.setattr(cowprof.tree, "find_tree", f.find_tree)
    monkeypatch.setattr(cowprof.pages, "scan", f.scan)
    monkeypatch.setattr(cowprof.pages.Scanner, "scan", lambda self, target, **kw: f.scan(target, **kw))
    monkeypatch.setattr(cowprof.pages.Scanner, "read",
                        lambda self, target, **kw: cowprof.pages.ScanResult(f.scan(target, **kw), 0))
    monkeypatch.setattr(cowprof.tree.TreeWatcher, "find", lambda self, pid: f.find_tree(pid))
    monkeypatch.setattr(cowprof.sampler, "_process_identity", lambda pid: ProcessIdentity(pid, 1))
    # the fake tree's processes have no /proc: no late-import records either
    monkeypatch.setattr(cowprof.preload, "late_imports", lambda master, workers=None, **kw: cowprof.preload.LateImports(master))
    return f


# --- help ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["snapshot"], ["top"], ["record"], ["report"], ["run"],
                                     ["export"]])
def test_help_has_an_example(command):
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "cowprof" in result.output


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"cowprof {cowprof.__version__}"


# --- snapshot --------------------------------------------------------------------------------

def test_snapshot_table(fake):
    result = runner.invoke(cli.app, ["snapshot", "11"])
    assert result.exit_code == 0, result.output
    pids = [line.split()[0] for line in result.stdout.splitlines()
            if line.split()[:1] in (["10"], ["11"], ["12"])]
    assert pids == ["10", "12", "11"]


def test_snapshot_json_is_the_page_report(fake):
    result = runner.invoke(cli.app, ["snapshot", "10", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert PageReport.from_dict(data).to_dict() == data
    assert [w["pid"] for w in data["workers"]] == [11, 12]


def test_snapshot_by_region(fake):
    result = runner.invoke(cli.app, ["snapshot", "10", "--by", "region"])
    assert result.exit_code == 0
    assert "python" in result.stdout and "by region" in result.stdout


def test_by_choices_match_the_table_reporter():
    from cowprof.reporters.table import BY_CHOICES

    # worker/region are page tables; type/cause/function go to the attribution reporter
    assert tuple(b.value for b in By) == BY_CHOICES + ("type", "cause", "function")


# --- the fast path: snapshot and --version without the Typer app ----------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["snapshot", "10"], {"pid": 10}),
    (["snapshot", "10", "--json"], {"pid": 10, "json_out": True}),
    (["snapshot", "--json", "10"], {"pid": 10, "json_out": True}),
    (["snapshot", "10", "--by", "region", "--top", "3"], {"pid": 10, "by": By.region, "top_n": 3}),
    (["snapshot", "--by=cause", "10", "--top=20", "--json"],
     {"pid": 10, "by": By.cause, "top_n": 20, "json_out": True}),
])
def test_fast_path_takes_the_plain_forms(argv, expected):
    assert cli._fast_snapshot(argv[1:]) == expected
    assert cli._fast_path(argv) is not None


@pytest.mark.parametrize("argv", [
    [], ["snapshot"], ["snapshot", "010"], ["snapshot", "+10"], ["snapshot", " 10"], ["snapshot", "0"],
    ["snapshot", "-5"], ["snapshot", "1e3"], ["snapshot", "١٠"], ["snapshot", "10", "11"],
    ["snapshot", "10", "--by", "Region"], ["snapshot", "10", "--by", "colour"], ["snapshot", "10", "--by"],
    ["snapshot", "10", "--top", "0"], ["snapshot", "10", "--top", "x"], ["snapshot", "10", "--top="],
    ["snapshot", "10", "--json", "--json"], ["snapshot", "10", "--top", "3", "--top", "4"],
    ["snapshot", "10", "--json=1"], ["snapshot", "10", "--", "--json"], ["snapshot", "10", "-h"],
    ["snapshot", "10", "--help"], ["snapshot", "10", "--bogus"], ["--version", "snapshot"],
    ["--help"], ["top", "10"], ["record", "10", "-o", "x"],
])
def test_fast_path_leaves_everything_else_to_typer(argv):
    assert cli._fast_path(argv) is None


@pytest.mark.parametrize("argv", [
    ["snapshot", "10"], ["snapshot", "10", "--json"], ["snapshot", "11", "--by", "region"],
    ["snapshot", "--json", "--by=worker", "10"], ["--version"],
])
@pytest.mark.parametrize("error", [None, ProcessGone(10), NotAPreforkTree("process 10 is not part of a pre-fork tree")])
def test_fast_path_and_typer_print_the_same(monkeypatch, capsys, argv, error):
    from cowprof import cli_app

    monkeypatch.setattr(cowprof.preload, "late_imports", lambda master, workers=None, **kw: cowprof.preload.LateImports(master))
    assert cli._fast_path(argv) is not None
    outputs = []
    for run in (cli.main, cli_app.main):
        f = FakeTree(error)  # each run its own: the fake's reports change from scan to scan
        monkeypatch.setattr(cowprof.tree, "find_tree", f.find_tree)
        monkeypatch.setattr(cowprof.pages, "scan", f.scan)
        code = run(list(argv))
        out, err = capsys.readouterr()
        outputs.append((code, json.loads(out) if "--json" in argv and out else out, err))
    assert outputs[0] == outputs[1]


# --- errors: one line, exit code, no traceback -------------------------------------------------

@pytest.mark.parametrize("error, code, needle", [
    (ProcessGone(4242), 3, "does not exist"),
    (AccessDenied(4242), 4, "permission denied"),
    (NotAPreforkTree("process 4242 is not part of a pre-fork tree"), 5, "not part of a pre-fork tree"),
])
@pytest.mark.parametrize("command", [["snapshot", "4242"], ["top", "4242"],
                                     ["record", "4242", "-o", "{tmp}/r.jsonl"]])
def test_tree_errors(monkeypatch, tmp_path, error, code, needle, command):
    monkeypatch.setattr(cowprof.tree, "find_tree", FakeTree(error).find_tree)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = runner.invoke(cli.app, argv)
    assert_one_line_error(result.stderr, result.exit_code, code, needle)
    assert result.stdout == ""
    assert not (tmp_path / "r.jsonl").exists()  # nothing created for a bad target


def test_permission_denied_while_scanning(monkeypatch, capsys):
    f = FakeTree(scan_error=AccessDenied(11))
    monkeypatch.setattr(cowprof.tree, "find_tree", f.find_tree)
    monkeypatch.setattr(cowprof.pages, "scan", f.scan)
    code, out, err = run_main(capsys, "snapshot", "10")
    assert_one_line_error(err, code, 4, "permission denied reading process 11")


@pytest.mark.parametrize("argv, needle", [
    (["snapshot", "0"], "'pid'"),
    (["snapshot", "-5"], ""),
    (["snapshot", "abc"], "'pid'"),
    (["snapshot", "1", "--by", "colour"], "'--by'"),
    (["top", "1", "--interval", "-1"], "seconds > 0"),
    (["top", "1", "--interval", "0"], "seconds > 0"),
    (["top", "1", "--interval", "nan"], "seconds > 0"),
    (["top", "1", "--interval", "soon"], "not a number"),
    (["record", "1"], "'--output'"),
    (["record", "1", "-o", "x.jsonl", "--duration", "-3"], "seconds > 0"),
    (["export", "1", "--port", "70000"], "'--port'"),
    (["export"], "needs a PID"),
    (["frobnicate"], "No such command"),
    (["report"], "'FILE'"),
])
def test_bad_option_values(capsys, argv, needle):
    code, out, err = run_main(capsys, *argv)
    assert_one_line_error(err, code, 2, needle)


def test_clirunner_sees_the_same_one_line_errors():
    result = runner.invoke(cli.app, ["top", "1", "--interval", "-1"])
    assert_one_line_error(result.stderr, result.exit_code, 2, "seconds > 0")


# --- top -------------------------------------------------------------------------------------

def test_top_without_terminal_prints_each_refresh(fake):
    result = runner.invoke(cli.app, ["top", "10", "--interval", "0.01", "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("cowprof top") == 3
    assert "11" in result.stdout and "12" in result.stdout
    assert "1.00" in result.stdout  # worker 11 copies 1 MiB per (fake) second


@pytest.mark.parametrize("extra, tolerance, max_age", [([], cowprof.timer.TOP_TOLERANCE, 5), (["--exact"], 0.0, None)])
def test_top_tolerance_unless_exact(fake, monkeypatch, extra, tolerance, max_age):
    """top's max age counts refreshes (Rereads), as its help says; --exact: no tolerance, no policy."""
    import cowprof.sampler

    seen = {}
    real = cowprof.sampler.Sampler.__init__

    def init(self, pid, **kw):
        seen.update(kw)
        real(self, pid, **kw)

    monkeypatch.setattr(cowprof.sampler.Sampler, "__init__", init)
    result = runner.invoke(cli.app, ["top", "10", "--interval", "0.5", "--iterations", "1", *extra])
    assert result.exit_code == 0, result.output
    rereads = seen["rereads"]
    assert seen["tolerance"] == tolerance and seen["privileged"] is False and seen.get("max_age") is None
    if max_age is None:
        assert rereads is None
    else:
        assert rereads.max_age == max_age and rereads.tolerance == tolerance and rereads.interval == 0.5
        assert rereads.age_share == cowprof.timer.TOP_AGE_SHARE and rereads.max_cpu is None


def test_top_ctrl_c_exits_zero(fake, monkeypatch):
    from cowprof.reporters import live

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(live, "render", interrupted)
    result = runner.invoke(cli.app, ["top", "10"])
    assert result.exit_code == 0


def test_top_ends_when_master_exits(fake, monkeypatch):
    alive = iter([ProcessIdentity(10, 1), ProcessIdentity(10, 1), None, None])  # construction, first sample, then gone
    monkeypatch.setattr(cowprof.sampler, "_process_identity", lambda pid: next(alive))
    result = runner.invoke(cli.app, ["top", "10", "--interval", "0.01"])
    assert result.exit_code == 0
    assert result.stdout.count("cowprof top") == 1
    assert "master 10 exited" in result.stderr


# --- record / report -------------------------------------------------------------------------

def test_record_then_report(fake, tmp_path):
    path = tmp_path / "r.jsonl"
    result = runner.invoke(cli.app, ["record", "11", "-o", str(path), "--interval", "0.01",
                                     "--count", "3"])
    assert result.exit_code == 0, result.output
    assert "recorded 3 samples" in result.stderr
    rec = read_record(path)
    assert len(rec.samples) == 3 and rec.end["reason"] == StopReason.COUNT
    assert rec.header["target"]["pid"] == 10 and rec.header["target"]["requested_pid"] == 11
    result = runner.invoke(cli.app, ["report", str(path)])
    assert result.exit_code == 0
    assert "3 samples" in result.stdout and "Last sample, by worker" in result.stdout


def test_record_duration(fake, tmp_path):
    path = tmp_path / "r.jsonl"
    result = runner.invoke(cli.app, ["record", "10", "-o", str(path), "--interval", "0.02",
                                     "--duration", "0.1"])
    assert result.exit_code == 0
    rec = read_record(path)
    assert rec.end["reason"] == StopReason.DURATION and 2 <= len(rec.samples) <= 6


def test_record_never_overwrites(fake, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("keep me\n")
    result = runner.invoke(cli.app, ["record", "10", "-o", str(path), "--count", "1"])
    assert_one_line_error(result.stderr, result.exit_code, 2, "--force")
    assert path.read_text() == "keep me\n" and fake.scans == 0
    result = runner.invoke(cli.app, ["record", "10", "-o", str(path), "--count", "1", "--force"])
    assert result.exit_code == 0 and len(read_record(path).samples) == 1


def test_report_html(fake, tmp_path):
    pytest.importorskip("plotly")
    path = tmp_path / "r.jsonl"
    assert runner.invoke(cli.app, ["record", "10", "-o", str(path), "--interval", "0.01",
                                   "--count", "2"]).exit_code == 0
    out = tmp_path / "r.html"
    result = runner.invoke(cli.app, ["report", str(path), "--html", str(out)])
    assert result.exit_code == 0, result.output
    doc = out.read_text()
    assert 'id="cowprof-copied"' in doc and "<script src" not in doc


@pytest.mark.parametrize("content, code, needle", [
    (b"garbage\n", 6, "not a cowprof record file"),
    (b'{"format": "cowprof-record", "version": 7, "target": {}}\n', 6, "version 7"),
    (b"", 6, "empty"),
])
def test_report_bad_files(tmp_path, capsys, content, code, needle):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    rc, out, err = run_main(capsys, "report", str(path))
    assert_one_line_error(err, rc, code, needle)


def test_report_missing_file(tmp_path, capsys):
    rc, out, err = run_main(capsys, "report", str(tmp_path / "nope.jsonl"))
    assert_one_line_error(err, rc, 2, "no such file")


def test_report_truncated_file_warns_and_keeps_the_rest(fake, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert cli.main(["record", "10", "-o", str(path), "--interval", "0.01", "--count", "3"]) == 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:50])  # 2 samples + half of one
    capsys.readouterr()
    rc, out, err = run_main(capsys, "report", str(path))
    assert rc == 0
    assert "2 samples" in out
    assert err.startswith("cowprof: warning:") and "truncated" in err and len(err.splitlines()) == 1


# --- run -------------------------------------------------------------------------------------

def rewrite(args, tmp_path, environ=None, prepare=True):
    return gunicorn_run.gunicorn_command(args, cwd=str(tmp_path), environ=environ or {}, prepare=prepare)


@pytest.mark.parametrize("args", [
    ["gunicorn", "-c", "my.conf.py", "app:app"],
    ["gunicorn", "-cmy.conf.py", "app:app"],
    ["gunicorn", "--config", "my.conf.py", "app:app"],
    ["gunicorn", "--config=my.conf.py", "app:app"],
    ["gunicorn", "--conf=my.conf.py", "app:app"],
    ["gunicorn", "-c", "first.py", "app:app", "--config", "my.conf.py"],  # last one wins
])
def test_run_rewrites_the_config(tmp_path, args):
    cmd, env = rewrite(args, tmp_path)
    assert cmd == ["gunicorn", "-c", "python:cowprof.gunicorn", "app:app"]
    assert env == {"COWPROF_GUNICORN_CONFIG": str(tmp_path / "my.conf.py")}


def test_run_keeps_other_args_and_python_configs(tmp_path):
    cmd, env = rewrite(["/venv/bin/gunicorn", "-w", "4", "--preload", "-b", "127.0.0.1:0",
                        "--config", "python:myconf", "app:app", "--", "-c", "x"], tmp_path)
    assert cmd == ["/venv/bin/gunicorn", "-c", "python:cowprof.gunicorn", "-w", "4", "--preload",
                   "-b", "127.0.0.1:0", "app:app", "--", "-c", "x"]
    assert env == {"COWPROF_GUNICORN_CONFIG": "python:myconf"}


def test_run_default_config_file_and_env_args(tmp_path):
    cmd, env = rewrite(["gunicorn", "app:app"], tmp_path)
    assert env == {} and cmd == ["gunicorn", "-c", "python:cowprof.gunicorn", "app:app"]
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\n")
    cmd, env = rewrite(["gunicorn", "app:app"], tmp_path)
    assert env == {"COWPROF_GUNICORN_CONFIG": str(tmp_path / "gunicorn.conf.py")}
    cmd, env = rewrite(["gunicorn", "app:app"], tmp_path,
                       environ={"GUNICORN_CMD_ARGS": "--workers 3 -c /etc/g.py"})
    assert env == {"COWPROF_GUNICORN_CONFIG": "/etc/g.py"}


def test_run_no_prepare_and_python_m(tmp_path):
    cmd, env = rewrite([sys.executable, "-m", "gunicorn", "app:app"], tmp_path, prepare=False)
    assert cmd == [sys.executable, "-m", "gunicorn", "-c", "python:cowprof.gunicorn", "app:app"]
    assert env == {"COWPROF_PREPARE": "0"}


@pytest.mark.parametrize("args, needle", [
    ([], "nothing to run"),
    (["uwsgi", "--http", ":8000"], "wraps gunicorn"),
    (["gunicorn", "app:app", "-c"], "needs a value"),
])
def test_run_bad_commands(tmp_path, args, needle):
    with pytest.raises(BadInput, match=needle):
        rewrite(args, tmp_path)


def test_run_missing_gunicorn(capsys, tmp_path):
    code, out, err = run_main(capsys, "run", "--", str(tmp_path / "gunicorn"), "app:app")
    assert_one_line_error(err, code, 2, "not an executable")


def test_exit_status_of_signalled_child():
    assert gunicorn_run.exit_status(-15) == 143 and gunicorn_run.exit_status(4) == 4


# --- export ----------------------------------------------------------------------------------

def test_export_calls_serve(monkeypatch):
    import cowprof.exporter

    seen = {}

    def serve(pid, **kw):
        seen.update(kw, pid=pid)
        return 0

    monkeypatch.setattr(cowprof.exporter, "serve", serve)
    result = runner.invoke(cli.app, ["export", "123", "--port", "0", "--interval", "2",
                                     "--bind", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    assert seen == {"pid": 123, "port": 0, "bind": "127.0.0.1", "interval": 2.0, "pidfile": None,
                    "cmdline": None, "max_cpu": cowprof.timer.DEFAULT_EXPORT_MAX_CPU, "exact": False}
    result = runner.invoke(cli.app, ["export", "123", "--max-cpu", "0.5", "--exact"])
    assert result.exit_code == 0, result.output
    assert seen["max_cpu"] == 0.5 and seen["exact"] is True


def test_export_without_the_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cowprof.exporter", None)
    code, out, err = run_main(capsys, "export", "123")
    assert_one_line_error(err, code, 1, "cowprof.exporter")


# --- one check of an option for the CLI and the library ------------------------------------------

@pytest.mark.parametrize("value, minimum, seconds", [("0.5", 0.0, 0.5), (2, 0.0, 2.0), ("0.1", 0.1, 0.1), (5.0, 0.1, 5.0)])
def test_check_interval_accepts(value, minimum, seconds):
    from cowprof.timer import check_interval

    assert check_interval(value, minimum=minimum) == seconds


@pytest.mark.parametrize("value, minimum, needle", [
    ("0", 0.0, "0 must be a number of seconds > 0"), ("-1", 0.0, "> 0"), ("nan", 0.0, "> 0"), ("inf", 0.0, "> 0"),
    ("soon", 0.0, "'soon' is not a number of seconds"), (True, 0.0, "not a number"), (None, 0.0, "not a number"),
    (0.05, 0.1, "at least 0.1 seconds"), (float("inf"), 0.1, "at least 0.1 seconds"),
])
def test_check_interval_rejects(value, minimum, needle):
    from cowprof.timer import check_interval

    with pytest.raises(BadInput, match=re.escape(needle)):
        check_interval(value, minimum=minimum)
    with pytest.raises(BadInput, match="^--interval"):
        check_interval(value, minimum=minimum, option="--interval")


@pytest.mark.parametrize("value, needle", [("0.05", "at least 0.1 seconds, not 0.05"), ("0", "at least 0.1"),
                                           ("-1", "at least 0.1"), ("nan", "at least 0.1"),
                                           ("soon", "not a number")])
def test_export_interval_is_the_exporters_check(monkeypatch, capsys, value, needle):
    """``export --interval`` fails as ``serve(interval=...)`` does, before anything is started."""
    import cowprof.exporter

    monkeypatch.setattr(cowprof.exporter, "serve", lambda *a, **kw: pytest.fail("serve was called"))
    code, out, err = run_main(capsys, "export", "123", "--interval", value)
    assert_one_line_error(err, code, 2, needle)
    if needle != "not a number":
        with pytest.raises(BadInput, match=re.escape(needle)):
            cowprof.exporter.check_options(port=0, interval=float(value), bind="127.0.0.1")
