"""Fork recipe helpers: warm-up, and prepare/restore for servers other than gunicorn.

See README.md (gunicorn has its own hooks: :mod:`cowprof.gunicorn`).

The rule is the same everywhere: :func:`cowprof.prepare_fork` in the parent once everything the
children will share is loaded, right before the first fork; :func:`cowprof.after_fork` in each child
right after it. What differs is where a server lets you run code at those two moments:

- plain ``os.fork()``, ``multiprocessing`` with the ``fork`` start method, Celery's prefork pool
  (billiard forks with ``os.fork``): :func:`prepare_parent` prepares and registers ``after_fork``
  with :func:`os.register_at_fork`, which runs in every child forked from Python code;
- ``multiprocessing`` with the ``forkserver`` start method (the Linux default since 3.14): the fork
  server forks the children, so it must be the process prepared: :func:`forkserver_context`;
- :func:`warm_up` calls a WSGI app in-process for a few paths before preparing, so that what the
  first requests import, cache or specialize happens once in the parent (gunicorn's hook uses it);
- uWSGI forks from C, where ``os.register_at_fork`` callbacks do not run by default: use
  :func:`uwsgi_postfork` (its ``postfork`` hook) instead.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote, urlsplit

from cowprof.prepare import PrepareReport, after_fork, prepare_fork

__all__ = ["WarmupResult", "forkserver_context", "prepare_parent", "register_after_fork", "uwsgi_postfork",
           "warm_up"]

_registered = False


@dataclass(frozen=True)
class WarmupResult:
    """Outcome of :func:`warm_up`: request counts, time, and one line per failure."""

    requests: int
    ok: int
    failed: int
    seconds: float
    failures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = f"warm-up: {self.requests} in-process requests in {self.seconds:.2f} s, {self.ok} ok"
        return s + (f", {self.failed} failed" if self.failed else "")


def _environ_for(target: str) -> dict[str, Any]:
    """A minimal WSGI environ for a GET of ``target`` (a path with query, or an absolute URL)."""
    parts = urlsplit(target)
    host = parts.hostname or "localhost"
    scheme = parts.scheme or "http"
    port = str(parts.port or (443 if scheme == "https" else 80))
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": unquote(parts.path or "/", "latin-1"),
        "QUERY_STRING": parts.query, "SERVER_NAME": host, "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": parts.netloc or host, "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "cowprof-warmup", "CONTENT_LENGTH": "", "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme, "wsgi.input": BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


def warm_up(app: Callable[..., Iterable[bytes]], paths: Sequence[str], *, rounds: int = 2,
            log: Any = None) -> WarmupResult:
    """Calls the WSGI ``app`` in-process ``rounds`` times for each of ``paths`` (GET, body read).

    Meant for the master right before :func:`cowprof.prepare_fork`: what the first requests import,
    cache or specialize then happens once, before the fork, instead of once per worker. A failure
    (an exception, or a 5xx status) is logged as a warning through ``log`` and counted; it never
    propagates.
    """
    started = time.perf_counter()
    ok = failed = 0
    failures: list[str] = []
    for _ in range(max(0, rounds)):
        for path in paths:
            status: list[str] = []

            def start_response(st: str, headers: list, exc_info: Any = None, _s: list = status) -> Callable:
                _s[:] = [st]
                return lambda chunk: None

            try:
                body = app(_environ_for(path), start_response)
                try:
                    for _chunk in body:
                        pass
                finally:
                    close = getattr(body, "close", None)
                    if close is not None:
                        close()
                code = int(status[0].split(None, 1)[0]) if status else 0
                problem = None if 0 < code < 500 else f"status {status[0] if status else 'missing'}"
            except Exception as exc:  # noqa: BLE001 - warm-up must never stop the server
                problem = f"{type(exc).__name__}: {exc}"
                if log is not None:
                    log.debug("cowprof: warm-up of %s failed:\n%s", path, traceback.format_exc())
            if problem is None:
                ok += 1
            else:
                failed += 1
                line = f"{path}: {problem}"
                if line not in failures:
                    failures.append(line)
                    if log is not None:
                        log.warning("cowprof: warm-up request %s", line)
    return WarmupResult(ok + failed, ok, failed, round(time.perf_counter() - started, 4), tuple(failures))


def register_after_fork() -> bool:
    """Registers :func:`cowprof.after_fork` to run in every child of ``os.fork()``, once per process
    (and its children). Returns False when it was already registered."""
    global _registered
    if _registered:
        return False
    os.register_at_fork(after_in_child=after_fork)
    _registered = True
    return True


def prepare_parent(*, register_child_hook: bool = True, **prepare_kwargs: Any) -> PrepareReport:
    """Prepares this (parent) process's heap for forking and, by default, registers ``after_fork``
    for the children. ``prepare_kwargs`` go to :func:`cowprof.prepare_fork`. Call it after the data
    the children share is loaded and before the first fork (before creating a fork ``Pool``)."""
    report = prepare_fork(**prepare_kwargs)
    if register_child_hook:
        register_after_fork()
    return report


def forkserver_context(preload: Sequence[str]) -> Any:
    """A ``multiprocessing`` ``forkserver`` context whose fork server imports ``preload`` (the
    modules holding what the children share) and then :mod:`cowprof.forkserver`, which prepares the
    server before it forks any child. Create pools and processes from the returned context."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([m for m in preload if m != "cowprof.forkserver"] + ["cowprof.forkserver"])
    return ctx


def uwsgi_postfork() -> bool:
    """Runs ``after_fork`` in each uWSGI worker through ``uwsgidecorators.postfork``.

    Call it at import of the WSGI module (which uWSGI imports in the master unless ``lazy-apps``
    is on). Returns False outside uWSGI (``uwsgidecorators`` is only importable inside it).
    """
    try:
        import uwsgidecorators  # type: ignore[import-not-found]
    except ImportError:
        return False
    uwsgidecorators.postfork(after_fork)
    return True
