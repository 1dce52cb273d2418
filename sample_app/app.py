"""The sample app's WSGI entry point: ``gunicorn sample_app.app:app`` (plain WSGI, no framework).

Importing this module builds the preloaded heap (:mod:`sample_app.data`). Every endpoint reads that
heap the way a real server reads its caches, so each request writes reference counts of the objects
it touches; which pages of the master's heap a worker ends up copying is what cowprof measures.

Endpoints (all GET, JSON; ``seed`` makes the choice of records deterministic, so every demo mode
serves exactly the same work):

- ``/health`` — liveness, no heap access.
- ``/info`` — what the heap holds (:class:`sample_app.data.HeapInfo`) and the worker's PID.
- ``/records?seed=S&n=N`` — N random orders rendered to JSON with their customer and items.
- ``/search?q=WORD&seed=S&window=W`` — substring search of product titles in a window of W products,
  plus the inverted-index hit count for WORD.
- ``/aggregate?seed=S&window=W`` — revenue by category, status and channel over a window of W orders,
  and a numpy mean over a slice of the feature matrix.
- ``/events?seed=S&n=N`` — N consecutive events: calls their generated methods and generated metric
  functions on orders.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from sample_app import data

_JSON = "application/json"
_MAX_N = 500
_MAX_WINDOW = 20_000


class BadRequest(Exception):
    """A query parameter that cannot be used (answered with 400)."""


def _int_param(query: dict[str, list[str]], name: str, default: int, upper: int) -> int:
    raw = query.get(name, [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= upper:
        raise BadRequest(f"{name} must be between 0 and {upper}, got {value}")
    return value


def health(query: dict[str, list[str]]) -> dict:
    return {"ok": True}


def info(query: dict[str, list[str]]) -> dict:
    return {"pid": os.getpid(), **data.INFO.__dict__}


def records(query: dict[str, list[str]]) -> dict:
    rng = random.Random(_int_param(query, "seed", 0, 2**62))
    n = _int_param(query, "n", 20, _MAX_N)
    orders = data.ORDERS
    return {"orders": [orders[rng.randrange(len(orders))].to_json() for _ in range(n)]}


def search(query: dict[str, list[str]]) -> dict:
    rng = random.Random(_int_param(query, "seed", 0, 2**62))
    window = _int_param(query, "window", 2000, _MAX_WINDOW)
    needle = query.get("q", [""])[0].lower()
    if not needle:
        raise BadRequest("q (a word to search for) is required")
    products = data.PRODUCTS
    start = rng.randrange(max(1, len(products) - window))
    hits = [p for p in products[start:start + window] if needle in p.title]
    hits.sort(key=lambda p: (-p.rating(), p.price))
    return {"q": needle, "window_start": start, "matches": len(hits),
            "index_hits": len(data.TITLE_INDEX.get(needle, ())),
            "top": [p.to_json() for p in hits[:10]]}


def aggregate(query: dict[str, list[str]]) -> dict:
    rng = random.Random(_int_param(query, "seed", 0, 2**62))
    window = _int_param(query, "window", 1000, _MAX_WINDOW)
    orders = data.ORDERS
    start = rng.randrange(max(1, len(orders) - window))
    by_category: dict[str, float] = {}
    by_status: dict[str, int] = {}
    by_channel: dict[str, float] = {}
    cities: dict[str, int] = {}
    for order in orders[start:start + window]:
        by_status[order.status] = by_status.get(order.status, 0) + 1
        meta = order.meta
        net = order.total * (1.0 - meta["discount"])
        by_channel[meta["channel"]] = by_channel.get(meta["channel"], 0.0) + net
        city = order.customer.city
        cities[city] = cities.get(city, 0) + 1
        for product, qty, price in order.items:
            by_category[product.category] = by_category.get(product.category, 0.0) + qty * price
    rows = data.FEATURES
    row = rng.randrange(max(1, len(rows) - 256))
    means = rows[row:row + 256].mean(axis=0)
    return {"window_start": start, "orders": min(window, len(orders) - start),
            "revenue_by_category": {k: round(v, 2) for k, v in sorted(by_category.items())},
            "orders_by_status": by_status, "net_by_channel": {k: round(v, 2) for k, v in by_channel.items()},
            "top_cities": sorted(cities.items(), key=lambda kv: -kv[1])[:5],
            "feature_means": [round(float(x), 4) for x in means[:8]]}


def events(query: dict[str, list[str]]) -> dict:
    rng = random.Random(_int_param(query, "seed", 0, 2**62))
    n = _int_param(query, "n", 100, _MAX_N * 4)
    evs = data.EVENTS
    start = rng.randrange(max(1, len(evs) - n))
    scores = [ev.score() for ev in evs[start:start + n]]
    labels = [ev.describe() for ev in evs[start:start + n:10]]
    orders = data.ORDERS
    metrics = data.METRICS
    values = [metrics[rng.randrange(len(metrics))](orders[rng.randrange(len(orders))]) for _ in range(20)]
    return {"start": start, "count": len(scores), "score_sum": round(sum(scores), 4),
            "labels": labels, "metric_sum": round(sum(values), 4)}


ROUTES: dict[str, Callable[[dict[str, list[str]]], dict]] = {
    "/health": health, "/info": info, "/records": records, "/search": search,
    "/aggregate": aggregate, "/events": events,
}


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """The WSGI application."""
    handler = ROUTES.get(environ.get("PATH_INFO", "/"))
    if handler is None:
        status, body = "404 Not Found", {"error": "no such endpoint", "endpoints": sorted(ROUTES)}
    elif environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", {"error": "only GET"}
    else:
        try:
            status, body = "200 OK", handler(parse_qs(environ.get("QUERY_STRING", "")))
        except BadRequest as err:
            status, body = "400 Bad Request", {"error": str(err)}
    payload = json.dumps(body, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", _JSON), ("Content-Length", str(len(payload)))])
    return [payload]
