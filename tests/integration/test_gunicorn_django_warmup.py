"""A stock Django project under real gunicorn (``-c python:cowprof.gunicorn --preload``): the
zero-config warm-up leaves the workers nothing to import and copies less than no warm-up, and
the learned preload imports in the master what workers of the previous run imported late.
Every gunicorn started here is stopped by PID in a ``finally``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from cowprof.cli import main as cli_main
from demo.loadgen import run_load
from cowprof.pages import scan
from cowprof.prepare import immortalize_unavailable
from cowprof.preload import late_imports

pytest.importorskip("django", reason="the test extra installs Django")
from djangoproj import make_project  # noqa: E402
from gunicorn_server import GunicornServer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.needs_immortal,
              pytest.mark.skipif(immortalize_unavailable() is not None, reason=str(immortalize_unavailable()))]

WORKERS = 2
PATHS = ["/admin/login/", "/admin/login/", "/admin/", "/nothing-here/", "/admin/login/?next=/admin/"] * 60


def serve(project: str, tmp: Path, name: str, env: dict[str, str]) -> dict:
    """Starts gunicorn, sends the load, returns per-worker copied bytes, late imports, the hook's
    report and ``cowprof snapshot`` output; stops gunicorn."""
    report = tmp / f"{name}.report.json"
    server = GunicornServer(project, "mysite.wsgi:application", WORKERS, {**env, "COWPROF_PREPARE_REPORT": str(report)},
                            tmp / f"{name}.log")
    try:
        server.wait_ready()
        load = run_load("127.0.0.1", server.port, PATHS, concurrency=2, deadline=120)
        assert load.errors == 0 and sum(load.status.values()) == len(PATHS), load
        time.sleep(0.5)
        pages = scan(server.proc.pid)
        late = late_imports(server.proc.pid, [w.pid for w in pages.workers])
        snapshot_file = tmp / f"{name}.snapshot.txt"
        with open(snapshot_file, "w") as out:
            old = sys.stdout
            sys.stdout = out
            try:
                rc = cli_main(["snapshot", str(server.proc.pid)])
            finally:
                sys.stdout = old
        assert rc == 0
        return {"copied": [w.copied_bytes for w in pages.workers], "late": late,
                "report": json.loads(report.read_text()), "snapshot": snapshot_file.read_text()}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> str:
    return make_project(tmp_path_factory.mktemp("djproj"))


@pytest.fixture(scope="module")
def runs(project, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("runs")
    common = {"COWPROF_PRELOAD_DIR": str(tmp / "preload"), "COWPROF_APP_KEY": "stock-django"}
    out = {"off": serve(project, tmp, "off", {**common, "COWPROF_WARMUP": "0"})}
    out["default"] = serve(project, tmp, "default", dict(common))
    out["learned"] = serve(project, tmp, "learned", {**common, "COWPROF_WARMUP": "0", "COWPROF_PRELOAD": "learned"})
    return out


def test_without_warmup_workers_import_modules_late(runs):
    off = runs["off"]
    assert len(off["late"].workers) == WORKERS
    assert all(len(mods) >= 10 for mods in off["late"].workers.values()), off["late"].workers
    assert "late imports:" in off["snapshot"] and "COWPROF_PRELOAD=learned" in off["snapshot"]


def test_zero_config_warmup_leaves_nothing_to_import_and_copies_less(runs):
    default, off = runs["default"], runs["off"]
    warm = default["report"]["warmup"]
    assert warm["frameworks"] == ["django"] and warm["failed"] == 0
    assert warm["left_open"] == [], warm["left_open"]  # nothing a worker would inherit or miss
    assert default["late"].workers == {}, default["late"].workers
    assert "late imports:" not in default["snapshot"]
    mean = sum(default["copied"]) / WORKERS
    mean_off = sum(off["copied"]) / WORKERS
    assert mean <= 0.8 * mean_off, (mean, mean_off)


def test_learned_preload_imports_the_late_modules_in_the_master(runs):
    learned, off = runs["learned"], runs["off"]
    before = set(off["late"].modules)
    imported = set(learned["report"]["preload"]["imported"])
    assert before <= imported | set(learned["report"]["prepare"]["late_imports"])
    assert before & imported, (before, imported)
    assert set(learned["report"]["prepare"]["preloaded"]) == imported
    # what the previous workers imported late is now in the master: these workers import none of it
    assert not (set(learned["late"].modules) & before), learned["late"].modules
