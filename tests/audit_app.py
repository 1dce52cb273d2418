"""A WSGI app that opens an audit log at import and writes one line per request, never flushing:
what is on disk at the end is what the processes' exits wrote (tests/integration/test_exit_finalization.py).
The log is $AUDIT_LOG; /health answers without logging."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

AUDIT = open(os.environ["AUDIT_LOG"], "a")  # noqa: SIM115 - open for the life of the process
AUDIT.write(f"boot {os.getpid()}\n")


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    AUDIT.write(f"request {os.getpid()} {environ.get('PATH_INFO')}\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
