"""cowprof.db_connections in this process: what is closed, dropped or kept (the fork itself:
tests/integration/test_warmup_db.py)."""
from __future__ import annotations

import asyncio

import pytest

from cowprof import db_connections

sa = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed (test extra)")
pytest.importorskip("aiosqlite", reason="aiosqlite is not installed (test extra)")


def test_an_async_pool_with_no_loop_left_is_dropped_not_reused(tmp_path):
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")

    async def query() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text("select 1"))

    with db_connections.watch() as opened:
        assert opened is not None
        asyncio.run(query())  # its loop is closed when close() runs
    old_pool = engine.sync_engine.pool
    assert old_pool.checkedin() == 1
    detail = opened.close()
    assert engine.sync_engine.pool is not old_pool and engine.sync_engine.pool.checkedin() == 0
    assert detail == "0 pooled connections closed, the pools of 1 async engines dropped without a loop to close them in"


def test_engines_connected_outside_the_block_are_not_touched(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    with engine.connect():
        pass
    with db_connections.watch() as opened:
        assert opened is not None
    assert opened.close() == "0 pooled connections closed"
    assert engine.pool.checkedin() == 1  # the app's own, opened before the warm-up
