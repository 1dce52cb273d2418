"""Database connections opened by warm-up requests must not cross the fork (cowprof.db_connections).

Each probe makes warm-up requests that query a SQLite file through SQLAlchemy in this process (the
master), forks a child (a worker) and has it query again: the connection the worker uses must be
one it opened itself. The baselines make the same requests without warm_up_app's cleanup: their
worker then gets the master's pooled connection, which is the bug (with aiosqlite the worker's
query hangs on it; with a server database two processes would share one socket).
"""
from __future__ import annotations

import pytest

from pyrun import run_json

pytest.importorskip("aiosqlite", reason="aiosqlite is not installed (test extra)")

PROBE = """
import asyncio, json, logging, os, sys, threading, types
import sqlalchemy as sa
from sqlalchemy import event
from forkjson import in_child
from cowprof import warmup

mode, db = sys.argv[1], sys.argv[2]
use_async = mode.startswith(("async", "uvicorn"))

def mark_creator(engine):
    @event.listens_for(engine, "connect")
    def connect(dbapi_connection, record):
        record.info["pid"] = os.getpid()

if use_async:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    mark_creator(engine.sync_engine)
    pool = engine.sync_engine.pool
    app = FastAPI()

    @app.get("/q")
    async def q():
        async with engine.connect() as conn:
            await conn.execute(sa.text("select 1"))
            raw = await conn.get_raw_connection()
            return {"own": raw.info["pid"] == os.getpid()}

    def worker_request():
        async def one():
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                return raw.info["pid"] == os.getpid()
        # on the master's aiosqlite connection the query never ends (its thread was not forked)
        box = []
        thread = threading.Thread(target=lambda: box.append(asyncio.run(one())), daemon=True)
        thread.start()
        thread.join(5)
        return box[0] if box else "hung"
else:
    from flask import Flask

    engine = sa.create_engine(f"sqlite:///{db}")
    mark_creator(engine)
    pool = engine.pool
    app = Flask(__name__)

    @app.get("/q")
    def q():
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
            return {"own": conn.info["pid"] == os.getpid()}

    def worker_request():
        with engine.connect() as conn:
            return conn.info["pid"] == os.getpid()

opts = warmup.WarmupOptions(paths=("/q",), framework=False, rounds=2, relocate_code=False)
steps = []
if mode in ("sync", "async"):
    result = warmup.warm_up_app(app, opts)
    steps = [s.detail for s in result.steps]
    assert result.failed == 0, result.failures
elif mode == "uvicorn":
    from uvicorn_worker import UvicornWorker
    from cowprof.uvicorn_requests import uvicorn_transport

    server = types.SimpleNamespace(worker_class=UvicornWorker, cfg=types.SimpleNamespace(is_ssl=False),
                                   app=types.SimpleNamespace(wsgi=lambda: app), log=logging.getLogger("probe"))
    with uvicorn_transport(server) as transport:
        assert transport is not None
        result = warmup.warm_up_app(app, opts, transport=transport)
    steps = [s.detail for s in result.steps]
    assert result.failed == 0, result.failures
elif mode == "sync-baseline":
    warmup.warm_up(app, ["/q"], rounds=2)
else:  # async-baseline: the same requests, each round in an event loop of its own
    for _ in range(2):
        asyncio.run(warmup._call_asgi(app, "/q"))
idle_in_master = pool.checkedin()
print(json.dumps({"steps": steps, "idle_in_master": idle_in_master, "worker_own": in_child(worker_request)}))
"""


def _probe(tmp_path, mode: str) -> dict:
    return run_json(PROBE, mode, str(tmp_path / "app.db"))


@pytest.mark.parametrize("mode", ["sync", "async", "uvicorn"])
def test_a_worker_never_uses_a_connection_the_warm_up_opened(tmp_path, mode):
    if mode == "uvicorn":
        pytest.importorskip("uvicorn_worker", reason="the uvicorn-worker package is not installed (test extra)")
    out = _probe(tmp_path, mode)
    assert out["idle_in_master"] == 0, out
    assert out["worker_own"] is True, out
    assert "1 pooled connections closed" in out["steps"], out


@pytest.mark.parametrize("mode", ["sync-baseline", "async-baseline"])
def test_baseline_the_same_requests_leave_the_worker_the_masters_connection(tmp_path, mode):
    out = _probe(tmp_path, mode)
    assert out["idle_in_master"] == 1, out
    assert out["worker_own"] == (False if mode == "sync-baseline" else "hung"), out


def test_an_in_memory_database_is_kept():
    out = run_json("""
        import json
        import sqlalchemy as sa
        from sqlalchemy.pool import StaticPool
        from flask import Flask
        from cowprof import warmup

        engine = sa.create_engine("sqlite://", poolclass=StaticPool)
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (7)"))
        app = Flask(__name__)

        @app.get("/q")
        def q():
            with engine.connect() as conn:
                return {"x": conn.execute(sa.text("select x from t")).scalar()}

        result = warmup.warm_up_app(app, warmup.WarmupOptions(paths=("/q",), framework=False, relocate_code=False))
        with engine.connect() as conn:
            x = conn.execute(sa.text("select x from t")).scalar()
        print(json.dumps({"x": x, "failed": result.failed, "steps": [s.detail for s in result.steps]}))
    """)
    assert out["x"] == 7 and out["failed"] == 0, out
    assert any("kept: sqlite://" in s and "StaticPool" in s for s in out["steps"]), out
