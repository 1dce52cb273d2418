"""Warm-up in the master before the fork: what first requests create, created once, shared by all.

:func:`warm_up_app` runs, in order, each step logged and no failure ever propagated:

1. the framework steps of every framework detected in the app (:mod:`cowprof.frameworks`: Django's
   URL resolvers, templates, translation catalogs...; Flask's URL map and Jinja2 templates;
   FastAPI's routes and OpenAPI schema), then steps for libraries any app may use (SQLAlchemy
   mappers, Jinja2 environments);
2. in-process ``GET`` requests, ``rounds`` times: the framework-owned safe ones of the plans and the
   paths the user configured (WSGI through the app's callable, ASGI through one short-lived event
   loop);
3. hot code relocation (:mod:`cowprof.hotcode`): one more round finds the code objects the requests
   still write (plus those the workers of this app's earlier masters wrote: learned hot code,
   :mod:`cowprof.preload`), they are copied into fresh, dense memory (after the allocator's free blocks are
   filled, :mod:`cowprof.allocator`), and *settle* rounds run so the copies are specialized: a
   call site specialized for a function whose code was replaced misses from then on, and the
   interpreter re-specializes it only after 52 misses (``ADAPTIVE_COOLDOWN_VALUE`` in CPython
   3.12 and 3.13), which also gives the function its new version: up to ``settle_rounds`` rounds
   or ``settle_seconds``, whichever ends first, so that this happens in the master and not in
   every worker (measured on a stock Django project: 2 rounds left ~0.3 MB of function objects
   and call sites per worker to be written, 60 rounds none);
4. the plans' cleanup (Django: close the database connections the requests opened), then the
   same for the SQLAlchemy engines the requests connected (:mod:`cowprof.db_connections`);
5. the sockets and threads the warm-up left open are listed and logged (:mod:`cowprof.left_open`).

:func:`warm_up` is the request part alone for a WSGI app (the older API, kept).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote, urlsplit

from cowprof import allocator, db_connections, frameworks, hotcode, left_open

__all__ = ["StepResult", "WarmupOptions", "WarmupResult", "is_asgi", "warm_up", "warm_up_app"]


@dataclass(frozen=True)
class StepResult:
    """One framework step: what it did, or why it failed."""

    framework: str
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class WarmupResult:
    """Outcome of a warm-up: request counts, time, one line per failure, and (for
    :func:`warm_up_app`) the frameworks found, their steps and the code relocation."""

    requests: int
    ok: int
    failed: int
    seconds: float
    failures: tuple[str, ...] = ()
    frameworks: tuple[str, ...] = ()
    steps: tuple[StepResult, ...] = ()
    paths: tuple[str, ...] = ()
    """The paths requested (framework-owned ones first)."""
    requests_skipped: tuple[str, ...] = ()
    """Why a framework's own requests were not made."""
    relocation: dict[str, Any] | None = None
    left_open: tuple[str, ...] = ()
    """Sockets the warm-up left open (every worker inherits them) and threads it left running (no
    worker has them): :mod:`cowprof.left_open`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = f"warm-up: {self.requests} in-process requests in {self.seconds:.2f} s, {self.ok} ok"
        s += f", {self.failed} failed" if self.failed else ""
        s += f", {len(self.left_open)} sockets or threads left open" if self.left_open else ""
        if self.frameworks:
            failed_steps = sum(1 for st in self.steps if not st.ok)
            s += (f"; {', '.join(self.frameworks)}: {len(self.steps)} steps"
                  + (f" ({failed_steps} failed)" if failed_steps else ""))
        return s


@dataclass(frozen=True)
class WarmupOptions:
    """What :func:`warm_up_app` does."""

    paths: tuple[str, ...] = ()
    """User-configured paths or absolute URLs (``GET``; they run for real)."""
    framework: bool = True
    """Run the framework steps and the framework-owned requests."""
    rounds: int = 2
    relocate_code: bool = True
    settle_rounds: int = 60
    """Rounds after relocation at most (see the module doc)..."""
    settle_seconds: float = 3.0
    """...and at most this long (checked after each round)."""


# ------------------------------------------------------------------------------ requests


def request_target(target: str) -> tuple[str, str, str, str, str, str]:
    """(scheme, host, port, path, query, Host header) of a path with query, or of an absolute URL
    (a path alone is for ``localhost``)."""
    parts = urlsplit(target)
    scheme = parts.scheme or "http"
    host = parts.hostname or "localhost"
    port = str(parts.port or (443 if scheme == "https" else 80))
    return scheme, host, port, parts.path or "/", parts.query, parts.netloc or host


def _environ_for(target: str) -> dict[str, Any]:
    """A minimal WSGI environ for a GET of ``target`` (a path with query, or an absolute URL)."""
    scheme, host, port, path, query, netloc = request_target(target)
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query, "SERVER_NAME": host, "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": netloc, "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "cowprof-warmup", "CONTENT_LENGTH": "", "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme, "wsgi.input": BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


def _call_wsgi(app: Callable[..., Iterable[bytes]], target: str) -> str:
    """Status line of one GET of ``target`` through the WSGI ``app`` (body read and closed)."""
    status: list[str] = []

    def start_response(st: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        status[:] = [st]
        return lambda chunk: None

    body = app(_environ_for(target), start_response)
    try:
        for _chunk in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return status[0] if status else ""


def _asgi_scope(target: str) -> dict[str, Any]:
    scheme, host, port, path, query, netloc = request_target(target)
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "GET", "scheme": scheme, "path": unquote(path), "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"), "root_path": "",
        "headers": [(b"host", netloc.encode("latin-1")), (b"user-agent", b"cowprof-warmup")],
        "client": ("127.0.0.1", 0), "server": (host, int(port)), "state": {},
    }


async def _call_asgi(app: Any, target: str) -> int:
    status = [0]
    sent = [False]
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client disconnects once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            status[0] = int(message.get("status", 0))
        elif kind == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(app(_asgi_scope(target), receive, send), timeout=30)
    return status[0]


def is_asgi(app: Any) -> bool:
    """Whether ``app`` is an ASGI 3 application (an async callable) rather than a WSGI one."""
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(getattr(app, "__call__", None))  # noqa: B004 - the method itself


class _Tally:
    """Counts requests and records each distinct failure once (logged as a warning)."""

    def __init__(self, log: Any) -> None:
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.log = log

    def add(self, target: str, status: int | str | None, error: BaseException | None) -> None:
        """``status``: the code, or the WSGI status line."""
        problem = None
        text = str(status or "").strip()
        code = int(text.split(None, 1)[0]) if text[:3].isdigit() else 0
        if error is not None:
            problem = f"{type(error).__name__}: {error}"
            if self.log is not None:
                self.log.debug("cowprof: warm-up of %s failed:\n%s", target,
                               "".join(traceback.format_exception(error)))
        elif not 0 < code < 500:
            problem = f"status {text or 'missing'}"
        if problem is None:
            self.ok += 1
            return
        self.failed += 1
        line = f"{target}: {problem}"
        if line not in self.failures:
            self.failures.append(line)
            if self.log is not None:
                self.log.warning("cowprof: warm-up request %s", line)


Transport = Callable[[str], int]
"""Sends one warm-up GET of a target and returns the status (e.g. through the server's own code).
One that serves from an event loop of its own has ``run_coroutine(coro)``, which runs ``coro`` in
that loop (the async database pools are closed there)."""


def _request_rounds(app: Any, paths: Sequence[str], rounds: int, tally: _Tally,
                    transport: Transport | None = None, runner: asyncio.Runner | None = None) -> None:
    """``rounds`` GETs of each path through ``transport``, else through ``app`` (WSGI, or ASGI in
    ``runner``'s event loop, else in one of its own)."""
    if not paths or rounds <= 0:
        return
    if transport is not None:
        for _ in range(rounds):
            for path in paths:
                try:
                    tally.add(path, transport(path), None)
                except Exception as exc:  # noqa: BLE001
                    tally.add(path, None, exc)
        return
    if not is_asgi(app):
        for _ in range(rounds):
            for path in paths:
                try:
                    tally.add(path, _call_wsgi(app, path), None)
                except Exception as exc:  # noqa: BLE001 - warm-up must never stop the server
                    tally.add(path, None, exc)
        return

    async def all_rounds() -> None:
        for _ in range(rounds):
            for path in paths:
                try:
                    tally.add(path, await _call_asgi(app, path), None)
                except Exception as exc:  # noqa: BLE001
                    tally.add(path, None, exc)

    try:
        if runner is not None:
            runner.run(all_rounds())
        else:
            asyncio.run(all_rounds())
    except RuntimeError as exc:  # called from a running event loop
        for path in paths:
            tally.add(path, None, exc)


def warm_up(app: Callable[..., Iterable[bytes]], paths: Sequence[str], *, rounds: int = 2,
            log: Any = None) -> WarmupResult:
    """Calls the WSGI ``app`` in-process ``rounds`` times for each of ``paths`` (GET, body read).

    Meant for the master right before :func:`cowprof.prepare_fork`: what the first requests import,
    cache or specialize then happens once, before the fork, instead of once per worker. A failure
    (an exception, or a 5xx status) is logged as a warning through ``log`` and counted; it never
    propagates.
    """
    started = time.perf_counter()
    tally = _Tally(log)
    _request_rounds(app, list(paths), max(0, rounds), tally)
    return WarmupResult(tally.ok + tally.failed, tally.ok, tally.failed,
                        round(time.perf_counter() - started, 4), tuple(tally.failures), paths=tuple(paths))


# ------------------------------------------------------------------------------ the whole warm-up


def _run_steps(framework: str, steps: Sequence[frameworks.Step], log: Any) -> list[StepResult]:
    out = []
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            detail, ok = str(fn()), True
        except Exception as exc:  # noqa: BLE001 - a failing step is logged and skipped
            detail, ok = f"{type(exc).__name__}: {exc}", False
            if log is not None:
                log.debug("cowprof: warm-up step %s/%s failed:\n%s", framework, name, traceback.format_exc())
        result = StepResult(framework, name, ok, detail, round(time.perf_counter() - t0, 4))
        out.append(result)
        if log is not None:
            (log.info if ok else log.warning)("cowprof: warm-up %s: %s: %s (%.2f s)", framework, name, detail,
                                              result.seconds)
    return out


@contextlib.contextmanager
def _quiet(loggers: Iterable[str]) -> Any:
    """Raises the given loggers to ERROR for the duration (the warm-up's own 404 warnings)."""
    saved = [(lg, lg.level) for lg in (logging.getLogger(n) for n in loggers)]
    for lg, _level in saved:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _close_async_pools(opened: db_connections.Opened, runner: asyncio.Runner | None,
                       transport: Transport | None, log: Any) -> None:
    """Closes the async engines' pooled connections in the event loop that opened them: the
    in-process ASGI warm-up's, or the transport's."""
    run_coroutine = runner.run if runner is not None else getattr(transport, "run_coroutine", None)
    if run_coroutine is None:
        return  # Opened.close drops those pools instead
    try:
        run_coroutine(opened.aclose())
    except Exception as exc:  # noqa: BLE001 - the pools are then dropped by Opened.close
        if log is not None:
            log.warning("cowprof: closing the async database connections failed: %s: %s", type(exc).__name__, exc)


def _learned_hot_code() -> tuple[hotcode.CodeKey, ...]:
    """The code objects workers of this app's earlier masters wrote (cowprof.preload), or ()."""
    from cowprof import preload

    return preload.learn().hot_code


def warm_up_app(app: Any, options: WarmupOptions = WarmupOptions(), *, log: Any = None,
                transport: Transport | None = None) -> WarmupResult:
    """The whole warm-up of the module doc for ``app`` (the WSGI or ASGI callable the server will
    run). ``transport`` sends the requests instead of calling ``app`` (gunicorn's hook passes one
    that goes through its worker code, :mod:`cowprof.gunicorn_requests`). Never raises for a
    failure of the app or a framework step."""
    started = time.perf_counter()
    before = left_open.Snapshot.take()
    try:
        plans = frameworks.plan(app) if options.framework else []
    except Exception as exc:  # noqa: BLE001
        plans = []
        if log is not None:
            log.warning("cowprof: framework detection failed: %s: %s", type(exc).__name__, exc)
    steps: list[StepResult] = []
    for p in plans:
        steps += _run_steps(p.framework, p.steps, log)
    if options.framework:
        steps += _run_steps("generic", frameworks.generic_steps(), log)
    paths = [path for p in plans for path in p.requests] + [p for p in options.paths if p]
    paths = list(dict.fromkeys(paths))
    skipped = tuple(f"{p.framework}: {p.requests_skipped}" for p in plans if p.requests_skipped)
    for line in skipped:
        if log is not None:
            log.info("cowprof: warm-up makes no %s", line.replace(": ", " request: ", 1))
    tally = _Tally(log)
    rounds = max(0, options.rounds)
    relocation = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet(name for p in plans for name in p.quiet_loggers))
        opened = stack.enter_context(db_connections.watch())
        # one event loop for every round of an in-process ASGI warm-up: what the app opens in it
        # (a pool's connections) stays usable from round to round and is closed in it at the end
        runner = (stack.enter_context(asyncio.Runner())
                  if transport is None and paths and rounds and is_asgi(app) else None)
        _request_rounds(app, paths, rounds, tally, transport, runner)
        if options.relocate_code and paths and rounds:
            result = hotcode.relocate(lambda: _request_rounds(app, paths, 1, tally, transport, runner),
                                      before_copy=allocator.fill_all, learned=_learned_hot_code())
            relocation = result.to_dict()
            if log is not None:
                log.info("cowprof: %s", result.summary())
            if not result.skipped:
                settle_until = time.perf_counter() + options.settle_seconds
                for _ in range(max(rounds, options.settle_rounds)):
                    _request_rounds(app, paths, 1, tally, transport, runner)
                    if time.perf_counter() > settle_until:
                        break
        if opened is not None and opened.has_async():
            _close_async_pools(opened, runner, transport, log)
    for p in plans:
        steps += _run_steps(p.framework, p.cleanup, log)
    if opened is not None:
        steps += _run_steps("generic", [("database connections the warm-up opened", opened.close)], log)
    left = tuple(before.new_since())
    for line in left:
        if log is not None:
            log.warning("cowprof: the warm-up left %s; leave the path that opens it out of COWPROF_WARMUP, "
                        "or close it before the fork", line)
    return WarmupResult(tally.ok + tally.failed, tally.ok, tally.failed, round(time.perf_counter() - started, 4),
                        tuple(tally.failures), tuple(p.framework for p in plans), tuple(steps), tuple(paths),
                        skipped, relocation, left)
