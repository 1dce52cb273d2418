"""The sample app's preloaded data: a deterministic in-memory shop built at import time.

Why it exists: copy-on-write behaviour depends on what a real heap looks like, so this module builds
the kinds of objects a long-lived web app keeps around after ``preload_app`` — class instances with a
``__dict__`` and with ``__slots__``, dicts holding atomic values, lists, unique and shared ``str``,
``float``, tuples, classes and functions generated at run time (like ORMs and serializers make), lookup
indexes, and one numpy array. Request handlers in :mod:`sample_app.app` read it the way a server
does: iterating records, rendering JSON, searching strings and aggregating floats, which writes
reference counts (and, without care, copies the pages) of everything they touch.

Size: ``SAMPLE_APP_MB`` (environment, default 190) is the approximate resident size in MB that
building the heap adds to the process (Python objects plus the numpy array, which takes about 7% of
it). The content is a pure function of the size and :data:`SEED`, so every run and every mode of the
demo sees the same heap.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import numpy as np

SEED = 20261122
DEFAULT_MB = 190.0
# Measured bytes of heap per unit below (CPython 3.12, x86-64); used only to size the build.
_UNIT_BYTES = 73 * 1024
_ORDERS_PER_UNIT = 46
_CUSTOMERS_PER_UNIT = 9
_PRODUCTS_PER_UNIT = 6
_EVENTS_PER_UNIT = 32
_FEATURE_SHARE = 0.07

CATEGORIES = ("books", "garden", "kitchen", "toys", "music", "outdoor", "office", "pets",
              "health", "beauty", "tools", "games", "sports", "baby", "auto", "grocery")
CITIES = ("Lisbon", "Porto", "Lyon", "Leeds", "Graz", "Turin", "Ghent", "Malmo", "Poznan", "Brno",
          "Bergen", "Cork", "Seville", "Bremen", "Utrecht", "Tartu", "Split", "Kosice", "Aarhus", "Basel")
STATUSES = ("new", "paid", "packed", "shipped", "delivered", "returned", "cancelled")
CHANNELS = ("web", "ios", "android", "phone", "partner")
_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vu", "so", "pel", "dar", "ni", "qua", "bre", "zo",
              "fi", "gan", "tu", "mor", "sel", "ix", "be", "con", "ya", "rul", "we")


def heap_mb() -> float:
    """The configured heap size in MB (env ``SAMPLE_APP_MB``); raises ValueError when not positive."""
    raw = os.environ.get("SAMPLE_APP_MB", "")
    value = float(raw) if raw.strip() else DEFAULT_MB
    if not value > 0:
        raise ValueError(f"SAMPLE_APP_MB must be a positive number of MB, got {raw!r}")
    return value


class Customer:
    """A customer with an ordinary instance ``__dict__`` (a split-keys dict on CPython)."""

    def __init__(self, cid: int, name: str, email: str, city: str, score: float,
                 tags: tuple[str, ...], joined: str) -> None:
        self.id = cid
        self.name = name
        self.email = email
        self.city = city
        self.score = score
        self.tags = tags
        self.joined = joined

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "email": self.email, "city": self.city,
                "score": self.score, "tags": list(self.tags), "joined": self.joined}


class Product:
    """A product with ``__slots__`` (no instance dict), a list of floats and a dict of atomic values."""

    __slots__ = ("sku", "title", "category", "price", "stock", "ratings", "attrs")

    def __init__(self, sku: str, title: str, category: str, price: float, stock: int,
                 ratings: list[float], attrs: dict) -> None:
        self.sku = sku
        self.title = title
        self.category = category
        self.price = price
        self.stock = stock
        self.ratings = ratings
        self.attrs = attrs

    def rating(self) -> float:
        return sum(self.ratings) / len(self.ratings) if self.ratings else 0.0

    def to_json(self) -> dict:
        return {"sku": self.sku, "title": self.title, "category": self.category, "price": self.price,
                "stock": self.stock, "rating": round(self.rating(), 3), "attrs": self.attrs}


class Order:
    """An order: a reference to its customer, a list of (product, qty, unit price) tuples and meta."""

    def __init__(self, oid: int, customer: Customer, items: list[tuple[Product, int, float]],
                 created: str, status: str, meta: dict) -> None:
        self.id = oid
        self.customer = customer
        self.items = items
        self.total = sum(qty * price for _, qty, price in items)
        self.created = created
        self.status = status
        self.meta = meta

    def to_json(self) -> dict:
        return {"id": self.id, "customer": self.customer.to_json(), "created": self.created,
                "status": self.status, "total": round(self.total, 2), "meta": self.meta,
                "items": [{"sku": p.sku, "title": p.title, "qty": q, "price": pr}
                          for p, q, pr in self.items]}


class EventBase:
    """Base of the generated event classes; subclasses get ``kind``, ``weight`` and two methods."""

    __slots__ = ("ts", "user", "payload", "tag")
    kind = "base"
    weight = 1.0

    def __init__(self, ts: float, user: int, payload: tuple[float, ...], tag: str) -> None:
        self.ts = ts
        self.user = user
        self.payload = payload
        self.tag = tag

    def score(self) -> float:  # replaced in generated classes
        return 0.0

    def describe(self) -> str:  # replaced in generated classes
        return self.kind


@dataclass(frozen=True)
class HeapInfo:
    """What was built and how long it took (shown by the app's ``/info`` endpoint)."""

    target_mb: float
    orders: int
    customers: int
    products: int
    events: int
    event_classes: int
    metric_functions: int
    feature_bytes: int
    build_seconds: float


def _words(rng: random.Random, count: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(seen)


def _metric_functions(rng: random.Random, count: int) -> list:
    """Generated functions (own code objects), as serializers and ORMs create at import time."""
    namespace: dict = {}
    source = []
    for i in range(count):
        a, b, c = rng.uniform(0.5, 2.0), rng.uniform(0, 3), rng.randint(0, 50)
        source.append(
            f"def metric_{i}(order):\n"
            f"    total = order.total * {a:.4f}\n"
            f"    n = len(order.items)\n"
            f"    if n > {i % 5 + 1}:\n"
            f"        total += n * {b:.4f}\n"
            f"    return total - {c}\n"
        )
    exec(compile("".join(source), "<sample_app.metrics>", "exec"), namespace)  # noqa: S102
    return [namespace[f"metric_{i}"] for i in range(count)]


def _event_classes(rng: random.Random, count: int, words: list[str]) -> list[type]:
    """Generated subclasses of :class:`EventBase`, each with its own closures as methods."""
    classes = []
    for i in range(count):
        weight = round(rng.uniform(0.1, 5.0), 3)
        kind = f"{rng.choice(words)}_{i}"
        offset = rng.randint(0, 7)

        def score(self, _w=weight, _o=offset):
            p = self.payload
            return _w * p[_o % len(p)] + sum(p) / len(p)

        def describe(self, _k=kind):
            return f"{_k}:{self.user}:{self.tag}"

        classes.append(type(f"Event{i}", (EventBase,), {
            "__slots__": (), "kind": kind, "weight": weight, "score": score, "describe": describe}))
    return classes


def build(target_mb: float, seed: int = SEED):
    """Builds every structure for a heap of about ``target_mb`` MB; returns them in a namespace dict."""
    started = time.perf_counter()
    rng = random.Random(seed)
    units = max(1, int(target_mb * 1024 * 1024 / _UNIT_BYTES))
    words = _words(rng, 4096)
    first_names = [w.capitalize() for w in words[:600]]
    last_names = [w.capitalize() + rng.choice(("son", "ez", "ini", "ova", "er", "")) for w in words[600:1800]]

    customers: list[Customer] = []
    for cid in range(units * _CUSTOMERS_PER_UNIT):
        first, last = rng.choice(first_names), rng.choice(last_names)
        customers.append(Customer(
            cid, f"{first} {last}", f"{first.lower()}.{last.lower()}{cid}@example.com",
            rng.choice(CITIES), rng.random() * 100.0,
            tuple(rng.sample(words[:256], rng.randint(1, 4))),
            f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"))

    products: list[Product] = []
    for pid in range(units * _PRODUCTS_PER_UNIT):
        title = " ".join(rng.choice(words) for _ in range(rng.randint(3, 6)))
        attrs = {"color": rng.choice(words[:64]), "weight_kg": round(rng.uniform(0.05, 30.0), 3),
                 "fragile": rng.random() < 0.2, "size": rng.choice("SMLX")}
        products.append(Product(
            f"SKU-{pid:07d}", title, rng.choice(CATEGORIES), round(rng.uniform(1.0, 500.0), 2),
            rng.randint(0, 1000), [round(rng.uniform(1.0, 5.0), 2) for _ in range(rng.randint(3, 9))],
            attrs))

    orders: list[Order] = []
    for oid in range(units * _ORDERS_PER_UNIT):
        items = []
        for _ in range(rng.randint(1, 5)):
            product = rng.choice(products)
            items.append((product, rng.randint(1, 4), round(product.price * rng.uniform(0.7, 1.0), 2)))
        meta = {"channel": rng.choice(CHANNELS), "discount": round(rng.random() * 0.3, 3),
                "gift": rng.random() < 0.1, "note": f"order {oid} via {rng.choice(words)}"}
        orders.append(Order(
            oid, rng.choice(customers), items,
            f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            rng.choice(STATUSES), meta))

    event_classes = _event_classes(rng, max(16, min(1024, units // 4)), words)
    events = []
    for _ in range(units * _EVENTS_PER_UNIT):
        cls = rng.choice(event_classes)
        events.append(cls(1.76e9 + rng.random() * 1e7, rng.randrange(len(customers)),
                          tuple(rng.random() for _ in range(rng.randint(2, 6))), rng.choice(words)))

    metrics = _metric_functions(rng, max(16, min(2048, units // 2)))
    title_index: dict[str, list[int]] = {}
    for i, product in enumerate(products):
        for word in set(product.title.split()):
            title_index.setdefault(word, []).append(i)
    by_sku = {p.sku: p for p in products}
    by_email = {c.email: c for c in customers}

    feature_rows = max(64, int(target_mb * _FEATURE_SHARE * 1024 * 1024 / (32 * 8)))
    features = np.random.default_rng(seed).standard_normal((feature_rows, 32))

    info = HeapInfo(target_mb, len(orders), len(customers), len(products), len(events),
                    len(event_classes), len(metrics), int(features.nbytes),
                    round(time.perf_counter() - started, 3))
    return {"words": words, "customers": customers, "products": products, "orders": orders,
            "events": events, "event_classes": event_classes, "metrics": metrics,
            "title_index": title_index, "by_sku": by_sku, "by_email": by_email,
            "features": features, "info": info}


_heap = build(heap_mb())
WORDS: list[str] = _heap["words"]
CUSTOMERS: list[Customer] = _heap["customers"]
PRODUCTS: list[Product] = _heap["products"]
ORDERS: list[Order] = _heap["orders"]
EVENTS: list[EventBase] = _heap["events"]
EVENT_CLASSES: list[type] = _heap["event_classes"]
METRICS: list = _heap["metrics"]
TITLE_INDEX: dict[str, list[int]] = _heap["title_index"]
BY_SKU: dict[str, Product] = _heap["by_sku"]
BY_EMAIL: dict[str, Customer] = _heap["by_email"]
FEATURES: np.ndarray = _heap["features"]
INFO: HeapInfo = _heap["info"]
del _heap
