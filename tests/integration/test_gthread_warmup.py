"""Warm-up through a gthread worker's own request code (cowprof.gunicorn_requests): each request
must run ThreadWorker.handle and gunicorn's HTTP code in the master, which an in-process call of
the WSGI app (the baseline, same requests) never runs; nothing may be left open after it."""
from __future__ import annotations

from pyrun import run_json

PROBE = """
import json, logging, socket, sys, types
from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker
from cowprof import hotcode
from cowprof.gunicorn_requests import worker_transport
from cowprof.warmup import WarmupOptions, warm_up_app

def app(environ, start_response):
    found = environ["PATH_INFO"] != "/missing"
    start_response("200 OK" if found else "404 Not Found", [("Content-Type", "text/plain")])
    return [b"hello " + environ["QUERY_STRING"].encode()]

cfg = Config()
cfg.set("worker_class", "gthread")
cfg.set("threads", 4)
listener = socket.create_server(("127.0.0.1", 0))
server = types.SimpleNamespace(worker_class=type("MyWorker", (ThreadWorker,), {}), cfg=cfg, LISTENERS=[listener],
                               app=types.SimpleNamespace(wsgi=lambda: app), timeout=30, log=logging.getLogger("probe"))
import gunicorn.workers.gthread, gunicorn.http.wsgi  # in the fingerprint
fingerprint = hotcode.Fingerprint()
opts = WarmupOptions(paths=("/", "/?a=1", "/missing"), framework=False, rounds=3, relocate_code=False)
if sys.argv[1] == "worker":
    with worker_transport(server) as transport:
        assert transport is not None
        result = warm_up_app(app, opts, transport=transport)
else:
    result = warm_up_app(app, opts)
written = {key[2] for key in fingerprint.written() if "/gunicorn/" in key[0]}
print(json.dumps({"requests": result.requests, "ok": result.ok, "failed": result.failed,
                  "gthread_handle": "ThreadWorker.handle" in written, "gunicorn_code": len(written),
                  "left_open": list(result.left_open)}))
"""


def test_warm_up_through_a_gthread_worker_runs_its_request_code_in_the_master():
    out = run_json(PROBE, "worker")
    assert (out["requests"], out["ok"], out["failed"]) == (9, 9, 0), out  # the 404 is an answer too
    assert out["gthread_handle"] and out["gunicorn_code"] >= 10, out
    assert out["left_open"] == [], out


def test_in_process_warm_up_never_runs_gunicorns_request_code():
    out = run_json(PROBE, "app")
    assert (out["requests"], out["failed"]) == (9, 0), out
    assert not out["gthread_handle"] and out["gunicorn_code"] == 0, out
