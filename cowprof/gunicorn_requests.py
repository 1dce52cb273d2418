"""Warm-up requests through gunicorn's own worker code, in the master.

An in-process call of the WSGI app warms the app, but not the server: gunicorn's HTTP parser, its
WSGI environ and response code and the stdlib code they use run for the first time in each worker,
which then specializes (writes) every one of those code objects (measured on a stock Django
project: ~90 gunicorn and ~100 stdlib code objects, ~150 pages, per worker). :func:`worker_transport`
makes each warm-up request go through a worker object of the configured class instead: a request
is written into one end of a socket pair and ``worker.handle(listener, client, addr)`` (what a sync
worker calls for each accepted connection) parses it, calls the app and writes the response, which
is read back from the other end.

For sync workers (``gunicorn.workers.sync.SyncWorker`` and subclasses) and gthread workers
(``ThreadWorker``: the request goes through its ``handle(conn)``, what a pool thread runs for an
accepted connection; not with HTTP/2 prior knowledge only), both without TLS, and for
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


def _exchange(target: str, serve: Callable[[socket.socket], object]) -> int:
    """Writes the request for ``target`` into one end of a socket pair, has ``serve`` answer it on
    the other end (and close that end), and returns the status it answered."""
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
        serve(theirs)
    finally:
        reader.join(30)
        try:
            theirs.close()
        except OSError:
            pass
    return _status_of(b"".join(chunks))


def _sync_request(worker: Any, listener: Any, target: str) -> int:
    return _exchange(target, lambda client: worker.handle(listener, client, _CLIENT_ADDR))  # closes the client


def _threaded_request(worker: Any, listener: Any, target: str) -> int:
    """What a gthread worker's pool thread does with an accepted connection (``handle``), then
    what its main loop does with the answer (``Connection: close``: the connection is closed)."""
    from gunicorn.workers.gthread import TConn

    def serve(client: socket.socket) -> None:
        conn = TConn(worker.cfg, client, _CLIENT_ADDR, listener.getsockname())
        try:
            worker.handle(conn)
        finally:
            conn.close()

    return _exchange(target, serve)


def _transport_worker(server: Any) -> tuple[Any, Callable[[Any, Any, str], int]] | None:
    """A worker object of ``server``'s class and its request function, or None where that class
    is not supported (see the module doc)."""
    from gunicorn.workers.sync import SyncWorker

    cls = server.worker_class
    listeners = list(getattr(server, "LISTENERS", ()) or ())
    if not isinstance(cls, type) or not listeners or server.cfg.is_ssl:
        return None
    if issubclass(cls, SyncWorker):
        request = _sync_request
    else:
        try:
            from gunicorn.workers.gthread import ThreadWorker
        except ImportError:
            return None
        # prior knowledge only: the worker expects an HTTP/2 preface, not the warm-up's HTTP/1.1
        if not issubclass(cls, ThreadWorker) or getattr(server.cfg, "http2_cleartext", None) == "prior-knowledge":
            return None
        request = _threaded_request
    worker = cls(0, os.getpid(), listeners, server.app, server.timeout / 2.0, server.cfg, _NoAccessLog(server.log))
    worker.wsgi = server.app.wsgi()
    return worker, request


@contextmanager
def worker_transport(server: Any) -> Iterator[Callable[[str], int] | None]:
    """A ``target -> status`` function sending warm-up requests through a worker object of
    ``server``'s (gunicorn's Arbiter) worker class, or None where that is not supported (see the
    module doc)."""
    if is_uvicorn_worker(getattr(server, "worker_class", None)):
        with uvicorn_transport(server) as transport:
            yield transport
        return
    try:
        found = _transport_worker(server)
    except Exception as exc:  # noqa: BLE001 - fall back to calling the app directly
        server.log.info("cowprof: warm-up requests call the app directly (%s: %s)", type(exc).__name__, exc)
        found = None
    if found is None:
        yield None
        return
    worker, request = found
    listener = worker.sockets[0]
    try:
        yield lambda target: request(worker, listener, target)
    finally:
        try:
            worker.tmp.close()
        except Exception:  # noqa: BLE001
            pass
