"""Running gunicorn with cowprof's hook module: what ``cowprof run`` does, as library code.

:func:`gunicorn_command` rewrites a gunicorn command line to load ``-c python:cowprof.gunicorn``
without editing the user's config (the config moves to ``COWPROF_GUNICORN_CONFIG``, which the hook
module loads); :func:`server_command` adds the checks and the executable lookup;
:func:`run_server` starts it, forwards the master signals to it while it runs and returns its
exit status the way a shell reports it; :func:`wait_for_tree` waits until it has forked workers.

A module of its own, not part of :mod:`cowprof.gunicorn`: that one is the config module gunicorn
imports in the master (``-c python:cowprof.gunicorn``) and imports the heap preparation and the
warm-up at import, which ``cowprof run`` does not need; this one imports only the standard library
at import time, which the master does not need.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from cowprof.errors import BadInput, CowprofError, NotAPreforkTree, ProcessGone

__all__ = ["FORWARDED_SIGNALS", "HOOK_MODULE", "exit_status", "forwarding_signals", "gunicorn_command",
           "resolve_executable", "run_server", "server_command", "wait_for_tree"]

HOOK_MODULE = "cowprof.gunicorn"
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTTIN",
                     "SIGTTOU")
"""Signals :func:`run_server` passes on to gunicorn (its documented master signals, minus WINCH,
which a terminal resize would send to both of us anyway)."""
TERMINATE_TIMEOUT = 30.0
"""Seconds :func:`run_server` waits for the server after SIGTERM when cowprof itself fails, before
SIGKILL."""

_CONFIG_LONG = ("--config", "--confi", "--conf", "--con")  # argparse accepts unique prefixes


def _split_config(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove every ``-c X`` / ``-cX`` / ``--config X`` / ``--config=X`` from gunicorn arguments.

    Returns the remaining arguments and the last config value (argparse: the last one wins).
    Arguments after a ``--`` are left alone.
    """
    rest: list[str] = []
    config = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        name, eq, val = a.partition("=")
        if a == "-c" or (name in _CONFIG_LONG and not eq):
            if i + 1 >= len(args):
                raise BadInput(f"gunicorn option {a} needs a value")
            config = args[i + 1]
            i += 2
            continue
        if eq and name in _CONFIG_LONG:
            config = val
        elif a.startswith("-c") and not a.startswith("--"):
            config = a[2:]
        else:
            rest.append(a)
        i += 1
    return rest, config


def gunicorn_command(argv: Sequence[str], *, cwd: str | os.PathLike[str],
                     environ: Mapping[str, str], prepare: bool = True) -> tuple[list[str], dict[str, str]]:
    """Rewrite ``gunicorn ARGS...`` to load cowprof's hook module without editing the user's config.

    The user's config (``-c/--config`` in ARGS, else in ``GUNICORN_CMD_ARGS``, else
    ``./gunicorn.conf.py`` when it exists: gunicorn's own order) moves to the environment variable
    ``COWPROF_GUNICORN_CONFIG`` and ARGS get ``-c python:cowprof.gunicorn``, which loads it.
    ``prepare=False`` sets ``COWPROF_PREPARE=0``. Returns the new argv and the environment
    variables to set. Accepts ``gunicorn``, a path to it, or ``PYTHON -m gunicorn``.
    """
    argv = list(argv)
    if not argv:
        raise BadInput("nothing to run (usage: cowprof run -- gunicorn ARGS...)")
    if os.path.basename(argv[0]).startswith("gunicorn"):
        head, args = argv[:1], argv[1:]
    elif argv[1:3] == ["-m", "gunicorn"]:
        head, args = argv[:3], argv[3:]
    else:
        raise BadInput(f"run wraps gunicorn, not {argv[0]!r} (usage: cowprof run -- gunicorn ARGS...)")
    rest, config = _split_config(args)
    env: dict[str, str] = {}
    if config is None and environ.get("GUNICORN_CMD_ARGS"):
        try:
            _, config = _split_config(shlex.split(environ["GUNICORN_CMD_ARGS"]))
        except ValueError:
            config = None
    if config is None and os.path.isfile(os.path.join(cwd, "gunicorn.conf.py")):
        config = os.path.join(cwd, "gunicorn.conf.py")
    if config is not None and config != f"python:{HOOK_MODULE}":
        if not config.startswith("python:"):
            config = os.path.normpath(os.path.join(cwd, config))
        env["COWPROF_GUNICORN_CONFIG"] = config
    if not prepare:
        env["COWPROF_PREPARE"] = "0"
    return head + ["-c", f"python:{HOOK_MODULE}"] + rest, env


def resolve_executable(cmd: list[str]) -> list[str]:
    """A bare ``gunicorn`` from PATH, else the one next to this Python (same virtual env)."""
    exe = cmd[0]
    if os.sep in exe:
        if not os.access(exe, os.X_OK):
            raise BadInput(f"{exe}: not an executable file")
        return cmd
    found = shutil.which(exe)
    if found is None:
        sibling = os.path.join(os.path.dirname(sys.executable), exe)
        if os.access(sibling, os.X_OK):
            found = sibling
    if found is None:
        raise BadInput(f"{exe}: command not found (is gunicorn installed in this environment?)")
    return [found] + cmd[1:]


def server_command(argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
                   environ: Mapping[str, str] | None = None,
                   prepare: bool = True) -> tuple[list[str], dict[str, str]]:
    """:func:`gunicorn_command` of ``argv`` (``cwd`` and ``environ`` default to this process's),
    with the executable resolved (:func:`resolve_executable`), after checking that the hook module
    is installed."""
    if importlib.util.find_spec(HOOK_MODULE) is None:
        raise CowprofError(f"{HOOK_MODULE} is missing from this cowprof installation")
    cmd, env = gunicorn_command(argv, cwd=os.getcwd() if cwd is None else cwd,
                                environ=os.environ if environ is None else environ, prepare=prepare)
    return resolve_executable(cmd), env


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def wait_for_tree(proc: subprocess.Popen[bytes], poll: float = 0.2) -> bool:
    """Wait until the server's master has forked workers; False if it exited first."""
    from cowprof.tree import find_tree

    while proc.poll() is None:
        try:
            find_tree(proc.pid)
            return True
        except (NotAPreforkTree, ProcessGone):
            time.sleep(poll)
    return False


@contextmanager
def forwarding_signals(proc: subprocess.Popen[bytes],
                       signals: Sequence[str] = FORWARDED_SIGNALS) -> Iterator[None]:
    """For the duration, the ``signals`` this process gets go to ``proc`` instead."""

    def forward(signum: int, frame: object) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {}
    try:
        for name in signals:
            sig = getattr(signal, name)
            old[sig] = signal.signal(sig, forward)
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_server(cmd: list[str], env_updates: Mapping[str, str] | None = None, *,
               while_running: Callable[[subprocess.Popen[bytes]], None] | None = None) -> int:
    """Start ``cmd`` (from :func:`server_command`) with ``env_updates`` on top of this process's
    environment, forward the master signals to it (:data:`FORWARDED_SIGNALS`), call
    ``while_running(proc)`` once it started (``cowprof run --record``), wait for it and return its
    exit status (:func:`exit_status`). Should anything raise meanwhile, the server is terminated
    (SIGKILL after :data:`TERMINATE_TIMEOUT` seconds), never orphaned."""
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env_updates or {})})
    except OSError as exc:
        raise BadInput(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
    with forwarding_signals(proc):
        try:
            if while_running is not None:
                while_running(proc)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # an unexpected error in cowprof itself: do not orphan the server
                proc.terminate()
                try:
                    proc.wait(timeout=TERMINATE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return exit_status(returncode)
