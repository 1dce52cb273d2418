"""gunicorn dirty-arbiter fixture (gunicorn 25+): a WSGI app whose ``/dirty`` page hands work to a
dirty app, which reads records built in the master.

    gunicorn --preload --dirty-app dirtyshop:CatalogIndex --dirty-workers 1 dirtyshop:app

``DATA`` is built when the master preloads this module, so the HTTP workers, the dirty arbiter
(forked from the master) and the dirty workers (forked from the dirty arbiter) all inherit it.
``/dirty`` answers, as JSON, what the dirty worker read and whether its garbage collector is on;
``/gc`` the same for the HTTP worker; ``/health`` "ok".
"""
from __future__ import annotations

import gc
import json
import os

from gunicorn.dirty import DirtyApp, get_dirty_client

import catalog_data

DATA = catalog_data.records(int(os.environ.get("DIRTYSHOP_COPIES", "20")))
TARGET = f"{__name__}:CatalogIndex"


class CatalogIndex(DirtyApp):
    """The dirty app: its ``scan`` action reads all of ``DATA``."""

    def init(self) -> None:
        self.calls = 0

    def scan(self) -> dict[str, int | bool]:
        self.calls += 1
        return {"pid": os.getpid(), "checksum": catalog_data.read_records(DATA), "gc_enabled": gc.isenabled(),
                "calls": self.calls}


def _json(start_response, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/dirty":
        return _json(start_response, get_dirty_client().execute(TARGET, "scan"))
    if path == "/gc":
        return _json(start_response, {"pid": os.getpid(), "gc_enabled": gc.isenabled()})
    if path == "/health":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
