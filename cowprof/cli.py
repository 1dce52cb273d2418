"""The ``cowprof`` command line: snapshot, top, record, report, run, export.

:func:`main` is the entry point (``cowprof = "cowprof.cli:main"``) and what tests call; it turns
every :class:`~cowprof.errors.CowprofError` and every usage error into one line on stderr and an
exit code, never a traceback. The options and the help are a Typer app (:mod:`cowprof.cli_app`,
also ``cowprof.cli.app``); what each command does is in :mod:`cowprof.commands` (a module per
command).

Start-up: building the Typer app and parsing with it costs more than a one-shot snapshot of a big
tree takes (typer imports rich and pydantic, and converts each option through a pydantic
``TypeAdapter``). So :func:`main` runs the forms a script or a user types most, ``snapshot PID``
with ``--json``, ``--by CHOICE`` and ``--top N``, and ``--version``, without it, when every
argument is one those forms take in its plain spelling (a decimal PID, a lower-case choice, each
option once); anything else, help and every error included, goes to the Typer app, so options,
messages and exit codes stay Typer's. Help requests are printed from :mod:`cowprof.helpcache`
once Typer has rendered them for the same code, terminal and environment.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cowprof.errors import CowprofError

if TYPE_CHECKING:  # served by __getattr__ below, on first use
    from cowprof.cli_app import app

__all__ = ["app", "guarded", "main"]

PROG = "cowprof"
_SNAPSHOT_BY = ("worker", "region", "type", "cause", "function")
_MAX_INT_DIGITS = 18  # a plain decimal PID or row count: what every int parser reads the same


def guarded(run: Callable[[], Any]) -> int:
    """Call ``run`` and return its exit code: 0 unless it returns an int; a CowprofError becomes
    its one-line message and exit code, Ctrl-C 130, a closed stdout 1."""
    try:
        rv = run()
    except CowprofError as exc:
        from cowprof.commands.common import err

        err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # e.g. Rich on a broken pipe
        return exc.code if isinstance(exc.code, int) else 1
    except BrokenPipeError:
        # `cowprof snapshot 1 --json | head`: not worth a traceback; point stdout at /dev/null so
        # the interpreter's final flush does not complain either
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    if isinstance(rv, bool) or not isinstance(rv, int):
        return 0
    return rv


def _plain_int(text: str) -> int | None:
    """``text`` as a positive int when it is plain decimal digits without a leading zero."""
    if 0 < len(text) <= _MAX_INT_DIGITS and text.isascii() and text.isdigit() and text[0] != "0":
        return int(text)
    return None


def _fast_snapshot(args: list[str]) -> dict[str, Any] | None:
    """The arguments of ``snapshot`` (after the command name) as keyword arguments of
    :func:`cowprof.commands.snapshot.main`, or None when Typer has to parse them."""
    pid = None
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg == "--json" and "json_out" not in opts:
            opts["json_out"] = True
        elif name in ("--by", "--top") and (eq or i + 1 < len(args)):
            if not eq:
                i += 1
                value = args[i]
            key = "by" if name == "--by" else "top_n"
            if key in opts:
                return None
            if key == "by":
                if value not in _SNAPSHOT_BY:
                    return None
                opts[key] = value
            else:
                n = _plain_int(value)
                if n is None:
                    return None
                opts[key] = n
        elif pid is None and (pid := _plain_int(arg)) is not None:
            pass
        else:
            return None
        i += 1
    if pid is None:
        return None
    if "by" in opts:
        from cowprof.commands.snapshot import By

        opts["by"] = By(opts["by"])
    return {"pid": pid, **opts}


def _fast_path(argv: list[str]) -> Callable[[], Any] | None:
    """What to run for ``argv`` without the Typer app, or None."""
    if argv == ["--version"]:
        def version() -> int:
            from cowprof import __version__

            sys.stdout.write(f"cowprof {__version__}\n")
            return 0

        return version
    if argv[:1] == ["snapshot"]:
        kwargs = _fast_snapshot(argv[1:])
        if kwargs is not None:
            def snapshot() -> int:
                from cowprof.commands import snapshot as command

                return command.main(**kwargs)

            return snapshot
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    run = _fast_path(args)
    if run is not None:
        return guarded(run)
    from cowprof import helpcache

    if helpcache.is_help_request(args):
        return guarded(lambda: helpcache.serve(args, lambda: _typer_main(args)))
    return _typer_main(args)


def _typer_main(args: list[str]) -> int:
    from cowprof import cli_app

    return cli_app.main(args)


def __getattr__(name: str) -> Any:
    """``cowprof.cli.app``, the Typer app, built on first use (the fast path never builds it)."""
    if name == "app":
        from cowprof import cli_app

        return cli_app.app
    raise AttributeError(f"module 'cowprof.cli' has no attribute {name!r}")
