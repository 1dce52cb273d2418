"""Warm-up requests through gunicorn's own worker code, in the master.

An in-process call of the WSGI app warms the app, but not the server: gunicorn's HTTP parser, its
WSGI environ and response code and the stdlib code they use run for the first time in each worker,
which then specializes (writes) every one of those code objects (measured on a stock Django
project: ~90 gunicorn and ~100 stdlib code objects, ~150 pages, per worker). :func:`worker_transport`
makes each warm-up request go through a worker object of the configured class instead: a request
is written into one end of a socket pair and ``worker.handle(listener, client, addr)`` (what a sync
worker calls for each accepted connection) parses it, calls the app and writes the response, which
is read back from the other end.

Only for sync workers (``gunicorn.workers.sync.SyncWorker`` and subclasses) without TLS, and for
``UvicornWorker`` through a uvicorn server of the master's (:mod:`cowprof.uvicorn_requests`); other
worker classes get ``None`` and the warm-up calls the app directly. The worker object never runs
its ``init_process`` (no signal handlers, no loop); its temporary file is closed at the end, and
its access log lines are dropped (warm-up requests do not show in the access log). The
``pre_request``/``post_request`` hooks of the config run for these requests as for any other.
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cowprof.uvicorn_requests import is_uvicorn_worker, uvicorn_transport
from cowprof.warmup import request_target

__all__ = ["worker_transport"]

_CLIENT_ADDR = ("127.0.0.1", 0)


class _NoAccessLog:
    """gunicorn's logger without the access log."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def access(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _request_bytes(target: str) -> bytes:
    scheme, _host, _port, path, query, netloc = request_target(target)
    lines = [f"GET {path}{'?' + query if query else ''} HTTP/1.1", f"Host: {netloc}",
             "User-Agent: cowprof-warmup", "Connection: close"]
    if scheme == "https":  # gunicorn trusts this header from 127.0.0.1 (forwarded_allow_ips)
        lines.append("X-Forwarded-Proto: https")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status_of(response: bytes) -> int:
    first = response.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else 0


def _one_request(worker: Any, listener: Any, target: str) -> int:
    ours, theirs = socket.socketpair()
    chunks: list[bytes] = []

    def read_response() -> None:
        with ours:
            while True:
                data = ours.recv(65536)
                if not data:
                    break
                chunks.append(data)

    ours.sendall(_request_bytes(target))
    reader = threading.Thread(target=read_response, name="cowprof-warmup-reader", daemon=True)
    reader.start()
    try:
        worker.handle(listener, theirs, _CLIENT_ADDR)
    finally:
        reader.join(30)
        try:
            theirs.close()
        except OSError:
            pass
    return _status_of(b"".join(chunks))


@contextmanager
def worker_transport(server: Any) -> Iterator[Callable[[str], int] | None]:
    """A ``target -> status`` function sending warm-up requests through a worker object of
    ``server``'s (gunicorn's Arbiter) worker class, or None where that is not supported (see the
    module doc)."""
    if is_uvicorn_worker(getattr(server, "worker_class", None)):
        with uvicorn_transport(server) as transport:
            yield transport
        return
    worker = None
    try:
        from gunicorn.workers.sync import SyncWorker

        cls = server.worker_class
        listeners = list(getattr(server, "LISTENERS", ()) or ())
        if isinstance(cls, type) and issubclass(cls, SyncWorker) and listeners and not server.cfg.is_ssl:
            worker = cls(0, os.getpid(), listeners, server.app, server.timeout / 2.0, server.cfg,
                         _NoAccessLog(server.log))
            worker.wsgi = server.app.wsgi()
    except Exception as exc:  # noqa: BLE001 - fall back to calling the app directly
        server.log.info("cowprof: warm-up requests call the app directly (%s: %s)", type(exc).__name__, exc)
        worker = None
    if worker is None:
        yield None
        return
    listener = listeners[0]
    try:
        yield lambda target: _one_request(worker, listener, target)
    finally:
        try:
            worker.tmp.close()
        except Exception:  # noqa: BLE001
            pass
