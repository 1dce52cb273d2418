"""Warm-up requests through uvicorn's own server code, in the master (gunicorn's ``UvicornWorker``).

Calling the ASGI app in one short-lived event loop warms the app, but not what serves it: each
uvicorn worker then runs asyncio's event loop and transports, uvicorn's HTTP protocol, its parser
and the ASGI request cycle for the first time, and the specializing interpreter writes every one
of those code objects in every worker (measured: a UvicornWorker of the FastAPI fixture had copied
~650 pages before its first request, code objects ~170 of them). :func:`uvicorn_transport` makes
each warm-up request go through a ``uvicorn.Server`` built as the worker class builds its own
(its ``CONFIG_KWARGS``: loop and HTTP implementation, so uvloop and httptools where the workers
use them), serving a loopback socket of its own from a thread of the master, so those code objects
run (and are relocated and specialized) before the fork.

The server never starts the app's lifespan (``lifespan="off"``: startup handlers open connections
and start tasks, which belong in the workers), logs nothing, and is stopped, its socket closed and
its thread joined before the warm-up returns. Only for ``UvicornWorker`` (the ``uvicorn-worker``
package's, or uvicorn's own older one) and subclasses, without TLS; other classes get ``None``.
"""
from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from cowprof.warmup import request_target

__all__ = ["is_uvicorn_worker", "uvicorn_transport"]

_START_TIMEOUT = 10.0
_REQUEST_TIMEOUT = 30.0


#: the modules defining a ``UvicornWorker``: the ``uvicorn-worker`` package's, uvicorn's older own
_WORKER_MODULES = ("uvicorn_worker", "uvicorn.workers")


def is_uvicorn_worker(cls: Any) -> bool:
    """Whether ``cls`` (gunicorn's configured worker class) is a ``UvicornWorker`` or a subclass of
    one (by its classes' names and modules: nothing is imported to tell)."""
    return isinstance(cls, type) and any(
        base.__name__ == "UvicornWorker" and (base.__module__ + ".").startswith(tuple(m + "." for m in _WORKER_MODULES))
        for base in cls.__mro__)


def _request(port: int, target: str) -> int:
    _scheme, _host, _port, path, query, netloc = request_target(target)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_REQUEST_TIMEOUT)
    try:
        conn.request("GET", path + ("?" + query if query else ""), headers={"Host": netloc})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class _Requests:
    """The transport: ``target -> status`` through the server; ``run_coroutine`` runs a coroutine
    in the server's loop (:mod:`cowprof.warmup` closes the async database pools there)."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self._port, self._loop = port, loop

    def __call__(self, target: str) -> int:
        return _request(self._port, target)

    def run_coroutine(self, coro: Coroutine[Any, Any, object]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_START_TIMEOUT)


@contextmanager
def uvicorn_transport(server: Any) -> Iterator[Callable[[str], int] | None]:
    """A ``target -> status`` function sending warm-up requests through a uvicorn server like
    the workers' own, or None where that is not supported (see the module doc)."""
    cls = getattr(server, "worker_class", None)
    if not is_uvicorn_worker(cls) or getattr(server.cfg, "is_ssl", False):
        yield None
        return
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    try:
        config = uvicorn.Config(app=server.app.wsgi(), **{**getattr(cls, "CONFIG_KWARGS", {}), "lifespan": "off",
                                "log_config": None, "access_log": False, "log_level": "critical"})
        uv = uvicorn.Server(config)
        loop_factory = getattr(config, "get_loop_factory", lambda: None)()  # uvloop where the workers use it
    except Exception as exc:  # noqa: BLE001 - fall back to calling the app directly
        sock.close()
        server.log.info("cowprof: warm-up requests call the app directly (%s: %s)", type(exc).__name__, exc)
        yield None
        return
    failed: list[BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                loops.append(runner.get_loop())
                runner.run(uv.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failed.append(exc)

    thread = threading.Thread(target=serve, name="cowprof-uvicorn-warmup", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not uv.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not uv.started:
            server.log.info("cowprof: warm-up requests call the app directly (the uvicorn server did not start%s)",
                            f": {failed[0]!r}" if failed else "")
            yield None
        else:
            yield _Requests(port, loops[0])
    finally:
        uv.should_exit = True
        thread.join(_START_TIMEOUT)
        sock.close()
        if thread.is_alive():
            server.log.warning("cowprof: the warm-up's uvicorn server did not stop within %.0f s", _START_TIMEOUT)
