"""cowprof.helpcache: the help is stored once rendered and served only while nothing it depends on changed."""
from __future__ import annotations

import importlib
import os
import stat
import sys

import pytest

from cowprof import helpcache


class Render:
    """A stand-in for Typer's rendering: counts its calls, prints ``text``."""

    def __init__(self, text: str = "Usage: cowprof [OPTIONS]\n", code: int = 0, stderr: str = "") -> None:
        self.text, self.code, self.stderr, self.calls = text, code, stderr, 0

    def __call__(self) -> int:
        self.calls += 1
        sys.stdout.write(self.text)
        if self.stderr:
            sys.stderr.write(self.stderr)
        return self.code


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "help"
    monkeypatch.setenv(helpcache.ENV_CACHE, str(where))
    return where


@pytest.mark.parametrize("argv, expected", [
    (["--help"], True), (["-h"], True), (["snapshot", "--help"], True), (["snapshot", "-h"], True),
    (["a", "b", "c", "--help"], True), ([], False), (["snapshot"], False), (["--help", "snapshot"], False),
    (["snapshot", "10", "--help"], False), (["snapshot", "--json", "--help"], False),
    (["a", "b", "c", "d", "--help"], False), (["Snapshot", "--help"], False), (["snap shot", "--help"], False),
])
def test_which_requests_are_help_requests(argv, expected):
    assert helpcache.is_help_request(argv) is expected


def test_the_second_request_is_served_without_rendering(cache, capsys):
    render = Render("Usage: cowprof [OPTIONS] COMMAND\n\n  \u2500 snapshot\n")
    assert helpcache.serve(["--help"], render) == 0
    first = capsys.readouterr()
    assert helpcache.serve(["--help"], render) == 0
    second = capsys.readouterr()
    assert render.calls == 1 and first == second and first.out == render.text
    (entry,) = cache.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_another_request_or_terminal_setting_is_rendered_again(cache, capsys, monkeypatch):
    render = Render()
    helpcache.serve(["--help"], render)
    helpcache.serve(["snapshot", "--help"], render)
    assert render.calls == 2
    for name, value in (("COLUMNS", "61"), ("NO_COLOR", "1"), ("TERM", "dumb"), ("COWPROF_INTERVAL", "2")):
        monkeypatch.setenv(name, value)
        helpcache.serve(["--help"], render)
    assert render.calls == 6
    helpcache.serve(["--help"], render)
    assert render.calls == 6


def test_a_changed_module_file_makes_the_entry_stale(cache, capsys, tmp_path, monkeypatch):
    source = tmp_path / "pkg_helpdep.py"
    source.write_text("TEXT = 'one'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("pkg_helpdep")
    try:
        render = Render()
        helpcache.serve(["--help"], render)
        helpcache.serve(["--help"], render)
        assert render.calls == 1
        source.write_text("TEXT = 'two'\n")
        os.utime(source, ns=(1, 1))  # whatever the clock's resolution
        helpcache.serve(["--help"], render)
        assert render.calls == 2
    finally:
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("render", [Render(code=2), Render(stderr="error: no such command\n"), Render(text="")],
                         ids=["exit-2", "stderr", "nothing-printed"])
def test_failed_or_odd_renderings_are_not_stored(cache, capsys, render):
    helpcache.serve(["nosuch", "--help"], render)
    helpcache.serve(["nosuch", "--help"], render)
    assert render.calls == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_output_written_past_the_text_stream_is_not_stored(cache, capsys):
    def render() -> int:
        render.calls += 1  # type: ignore[attr-defined]
        sys.stdout.write("Usage: ")
        sys.stdout.buffer  # noqa: B018 (what Click reaches for to write bytes)
        return 0

    render.calls = 0  # type: ignore[attr-defined]
    helpcache.serve(["--help"], render)
    helpcache.serve(["--help"], render)
    assert render.calls == 2  # type: ignore[attr-defined]


def test_off_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(helpcache.ENV_CACHE, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    render = Render()
    helpcache.serve(["--help"], render)
    helpcache.serve(["--help"], render)
    assert render.calls == 2 and list(tmp_path.iterdir()) == []


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(helpcache.ENV_CACHE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert helpcache.directory() == str(tmp_path / ".cache" / "cowprof" / "help")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the spec says to ignore it
    assert helpcache.directory() == str(tmp_path / ".cache" / "cowprof" / "help")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert helpcache.directory() == str(tmp_path / "xdg" / "cowprof" / "help")


def test_a_symlinked_or_shared_directory_is_not_used(tmp_path, monkeypatch, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "help"
    link.symlink_to(target)
    monkeypatch.setenv(helpcache.ENV_CACHE, str(link))
    render = Render()
    helpcache.serve(["--help"], render)
    helpcache.serve(["--help"], render)
    assert render.calls == 2 and list(target.iterdir()) == []
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(helpcache.ENV_CACHE, str(shared))
    helpcache.serve(["--help"], render)
    assert render.calls == 3 and list(shared.iterdir()) == []
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # not ours to change


def test_a_planted_entry_is_not_trusted(cache, capsys):
    render = Render("the real help\n")
    helpcache.serve(["--help"], render)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"\x00garbage")
    helpcache.serve(["--help"], render)
    assert render.calls == 2 and capsys.readouterr().out == "the real help\n" * 2
    (entry,) = cache.iterdir()
    entry.unlink()
    entry.symlink_to(cache / "nowhere")
    helpcache.serve(["--help"], render)
    assert render.calls == 3
