"""What the warm-up leaves open is reported (cowprof.left_open): a connection the app keeps from
a warm-up request (every worker would inherit it) and a thread it started (no worker has it).
The same requests closing what they open report nothing."""
from __future__ import annotations

from pyrun import run_json

PROBE = """
import json, socket, sys, threading
from cowprof import warmup

server = socket.create_server(("127.0.0.1", 0))
kept, stop = [], threading.Event()

def app(environ, start_response):
    if environ["PATH_INFO"] == "/keep" and not kept:
        kept.append(socket.create_connection(server.getsockname()))  # a client's pooled connection
        threading.Thread(target=stop.wait, name="background-sender", daemon=True).start()
    elif environ["PATH_INFO"] == "/tidy":
        with socket.create_connection(server.getsockname()):
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

result = warmup.warm_up_app(app, warmup.WarmupOptions(paths=(sys.argv[1],), framework=False, relocate_code=False))
stop.set()
print(json.dumps({"left_open": list(result.left_open), "summary": result.summary(),
                  "port": server.getsockname()[1], "failed": result.failed}))
"""


def test_a_kept_connection_and_a_running_thread_are_reported():
    out = run_json(PROBE, "/keep")
    assert out["failed"] == 0
    sockets = [line for line in out["left_open"] if line.startswith("socket")]
    threads = [line for line in out["left_open"] if line.startswith("thread")]
    assert len(sockets) == 1 and f"-> 127.0.0.1:{out['port']}" in sockets[0] and "every worker inherits" in sockets[0]
    assert threads == ["thread 'background-sender' running: no worker has it (threads are not forked)"]
    assert "2 sockets or threads left open" in out["summary"]


def test_requests_that_close_what_they_open_report_nothing():
    out = run_json(PROBE, "/tidy")
    assert out["failed"] == 0 and out["left_open"] == [], out
    assert "left open" not in out["summary"]
