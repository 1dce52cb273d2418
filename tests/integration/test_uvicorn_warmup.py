"""Warm-up through uvicorn's own server code (cowprof.uvicorn_requests), for gunicorn's UvicornWorker:
the requests must run uvicorn's HTTP protocol code in the master, which an in-process call of the
ASGI app (the baseline, same requests) never runs; the server's thread and socket must be gone after."""
from __future__ import annotations

import pytest

from pyrun import run_json

pytest.importorskip("uvicorn_worker", reason="the uvicorn-worker package is not installed (test extra)")

PROBE = """
import json, logging, sys, threading, types
from uvicorn_worker import UvicornWorker
from cowprof import hotcode
from cowprof.uvicorn_requests import uvicorn_transport
from cowprof.warmup import WarmupOptions, warm_up_app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200 if scope["path"] == "/" else 404,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello " + scope["query_string"]})

server = types.SimpleNamespace(worker_class=type("MyWorker", (UvicornWorker,), {}),
                               cfg=types.SimpleNamespace(is_ssl=False),
                               app=types.SimpleNamespace(wsgi=lambda: app), log=logging.getLogger("probe"))
through_server = sys.argv[1] == "server"
import uvicorn.protocols.http.h11_impl  # what uvicorn imports lazily, so that the fingerprint holds it
try:
    import uvicorn.protocols.http.httptools_impl
except ImportError:  # no httptools: uvicorn serves with h11
    pass
fingerprint = hotcode.Fingerprint()
opts = WarmupOptions(paths=("/", "/?a=1", "/missing"), framework=False, rounds=3, relocate_code=False)
if through_server:
    with uvicorn_transport(server) as transport:
        assert transport is not None
        result = warm_up_app(app, opts, transport=transport)
else:
    result = warm_up_app(app, opts)
written = [key for key in fingerprint.written() if "/uvicorn/protocols/" in key[0]]
print(json.dumps({"requests": result.requests, "ok": result.ok, "failed": result.failed,
                  "uvicorn_protocol_code": len(written),
                  "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()]}))
"""


def test_warm_up_through_uvicorn_runs_its_protocol_code_in_the_master():
    out = run_json(PROBE, "server")
    assert (out["requests"], out["failed"]) == (9, 0)
    assert out["ok"] == 9  # every request answered (a 404 too: the warm-up counts answers)
    assert out["uvicorn_protocol_code"] >= 5, out
    assert out["threads"] == []  # the server's thread is joined before the warm-up returns


def test_in_process_warm_up_never_runs_uvicorns_protocol_code():
    out = run_json(PROBE, "app")
    assert (out["requests"], out["failed"]) == (9, 0)
    assert out["uvicorn_protocol_code"] == 0, out


def test_other_worker_classes_get_no_uvicorn_transport():
    out = run_json("""
        import json, types
        from gunicorn.workers.sync import SyncWorker
        from cowprof.uvicorn_requests import is_uvicorn_worker, uvicorn_transport
        server = types.SimpleNamespace(worker_class=SyncWorker, cfg=types.SimpleNamespace(is_ssl=False))
        with uvicorn_transport(server) as transport:
            print(json.dumps({"transport": transport is not None, "sync": is_uvicorn_worker(SyncWorker),
                              "not_a_class": is_uvicorn_worker("uvicorn_worker.UvicornWorker")}))
    """)
    assert out == {"transport": False, "sync": False, "not_a_class": False}
