"""Every command the docs show (README.md, docs/*.md) is run here, as a user would type it.

A shown command is a line of a ```bash / ```sh / ```console block, a ``$ ``-prompted line in any
block, or a line of an unmarked block that starts with one of the programs in ``PROGRAMS``. Each runs in a fresh directory of its own block (so a block's ``record`` and ``report`` lines
see each other's files), with only what cannot be typed verbatim on a test machine substituted:

- a PID placeholder (``1234``, ``<pid>``, ``<master-or-worker-pid>``, ``PID``) -> the master of a
  real prepared pre-fork tree (``tests/attribution_apps.py``, which saved its heap map);
- ports -> free ports on 127.0.0.1, ``--bind 0.0.0.0`` -> 127.0.0.1 (tests listen on loopback only);
- ``/run/gunicorn.pid`` -> a pid file naming that master;
- ``app:app``, ``gunicorn.conf.py``, ``myproject.gunicorn_settings``, ``mysite.wsgi:application`` ->
  small files of those names written into the block's directory (a WSGI app, a gunicorn config,
  a stock Django project).

Commands that serve until stopped (``top``, ``export``, ``record`` without ``--count``, ``run``,
``gunicorn``) run until they have shown they work (the metrics page answers, the record file has a
sample, the server prepared its workers), then get SIGINT, as a user's Ctrl-C, and must exit 0 (or
130, the documented status of an interrupted command), never with a traceback. Commands the check
cannot run here are listed in ``NOT_RUN`` with the reason; a shown command in neither group fails.

This is a gate, run once per ``scripts/test`` (``COWPROF_DOCS_CHECK=1``), not per Python version.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
sys.path[:0] = [str(TESTS), str(REPO)]

from attribution_apps import App  # noqa: E402
from forktree import stop_master  # noqa: E402

from demo.run import free_port  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "console", "shell"}
#: shown commands this check does not run, by their first words, and why
NOT_RUN = {
    "scripts/demo": "the README's quick start itself: minutes long; tests/integration/test_gunicorn.py runs the demo's code",
    "scripts/test": "the README's test command: what CI runs (this check is part of it)",
}
PID_TOKENS = re.compile(r"^(<[a-z-]*pid>|PID|1234|11908)$")
PROGRAMS = {"cowprof", "gunicorn", "python", "curl"}
SERVES = {"top", "export", "run", "record"}

APP_PY = '''\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\\n"]
'''
GUNICORN_CONF = "preload_app = True\nworkers = 2\n"


@dataclass
class Shown:
    """One command as the docs show it."""

    doc: str
    line: int
    block: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def shown_commands() -> list[Shown]:
    found: list[Shown] = []
    for path in DOCS:
        info: str | None = None
        block = 0
        pending = ""
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            if raw.startswith("```"):
                info = None if info is not None else raw[3:].strip()
                block += 1
                continue
            if info is None:
                continue
            line = raw.strip()
            if line.startswith("$ "):
                line = line[2:]
            elif info not in SHELL_BLOCKS and not (info == "" and line.split(" ", 1)[0] in PROGRAMS):
                continue  # code or output, not a command (an unmarked block's command lines count)
            line = (pending + " " + line).strip() if pending else line
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            pending = ""
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(Shown(path.name, n, block, line))
    return found


def _words(text: str) -> list[str]:
    """The command's words without leading VAR=value assignments."""
    words = shlex.split(text)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    return words


def test_every_shown_command_is_run_or_excused():
    unknown = []
    for cmd in shown_commands():
        for part in cmd.text.split("&&"):
            words = _words(part)
            if words and words[0] not in PROGRAMS and words[0] not in NOT_RUN:
                unknown.append(str(cmd))
    assert not unknown, "commands in the docs that this check neither runs nor excuses:\n" + "\n".join(unknown)
    assert len(shown_commands()) >= 10  # the parser still finds the docs' commands


def _slug(header: str) -> str:
    """GitHub's anchor of a markdown header."""
    text = header.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    """Relative links (README.md <-> docs/*.md, BENCHMARKS.md) name files that exist and anchors
    that are headers there."""
    anchors: dict[Path, set[str]] = {}
    for path in [*DOCS, REPO / "BENCHMARKS.md"]:
        anchors[path.resolve()] = {_slug(line) for line in path.read_text().splitlines() if line.startswith("#")}
    broken = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+://", target):
                    continue
                file, _, anchor = target.partition("#")
                dest = (path.parent / file).resolve() if file else path.resolve()
                if not dest.exists() or (anchor and anchor not in anchors.get(dest, set())):
                    broken.append(f"{path.name}:{n}: {target}")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)


# ------------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def tree():
    """A prepared pre-fork master (heap map saved) whose workers copied str pages."""
    with App("strhash", n=50_000) as app:
        yield app


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    from djangoproj import make_project

    return Path(make_project(tmp_path_factory.mktemp("django")))


def _substitute(words: list[str], env: dict[str, str], ctx: dict[str, str]) -> list[str]:
    out = []
    after_bind = False
    for i, w in enumerate(words):
        if PID_TOKENS.match(w) and i >= 2:
            w = ctx["pid"]
        elif w == "/run/gunicorn.pid":
            w = ctx["pidfile"]
        elif re.fullmatch(r"\d{4,5}", w) and i > 0 and words[i - 1] == "--port":
            w = ctx["port"]
        elif after_bind and w == "0.0.0.0":
            w = "127.0.0.1"
        elif re.fullmatch(r"127\.0\.0\.1:\d+", w):
            w = f"127.0.0.1:{ctx['port']}"
        elif w.startswith("http://127.0.0.1:"):
            w = re.sub(r":\d+/", f":{ctx['port']}/", w)
        after_bind = w == "--bind"
        out.append(w)
    return out


def _setup_dir(cwd: Path, text: str, django_project) -> None:
    (cwd / "app.py").write_text(APP_PY)
    (cwd / "gunicorn.conf.py").write_text(GUNICORN_CONF)
    if "myproject" in text:
        (cwd / "myproject").mkdir(exist_ok=True)
        (cwd / "myproject" / "__init__.py").write_text("")
        (cwd / "myproject" / "gunicorn_settings.py").write_text(GUNICORN_CONF)
    if "mysite.wsgi" in text:
        project = django_project()
        for item in ("mysite", "manage.py", "db.sqlite3"):
            src = project / item
            if src.exists() and not (cwd / item).exists():
                os.symlink(src, cwd / item)


def _argv(words: list[str]) -> list[str]:
    """The program as this test runs it: the venv's interpreter for cowprof, gunicorn and python."""
    head = {"cowprof": [sys.executable, "-m", "cowprof"], "gunicorn": [sys.executable, "-m", "gunicorn"],
            "python": [sys.executable]}.get(words[0], [words[0]])
    return head + words[1:]


def _ready(kind: str, words: list[str], cwd: Path, port: str, log: Path) -> bool:
    """Whether a serving command has shown that it works."""
    if kind == "export":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return b"cowprof_up" in r.read()
        except OSError:
            return False
    if kind == "record" and "-o" in words:
        out = cwd / words[words.index("-o") + 1]
        return out.exists() and out.read_bytes().count(b"\n") >= 2
    if kind in ("run", "gunicorn"):
        text = log.read_text(errors="replace")
        return "cowprof: prepared" in text or ("--no-prepare" in words and "Booting worker" in text)
    if kind == "top":
        return log.stat().st_size > 0
    return True


def _run_one(words: list[str], env: dict[str, str], cwd: Path, ctx: dict[str, str], log: Path,
             probe: list[str] | None = None) -> tuple[int, str]:
    """Runs one command (a serving one until ready, then SIGINT; ``probe``, e.g. the docs' curl
    line, is run against it while it serves and must succeed). Returns (exit status, output)."""
    kind = words[1] if words[0] == "cowprof" else words[0]
    serving = (words[0] == "gunicorn" or (kind in SERVES and "--count" not in words))
    with open(log, "wb") as out:
        proc = subprocess.Popen(_argv(words), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=False)
    workers: list[int] = []
    try:
        if serving:
            deadline = time.monotonic() + 90
            while proc.poll() is None and not _ready(kind, words, cwd, ctx["port"], log):
                if time.monotonic() > deadline:
                    raise AssertionError(f"not ready within 90 s: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
            assert proc.poll() is None, (f"exited ({proc.returncode}) before it showed that it works: "
                                         f"{log.read_text(errors='replace')[-2000:]}")
            if probe:
                r = subprocess.run(_argv(probe), cwd=cwd, env=env, capture_output=True, timeout=30)
                assert r.returncode == 0 and r.stdout, f"{shlex.join(probe)}: exit {r.returncode} {r.stderr!r}"
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        stop_master(proc, workers)
    return rc, log.read_text(errors="replace")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _blocks() -> list[list[Shown]]:
    by_block: dict[tuple[str, int], list[Shown]] = {}
    for cmd in shown_commands():
        if _words(cmd.text.split("&&")[0])[0] in NOT_RUN:
            continue
        by_block.setdefault((cmd.doc, cmd.block), []).append(cmd)
    return list(by_block.values())


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: f"{b[0].doc}:{b[0].line}")
def test_shown_commands_run(block: list[Shown], tree, tmp_path, request):
    ctx = {"pid": str(tree.master), "pidfile": str(tmp_path / "gunicorn.pid")}
    Path(ctx["pidfile"]).write_text(f"{tree.master}\n")
    _setup_dir(tmp_path, " ".join(c.text for c in block), lambda: request.getfixturevalue("django_project"))
    parts = [(n, m, cmd, part) for n, cmd in enumerate(block) for m, part in enumerate(cmd.text.split("&&"))]
    for i, (n, m, cmd, part) in enumerate(parts):
        words = _words(part)
        if words[0] == "curl":
            continue  # run by the serving command before it, as its probe
        # the exporter's default port where the docs show none; a free port wherever one can be given
        no_port = words[:2] == ["cowprof", "export"] and "--port" not in words
        ctx["port"] = "9464" if no_port else str(free_port())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["GUNICORN_CMD_ARGS"] = f"--bind=127.0.0.1:{ctx['port']} --no-control-socket"
        for assign in shlex.split(part):
            if not re.match(r"^[A-Z_][A-Z0-9_]*=", assign):
                break
            key, _, value = assign.partition("=")
            env[key] = value
        words = _substitute(words, env, ctx)
        following = parts[i + 1][3] if i + 1 < len(parts) else ""
        probe = _substitute(_words(following), env, ctx) if following and _words(following)[0] == "curl" else None
        rc, output = _run_one(words, env, tmp_path, ctx, tmp_path / f"cmd{n}.{m}.log", probe)
        assert "Traceback" not in output, f"{cmd}\n{output[-3000:]}"
        assert rc in (0, 130), f"{cmd}: exit {rc}\n{output[-3000:]}"


def test_api_listing_is_what_the_code_says():
    """docs/CONTRACTS.md is generated from the code (scripts/contracts.py); it must be current."""
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "contracts.py"), "--check"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
