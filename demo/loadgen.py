"""A small HTTP load generator for loopback servers: a fixed list of requests, a time limit, N threads.

Why not ``wrk``: it is rarely installed, it runs for a duration rather than a request count, and the
demo needs the *same* requests in every mode. Python threads with :mod:`http.client` reach a few
thousand requests per second on loopback, which is enough to drive gunicorn's sync workers (they close
the connection after each response, so the client's cost per request is one connect, one send, one
read). Load is bounded twice: by the number of paths given and by ``deadline`` seconds; requests
still in flight at the deadline finish or time out after ``timeout`` seconds.

Only loopback addresses are accepted (``127.0.0.0/8``, ``::1``, ``localhost``): this is a test tool,
not a way to load someone else's server.
"""
from __future__ import annotations

import http.client
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cowprof.errors import BadInput

__all__ = ["LoadResult", "check_loopback", "merge_results", "run_load"]


@dataclass(frozen=True)
class LoadResult:
    """Outcome of one :func:`run_load`. ``rps`` counts completed responses (any status) per second."""

    requested: int  # paths given
    sent: int  # requests started before the deadline
    ok: int  # responses with a 2xx status
    errors: int  # connection errors and timeouts
    status: dict[int, int] = field(default_factory=dict)  # responses by status code
    seconds: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, max
    timed_out: bool = False  # the deadline stopped the load before every path was sent
    first_error: str | None = None
    latencies: np.ndarray | None = field(default=None, repr=False, compare=False)  # ms, for merging

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies")
        d["status"] = {str(k): v for k, v in self.status.items()}
        return d


def _summarize(lat_ms: np.ndarray) -> dict[str, float]:
    if not lat_ms.size:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    p50, p90, p99 = np.percentile(lat_ms, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(lat_ms.max()), 2)}


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """One result for several loads of the same server (e.g. interleaved batches): counts and
    seconds add up, ``rps`` is answered / total seconds, latency percentiles over all requests."""
    status: dict[int, int] = {}
    for r in results:
        for code, n in r.status.items():
            status[code] = status.get(code, 0) + n
    lat = np.concatenate([r.latencies for r in results if r.latencies is not None] or [np.zeros(0)])
    seconds = sum(r.seconds for r in results)
    answered = sum(status.values())
    return LoadResult(
        requested=sum(r.requested for r in results), sent=sum(r.sent for r in results),
        ok=sum(r.ok for r in results), errors=sum(r.errors for r in results), status=dict(sorted(status.items())),
        seconds=round(seconds, 3), rps=round(answered / seconds, 1) if seconds > 0 else 0.0,
        latency_ms=_summarize(lat), timed_out=any(r.timed_out for r in results),
        first_error=next((r.first_error for r in results if r.first_error), None), latencies=lat)


def check_loopback(host: str) -> None:
    """Raises :class:`BadInput` unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise BadInput(f"load is only sent to loopback addresses (127.0.0.1, ::1, localhost), not {host!r}")


class _Shared:
    """State shared by the client threads: the next path index, counters, the stop flag."""

    def __init__(self, paths: Sequence[str], stop_at: float) -> None:
        self.paths = paths
        self.stop_at = stop_at
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.timed_out = False
        self.first_error: str | None = None

    def take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.paths):
                return None
            if time.monotonic() >= self.stop_at:
                self.timed_out = True
                return None
            i = self.next
            self.next += 1
            return i


def _client(shared: _Shared, host: str, port: int, timeout: float,
            latencies: list[float], status: dict[int, int], errors: list[int]) -> None:
    conn: http.client.HTTPConnection | None = None
    while (i := shared.take()) is not None:
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.request("GET", shared.paths[i], headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            resp.read()
            status[resp.status] = status.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - started)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as err:
            errors[0] += 1
            if shared.first_error is None:
                shared.first_error = f"{shared.paths[i]}: {type(err).__name__}: {err}"
            if conn is not None:
                conn.close()
                conn = None
        with shared.lock:
            shared.done += 1
    if conn is not None:
        conn.close()


def run_load(host: str, port: int, paths: Sequence[str], *, concurrency: int = 8,
             deadline: float = 120.0, timeout: float = 10.0,
             on_progress: Callable[[int, int], None] | None = None) -> LoadResult:
    """Sends a GET for each of ``paths`` to ``host:port`` from ``concurrency`` threads.

    Stops sending at ``deadline`` seconds; each request may take ``timeout`` seconds at most.
    ``on_progress(done, total)`` is called from the calling thread about ten times a second.
    Errors (refused connections, timeouts, resets) are counted, never raised.
    """
    check_loopback(host)
    if concurrency < 1:
        raise BadInput(f"concurrency must be at least 1, got {concurrency}")
    if deadline <= 0 or timeout <= 0:
        raise BadInput("deadline and timeout must be positive")
    started = time.monotonic()
    shared = _Shared(paths, started + deadline)
    per_thread: list[tuple[list[float], dict[int, int], list[int]]] = [
        ([], {}, [0]) for _ in range(min(concurrency, max(1, len(paths))))]
    threads = [threading.Thread(target=_client, args=(shared, host, port, timeout, *state),
                                name=f"cowprof-load-{n}", daemon=True)
               for n, state in enumerate(per_thread)]
    for t in threads:
        t.start()
    hard_stop = started + deadline + timeout + 5.0
    for t in threads:
        while t.is_alive() and time.monotonic() < hard_stop:
            t.join(0.1)
            if on_progress is not None:
                on_progress(shared.done, len(paths))
    seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(shared.done, len(paths))

    lat = np.array([x for state in per_thread for x in state[0]], dtype=np.float64) * 1000.0
    status: dict[int, int] = {}
    for _, st, _ in per_thread:
        for code, n in st.items():
            status[code] = status.get(code, 0) + n
    errors = sum(state[2][0] for state in per_thread)
    answered = int(lat.size)
    return LoadResult(
        requested=len(paths), sent=shared.next,
        ok=sum(n for code, n in status.items() if 200 <= code < 300), errors=errors,
        status=dict(sorted(status.items())), seconds=round(seconds, 3),
        rps=round(answered / seconds, 1) if seconds > 0 else 0.0,
        latency_ms=_summarize(lat), timed_out=shared.timed_out, first_error=shared.first_error, latencies=lat)
