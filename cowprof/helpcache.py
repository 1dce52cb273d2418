"""The CLI's help, served from a private cache after its first rendering.

``cowprof [COMMAND ...] --help`` needs the Typer app, Click and Rich: ~100-170 ms of imports and
rendering on top of the interpreter's start, for a text that only changes with the code, the
terminal and a few environment variables. :func:`serve` renders it through Typer the first time,
stores the exact bytes with what they depend on, and writes them back on the next identical
request without importing any of it.

An entry is used only when all of these are the same as when it was stored:

- the request (the command words and ``--help``/``-h``), the interpreter, its ``sys.path``;
- what Rich, Typer and Click read to lay the text out: whether stdin/stdout/stderr are terminals,
  the terminal's size, stdout's encoding, and the environment variables they consult (``TERM``,
  ``COLUMNS``, ``NO_COLOR``, ``FORCE_COLOR``, ``TYPER_*``, every ``COWPROF_*``, ...);
- every module file loaded by the first rendering (cowprof's, Typer's, Click's, Rich's and the
  standard library's): same size, modification time and inode.

Anything else, a help request that wrote to stderr or exited non-zero included, goes to Typer as
without a cache. Entries live in ``COWPROF_HELP_CACHE`` (a directory; ``0`` turns the cache off),
else ``$XDG_CACHE_HOME/cowprof/help``, else ``~/.cache/cowprof/help``: a private directory
(:mod:`cowprof.privatedir`: this user's, writable by nobody else, made 0700, never through a
symbolic link), each file 0600. A cache that cannot be used is skipped
silently: the help is printed either way.
"""
from __future__ import annotations

import marshal
import os
import re
import sys
import zlib
from collections.abc import Callable
from typing import Any, TextIO

from cowprof import privatedir

__all__ = ["ENV_CACHE", "directory", "is_help_request", "serve"]

ENV_CACHE = "COWPROF_HELP_CACHE"
_FORMAT = 1
_MAX_ENTRY = 1 << 20
_MAX_WORDS = 3
_WORD = re.compile(r"[a-z][a-z0-9-]*\Z")
_HELP = ("--help", "-h")
#: environment variables Rich (console.py), Typer (core, rich_utils) and Click read
_ENV_NAMES = ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE",
              "TTY_INTERACTIVE", "COLUMNS", "LINES", "JUPYTER_COLUMNS", "JUPYTER_LINES", "TERMINAL_WIDTH",
              "DATABRICKS_RUNTIME_VERSION", "UNICODE_VERSION", "CLICOLOR", "CLICOLOR_FORCE", "PYTHONIOENCODING",
              "PYTHONUTF8", "LANG", "LC_ALL", "LC_CTYPE", "PYDANTIC_DISABLE_PLUGINS")
_ENV_PREFIXES = ("COWPROF_", "TYPER_", "_TYPER_")


def is_help_request(argv: list[str]) -> bool:
    """Whether ``argv`` is command words (at most three) followed by ``--help`` or ``-h`` alone."""
    return (0 < len(argv) <= _MAX_WORDS + 1 and argv[-1] in _HELP
            and all(_WORD.match(word) for word in argv[:-1]))


def directory() -> str | None:
    """Where entries are kept, or None when ``COWPROF_HELP_CACHE=0``."""
    chosen = os.environ.get(ENV_CACHE, "")
    if chosen == "0":
        return None
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cowprof", "help")


def _terminal() -> tuple[Any, ...]:
    ttys = []
    size = None
    for fd in (0, 1, 2):
        try:
            ttys.append(os.isatty(fd))
            if size is None:
                size = tuple(os.get_terminal_size(fd))
        except (OSError, ValueError):
            pass
    out = sys.stdout
    return (tuple(ttys), size, getattr(out, "encoding", None), getattr(out, "errors", None),
            bool(out is not None and out.isatty()))


def _request_key(argv: list[str]) -> tuple[Any, ...]:
    env = tuple(sorted((name, value) for name, value in os.environ.items()
                       if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)))
    return (_FORMAT, sys.executable, sys.version, tuple(sys.path), tuple(argv), env, _terminal())


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _loaded_files() -> tuple[tuple[str, tuple[int, int, int]], ...] | None:
    """(path, signature) of every module file loaded so far; None if one cannot be checked."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue  # built in or frozen: part of the interpreter, in the key already
        sig = _signature(path)
        if sig is None:
            return None
        files[path] = sig
    return tuple(sorted(files.items()))


def _open_dir(path: str, *, create: bool) -> int | None:
    """A descriptor of the private cache directory (made 0700 when ``create``), or None."""
    try:
        return privatedir.open_dir(path, create=create)
    except OSError:
        return None


def _entry_name(key: tuple[Any, ...]) -> str:
    return f"help-{zlib.crc32(repr(key).encode('utf-8', 'surrogateescape')):08x}"


def _lookup(dir_path: str, key: tuple[Any, ...]) -> str | None:
    dir_fd = _open_dir(dir_path, create=False)
    if dir_fd is None:
        return None
    try:
        data = privatedir.read_file(dir_fd, _entry_name(key), _MAX_ENTRY)
    finally:
        os.close(dir_fd)
    if data is None:
        return None
    try:
        entry = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None
    if not (isinstance(entry, tuple) and len(entry) == 3 and entry[0] == key and isinstance(entry[2], str)):
        return None
    for path, sig in entry[1]:
        if _signature(path) != sig:
            return None
    return entry[2]


def _store(dir_path: str, key: tuple[Any, ...], text: str) -> None:
    files = _loaded_files()
    if files is None:
        return
    data = marshal.dumps((key, files, text))
    if len(data) > _MAX_ENTRY:
        return
    dir_fd = _open_dir(dir_path, create=True)
    if dir_fd is None:
        return
    try:
        privatedir.write_file(dir_fd, _entry_name(key), data)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class _Recording:
    """A text stream that writes through to ``target`` and keeps a copy of what it wrote; anyone
    reaching past it (``buffer``, ``fileno``) makes the copy incomplete."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self.parts: list[str] = []
        self.complete = True

    def write(self, text: str) -> int:
        written = self._target.write(text)  # a TypeError for bytes, as Click's probe expects
        self.parts.append(text)
        return written

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, flush, ...: the target's
        if name in ("buffer", "fileno", "detach", "reconfigure"):
            self.complete = False
        return getattr(self._target, name)


def serve(argv: list[str], render: Callable[[], int]) -> int:
    """Print the help ``argv`` asks for (see :func:`is_help_request`) from the cache, or through
    ``render`` (Typer), storing what it printed when it exited 0 having written nothing to stderr.
    Returns the exit code."""
    dir_path = directory()
    if dir_path is None or sys.stdout is None or sys.stderr is None:
        return render()
    key = _request_key(argv)
    text = _lookup(dir_path, key)
    if text is not None:
        sys.stdout.write(text)
        return 0
    out, err = sys.stdout, sys.stderr
    recorded_out, recorded_err = _Recording(out), _Recording(err)
    sys.stdout, sys.stderr = recorded_out, recorded_err
    try:
        code = render()
    finally:
        sys.stdout, sys.stderr = out, err
    text = "".join(recorded_out.parts)
    if code == 0 and text and recorded_out.complete and not "".join(recorded_err.parts):
        _store(dir_path, key, text)
    return code
