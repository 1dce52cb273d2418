"""demo.loadgen against small in-process HTTP servers on 127.0.0.1 (port 0)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cowprof.errors import BadInput
from demo.loadgen import check_loopback, merge_results, run_load


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised too
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.seen.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        code = 404 if self.path.startswith("/missing") else 200
        body = b"x" * 100
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sends_every_path_once_and_counts_statuses():
    paths = [f"/p{i}" for i in range(290)] + [f"/missing{i}" for i in range(10)]
    progress: list[tuple[int, int]] = []
    with http_server() as server:
        result = run_load("127.0.0.1", server.server_address[1], paths, concurrency=4,
                          deadline=30, on_progress=lambda d, t: progress.append((d, t)))
    assert sorted(server.seen) == sorted(paths)
    assert (result.requested, result.sent, result.ok, result.errors) == (300, 300, 290, 0)
    assert result.status == {200: 290, 404: 10}
    assert not result.timed_out and result.rps > 0
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert progress[-1] == (300, 300)
    assert result.to_dict()["status"] == {"200": 290, "404": 10}


def test_deadline_bounds_the_load():
    paths = ["/slow"] * 200  # 0.3 s each, 2 at a time: 30 s without the deadline
    with http_server() as server:
        started = time.monotonic()
        result = run_load("127.0.0.1", server.server_address[1], paths, concurrency=2, deadline=0.5)
        elapsed = time.monotonic() - started
    assert result.timed_out
    assert elapsed < 3.0
    assert result.sent < 20 and result.ok == result.sent


def test_refused_connections_are_counted_not_raised():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = run_load("127.0.0.1", port, ["/a"] * 5, concurrency=2, deadline=10, timeout=2)
    assert (result.sent, result.ok, result.errors) == (5, 0, 5)
    assert "ConnectionRefusedError" in result.first_error


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "0.0.0.0", "8.8.8.8"])
def test_only_loopback_is_accepted(host):
    with pytest.raises(BadInput, match="loopback"):
        run_load(host, 80, ["/"])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_addresses(host):
    check_loopback(host)


def test_bad_arguments():
    with pytest.raises(BadInput):
        run_load("127.0.0.1", 80, ["/"], concurrency=0)
    with pytest.raises(BadInput):
        run_load("127.0.0.1", 80, ["/"], deadline=0)


def test_empty_path_list():
    result = run_load("127.0.0.1", 9, [], deadline=1)
    assert (result.requested, result.sent, result.ok, result.rps) == (0, 0, 0, 0.0)


def test_merge_results_adds_counts_and_recomputes_rates():
    with http_server() as server:
        port = server.server_address[1]
        a = run_load("127.0.0.1", port, ["/x"] * 30 + ["/missing"] * 2, concurrency=2, deadline=30)
        b = run_load("127.0.0.1", port, ["/y"] * 40, concurrency=2, deadline=30)
    m = merge_results([a, b])
    assert (m.requested, m.sent, m.ok, m.errors) == (72, 72, 70, 0)
    assert m.status == {200: 70, 404: 2}
    assert m.seconds == pytest.approx(a.seconds + b.seconds, abs=0.002)
    assert m.rps == pytest.approx(72 / m.seconds, rel=0.01)
    assert m.latency_ms["max"] == max(a.latency_ms["max"], b.latency_ms["max"])
    assert "latencies" not in m.to_dict()
