"""The fixed catalog every fixture app serves (seeded random, the same in every app and run).

12 categories, 300 products, 900 reviews as plain tuples; each framework fixture turns them into
its own models (Django and Flask through their seed commands into sqlite, FastAPI into pydantic
models in memory, the Celery and multiprocessing fixtures into Python objects in memory).
"""
from __future__ import annotations

import random
from typing import NamedTuple

WORDS = ("oak", "steel", "blue", "quiet", "rapid", "compact", "deluxe", "classic", "nordic", "solar",
         "linen", "ceramic", "walnut", "copper", "alpine", "urban")
N_CATEGORIES = 12
N_PRODUCTS = 300
N_REVIEWS = 900
SLUGS = tuple(f"{w}-goods" for w in WORDS[:N_CATEGORIES])


class Category(NamedTuple):
    id: int
    name: str
    slug: str


class Product(NamedTuple):
    id: int
    category_id: int
    name: str
    description: str
    price_cents: int
    stock: int


class Review(NamedTuple):
    id: int
    product_id: int
    author: str
    stars: int
    text: str


def catalog(seed: int = 7) -> tuple[list[Category], list[Product], list[Review]]:
    """Categories, products and reviews, ids from 1."""
    rng = random.Random(seed)
    cats = [Category(i + 1, f"{w.title()} goods", slug) for i, (w, slug) in enumerate(zip(WORDS, SLUGS))]
    products = [Product(i, rng.randrange(1, N_CATEGORIES + 1), " ".join(rng.sample(WORDS, 3)),
                        "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(3)),
                        rng.randrange(199, 99_999), rng.randrange(0, 50))
                for i in range(1, N_PRODUCTS + 1)]
    reviews = [Review(i, rng.randrange(1, N_PRODUCTS + 1), rng.choice(WORDS).title(), rng.randrange(1, 6),
                      " ".join(rng.choices(WORDS, k=30)))
               for i in range(1, N_REVIEWS + 1)]
    return cats, products, reviews


def request_paths(count: int, *, seed: int = 1, list_page: str = "/?page={}",
                  extra: tuple[str, ...] = ()) -> list[str]:
    """A fixed mix of read-only GETs the web fixtures all answer: product list pages
    (``list_page`` with the page number), product detail pages, category pages, the JSON API,
    ``/health``, and each of ``extra`` (e.g. Django's admin login page) now and then."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.25:
            out.append(list_page.format(rng.randrange(1, 16)))
        elif r < 0.55:
            out.append(f"/products/{rng.randrange(1, N_PRODUCTS + 1)}/")
        elif r < 0.70:
            out.append(f"/categories/{rng.choice(SLUGS)}/")
        elif r < 0.92:
            out.append(f"/api/products/{rng.randrange(1, N_PRODUCTS + 1)}")
        elif extra and r < 0.97:
            out.append(rng.choice(extra))
        else:
            out.append("/health")
    return out


def records(copies: int) -> list[dict]:
    """``copies`` catalogs (seeds 7, 8, ...) as one list of plain dicts, a product each with its
    category and reviews: a few MB of GC-tracked containers per 10 copies, read whole by
    :func:`read_records` (the way a model's predict reads its weights)."""
    out = []
    for k in range(copies):
        cats, products, reviews = catalog(seed=7 + k)
        by_product: dict[int, list[dict]] = {}
        for r in reviews:
            by_product.setdefault(r.product_id, []).append(r._asdict())
        out.extend({"product": p._asdict(), "category": cats[p.category_id - 1]._asdict(),
                    "reviews": by_product.get(p.id, [])} for p in products)
    return out


def read_records(data: list[dict]) -> int:
    """Reads every product and review of ``data``; returns a checksum."""
    stars = sum(r["stars"] for item in data for r in item["reviews"])
    value = sum(item["product"]["price_cents"] * item["product"]["stock"] for item in data)
    return (stars + value) % 1_000_003
