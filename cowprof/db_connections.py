"""Database connections the warm-up opened, closed again before the fork.

A warm-up request that queries a database opens a connection in the master, and the engine's pool
keeps it: every worker forked next inherits that socket (or SQLite handle), and two processes using
one connection corrupt its protocol (SQLAlchemy's own advice: no pooled connection may cross a
fork). Django's plan closes its connections itself (:mod:`cowprof.frameworks`); this module covers
SQLAlchemy engines, sync and async. :func:`watch` records each engine connected while it is active;
:meth:`Opened.close` then disposes the pools of the sync ones and :meth:`Opened.aclose` those of
the async ones, in the event loop that opened their connections: the idle connections are closed
and an empty pool takes their place, which each worker fills with its own. Two kinds of pool are
left alone: ``StaticPool`` and ``SingletonThreadPool`` (SQLite ``:memory:``) hold the database in
the connection itself, so closing it would drop the data. A connection still checked out is the
app's own (a leaked session) and is left too. Engines only a module imported during the warm-up
knows are not seen (SQLAlchemy must be imported before).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Opened", "watch"]

#: pools whose connection is the database (SQLite :memory:): never closed
_DATABASE_IN_CONNECTION = ("StaticPool", "SingletonThreadPool")


class Opened:
    """The SQLAlchemy engines connected while :func:`watch` was active."""

    def __init__(self) -> None:
        self._engines: dict[int, Any] = {}
        self._closed = 0
        self._kept: list[str] = []

    def on_connect(self, connection: Any, *args: Any) -> None:
        """SQLAlchemy's ``engine_connect`` event."""
        engine = connection.engine
        self._engines.setdefault(id(engine), engine)

    def _pending(self, is_async: bool) -> list[Any]:
        out = []
        for key, engine in list(self._engines.items()):
            if bool(engine.dialect.is_async) != is_async:
                continue
            del self._engines[key]
            pool_kind = type(engine.pool).__name__
            if pool_kind in _DATABASE_IN_CONNECTION:
                self._kept.append(f"{engine.url.render_as_string(hide_password=True)} ({pool_kind})")
                continue
            out.append(engine)
        return out

    def _count_idle(self, engine: Any) -> None:
        checkedin = getattr(engine.pool, "checkedin", None)  # QueuePool and its async twin
        self._closed += checkedin() if checkedin is not None else 0

    def close(self) -> str:
        """Disposes the pools of the sync engines (see the module doc); returns a one-line detail
        of everything done, async engines included."""
        for engine in self._pending(is_async=False):
            self._count_idle(engine)
            engine.dispose()
        left = self._pending(is_async=True)  # no event loop of theirs is running any more
        for engine in left:
            engine.dispose(close=False)  # the pool is dropped: no worker can check those out
        detail = f"{self._closed} pooled connections closed"
        if left:
            detail += f", the pools of {len(left)} async engines dropped without a loop to close them in"
        if self._kept:
            detail += f"; kept: {', '.join(self._kept)}"
        return detail

    async def aclose(self) -> None:
        """Disposes the pools of the async engines, in the running loop (the one that opened
        their connections)."""
        from sqlalchemy.ext.asyncio import AsyncEngine

        for engine in self._pending(is_async=True):
            self._count_idle(engine)
            await AsyncEngine(engine).dispose()

    def has_async(self) -> bool:
        """Whether an async engine is waiting for :meth:`aclose`."""
        return any(engine.dialect.is_async for engine in self._engines.values())


@contextmanager
def watch() -> Iterator[Opened | None]:
    """Records the SQLAlchemy engines connected inside the block; None where SQLAlchemy is not
    imported."""
    if "sqlalchemy" not in sys.modules:
        yield None
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    opened = Opened()
    event.listen(Engine, "engine_connect", opened.on_connect)
    try:
        yield opened
    finally:
        event.remove(Engine, "engine_connect", opened.on_connect)
