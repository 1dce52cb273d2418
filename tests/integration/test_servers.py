"""Real servers and frameworks: per-worker copied memory with and without cowprof, under load.

Each cell (server x fixture app, see tests/prefork_servers.py and tests/serverapps/) runs in two
modes side by side: ``baseline`` (the app preloaded in the master, nothing else) and ``cowprof``
(docs/servers.md's recipe for that server, default settings: gunicorn's ``-c python:cowprof.gunicorn``,
the uWSGI, Celery and multiprocessing recipes). Both get the same small bounded load (2 workers,
a few hundred requests or tasks); then cowprof's own page scan classifies every worker's pages
with the workers still running. The bar, per app: the worst worker copies at most ``BAR_PCT`` % of
the master's RSS. cowprof must pass it and the baseline must fail it, in the same run.

The bars are set between what the two modes copy today (2026-12-01, CPython 3.12-3.15) with
margin on both sides; the issue's targets (1% of the master's RSS, a fifth of the baseline) are
benchmark targets, measured by scripts/bench_servers.py (BENCHMARKS.md), not asserted here.
"""
from __future__ import annotations

import json
import os
import textwrap
import urllib.request

import pytest
from prefork_servers import SERVERAPPS, Cell, ModeRun, make_databases, redis_server_binary, run_cell

from cowprof.pages import scan
from cowprof.prepare import immortalize_unavailable
from cowprof.tree import Tree, find_tree

NO_IMMORTAL = immortalize_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.needs_immortal,
              pytest.mark.skipif(NO_IMMORTAL is not None, reason=f"{NO_IMMORTAL}")]

#: per app: the worst worker's copied bytes, in % of the master's RSS after the load
BAR_PCT = {"django": 24.0, "flask": 22.0, "fastapi": 16.5, "celery": 25.0}
REQUESTS = {"celery": 200}  # tasks; the web cells get 400 requests

CELLS = [Cell("gunicorn-sync", "django"), Cell("gunicorn-sync", "flask"),
         Cell("gunicorn-gthread", "django"), Cell("gunicorn-gthread", "flask"),
         Cell("gunicorn-uvicorn", "fastapi"), Cell("gunicorn-asgi", "fastapi"),
         Cell("uwsgi", "django"), Cell("uwsgi", "flask"),
         Cell("celery", "celery")]
# the multiprocessing fork Pool (and forkserver) recipes have their own tests: test_multiprocessing.py


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, str]:
    return make_databases(tmp_path_factory.mktemp("serverapps-db"))


def _need_redis() -> None:
    if redis_server_binary() is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server; scripts/test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _recipe_ran(run: ModeRun) -> bool:
    return "cowprof: prepared" in run.server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_cowprof_passes_the_bar_the_baseline_fails(cell: Cell, databases, tmp_path):
    if cell.server == "celery":
        _need_redis()
    bar = BAR_PCT[cell.app]
    base, cow = run_cell(cell, ("baseline", "cowprof"), tmp_path, requests=REQUESTS.get(cell.app, 400),
                         env=databases)
    for run in (base, cow):
        assert run.ok == run.requested, run.first_error
        assert len(run.copied) == 2, run.describe()
    assert _recipe_ran(cow), f"the cowprof recipe did not prepare: {cow.describe()}"
    assert not _recipe_ran(base)
    assert "the warm-up left" not in cow.server.log_path.read_text(errors="replace")  # cowprof.left_open
    assert base.copied_max_pct > bar, f"the baseline passes the bar, which then proves nothing: {base.describe()}"
    assert cow.copied_max_pct <= bar, cow.describe()


# ---------------------------------------------------------------------- gunicorn's dirty arbiter

_GC_CONF = """
import runpy
globals().update({{k: v for k, v in runpy.run_path({conf!r}).items() if not k.startswith("__")}})
import cowprof
cowprof.disable_gc_until_fork()  # the gc recipe's first step: after_fork must undo it in every child
"""

#: the dirty arbiter and its dirty worker: copied bytes, in % of the dirty arbiter's RSS
DIRTY_BAR_PCT = 12.0


def _dirty_tree(master: Tree) -> Tree:
    """The dirty arbiter (the master's child that forked children of its own) and its workers."""
    for pid in master.workers:
        tree = find_tree(pid)
        if tree.master == pid:
            return tree
    raise AssertionError(f"no dirty arbiter with a dirty worker among {master.workers}")


def _scan_dirty(run: ModeRun, tree: Tree) -> None:
    dirty = _dirty_tree(tree)
    pages = scan(dirty)
    rss = pages.master.rss_bytes
    run.extras["arbiter_copied_pct"] = 100.0 * next(w.copied_bytes for w in run.pages.workers
                                                    if w.pid == dirty.master) / rss
    run.extras["dirty_worker_copied_pct"] = 100.0 * max(w.copied_bytes for w in pages.workers) / rss
    port = run.server.port
    for path, key in (("/gc", "http_worker_gc"), ("/dirty", "dirty_worker_gc")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310
            run.extras[key] = json.loads(resp.read())["gc_enabled"]


def test_gunicorn_dirty_arbiter_forks_from_the_prepared_heap(tmp_path):
    """gunicorn 25+ forks its dirty arbiter before ``when_ready``: cowprof prepares in ``on_starting``
    then, so the dirty arbiter and its dirty worker (whose requests read data the master loaded)
    share the prepared heap; ``on_dirty_starting``/``dirty_worker_init`` run ``after_fork`` there."""
    pytest.importorskip("gunicorn.dirty", reason="gunicorn < 25 has no dirty arbiter")
    conf = tmp_path / "gc_conf.py"
    conf.write_text(textwrap.dedent(_GC_CONF.format(conf=str(SERVERAPPS / "gunicorn_conf.py"))))
    base, cow = run_cell(Cell("gunicorn-dirty", "dirty"), ("baseline", "cowprof"), tmp_path, requests=40,
                         batch=20, mode_env={"cowprof": {"COWPROF_GUNICORN_CONFIG": str(conf)}}, collect=_scan_dirty)
    for run in (base, cow):
        assert run.ok == run.requested, run.first_error
    assert _recipe_ran(cow) and not _recipe_ran(base)
    log = cow.server.log_path.read_text()
    assert log.index("cowprof: prepared") < log.index("Spawned dirty arbiter"), "prepared after the dirty fork"
    # the baseline's dirty worker copies what it reads (the bar means something); with cowprof
    # neither it nor the dirty arbiter does (preparing after the dirty fork fails both: the master
    # rewrites every object under the dirty arbiter, which keeps the unprepared heap)
    assert base.extras["dirty_worker_copied_pct"] > DIRTY_BAR_PCT, base.extras
    assert cow.extras["dirty_worker_copied_pct"] <= DIRTY_BAR_PCT, cow.extras
    assert cow.extras["arbiter_copied_pct"] <= DIRTY_BAR_PCT, cow.extras
    assert cow.extras["http_worker_gc"] and cow.extras["dirty_worker_gc"], cow.extras
