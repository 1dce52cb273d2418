"""Celery fixture: tasks over the fixed catalog, held in memory by the worker's main process.

The broker and result backend are ``$CELERYSHOP_BROKER`` (a Redis URL). ``SERVERAPPS_MODE`` picks
the fork recipe: ``baseline`` none; ``gc-freeze`` the ``gc`` documentation's (``gc.disable()`` at
import, ``gc.freeze()`` in ``worker_init``, ``gc.enable()`` in ``worker_process_init``); ``cowprof``
docs/servers.md's Celery recipe (``cowprof.prepare_fork()`` in ``worker_init``: sent in the main process
after the app and its task modules are imported, before the prefork pool forks its children;
``cowprof.after_fork()`` in ``worker_process_init``, sent in each child).

    celery -A celeryshop worker --pool prefork --concurrency 2
"""
from __future__ import annotations

import gc
import logging
import os

MODE = os.environ.get("SERVERAPPS_MODE", "baseline")
if MODE == "gc-freeze":
    gc.disable()

from celery import Celery  # noqa: E402
from celery.signals import worker_init, worker_process_init  # noqa: E402

import catalog_data  # noqa: E402

log = logging.getLogger("celeryshop")
broker = os.environ.get("CELERYSHOP_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("celeryshop", broker=broker, backend=broker)
app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1, result_expires=600,
                task_serializer="json", result_serializer="json", accept_content=["json"])


class Item:
    """A product with its category and reviews attached (what a task reads)."""

    def __init__(self, product: catalog_data.Product, category: catalog_data.Category) -> None:
        self.id = product.id
        self.name = product.name
        self.words = frozenset(product.name.split() + product.description.split())
        self.price_cents = product.price_cents
        self.stock = product.stock
        self.category = category
        self.reviews: list[catalog_data.Review] = []


def _load() -> dict[int, Item]:
    cats, products, reviews = catalog_data.catalog()
    by_id = {c.id: c for c in cats}
    items = {p.id: Item(p, by_id[p.category_id]) for p in products}
    for r in reviews:
        items[r.product_id].reviews.append(r)
    return items


ITEMS = _load()


@app.task(name="celeryshop.quote")
def quote(product_ids: list[int]) -> int:
    return sum(ITEMS[i].price_cents for i in product_ids if ITEMS[i].stock)


@app.task(name="celeryshop.category_report")
def category_report(slug: str) -> dict[str, float]:
    chosen = [it for it in ITEMS.values() if it.category.slug == slug]
    stars = [r.stars for it in chosen for r in it.reviews]
    return {"products": len(chosen), "reviews": len(stars), "avg": sum(stars) / len(stars) if stars else 0.0}


@app.task(name="celeryshop.search")
def search(word: str) -> list[int]:
    return sorted(it.id for it in ITEMS.values() if word in it.words)


if MODE == "cowprof":
    import cowprof

    @worker_init.connect
    def _cowprof_prepare(**kwargs: object) -> None:
        log.warning("cowprof: %s", cowprof.prepare_fork().summary())

    @worker_process_init.connect
    def _cowprof_restore(**kwargs: object) -> None:
        cowprof.after_fork()

elif MODE == "gc-freeze":

    @worker_init.connect
    def _gc_freeze(**kwargs: object) -> None:
        gc.freeze()

    @worker_process_init.connect
    def _gc_enable(**kwargs: object) -> None:
        gc.enable()

elif MODE != "baseline":
    raise SystemExit(f"celeryshop: unknown SERVERAPPS_MODE {MODE!r}")
