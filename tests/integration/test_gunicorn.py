"""Real gunicorn with the sample app: cowprof's hook against baseline, and the hook's behaviour.

Uses the demo's own code path (``demo.run.run_mode``) with a small heap, 2 workers and a few
thousand requests on a free 127.0.0.1 port; every gunicorn started here is stopped by PID
(SIGTERM to its master, then any worker left) in a ``finally``.
"""
from __future__ import annotations

import json
import os
import re
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from demo.run import (QUICK, GunicornProcess, ModeSpec, build_table, check_targets, free_port, main,
                          run_mode, sample_request_paths)
from cowprof.prepare import immortalize_unavailable

pytestmark = pytest.mark.slow

NO_IMMORTAL = immortalize_unavailable()


@pytest.mark.needs_immortal
@pytest.mark.skipif(NO_IMMORTAL is not None, reason=f"{NO_IMMORTAL}")
def test_cowprof_copies_at_most_a_fifth_of_baseline(tmp_path):
    cfg = replace(QUICK, heap_mb=32, workers=2, requests=2500, concurrency=4, out_dir=tmp_path,
                  load_deadline=90, boot_timeout=90)
    paths = sample_request_paths(cfg.requests, seed=cfg.seed)
    base = run_mode("baseline", cfg, paths)
    cow = run_mode("cowprof", cfg, paths)
    for r in (base, cow):
        assert r.load.ok == cfg.requests, (r.mode, r.load)
        assert len(r.pages.workers) == cfg.workers
        assert json.loads((tmp_path / f"{r.mode}.json").read_text())["mode"] == r.mode
    # the baseline must copy a lot, or the comparison below proves nothing
    assert base.copied_pct >= 25.0, base.copied_pct
    assert cow.copied_mean <= base.copied_mean / 5, (cow.copied_mean, base.copied_mean)
    # the hook did run prepare_fork (and the warm-up) in the master
    assert cow.prepare is not None and cow.prepare["prepare"]["immortalized"] > 0
    assert cow.prepare["warmup"]["failed"] == 0
    assert cow.prepare["warmup"]["left_open"] == []  # nothing a worker would inherit or miss
    assert "cowprof: prepared" in Path(cow.log_path).read_text()
    # the demo's table and target checks render from these results
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(build_table([base, cow], cfg))
    text = console.export_text()
    assert "baseline" in text and "cowprof" in text and "master heap" in text
    assert [c.passed for c in check_targets([base, cow])][:1] == [cow.copied_pct <= 2.0]


def test_demo_rejects_bad_arguments(capsys):
    assert main(["--modes", "baseline,nope"]) == 2
    assert main(["--quick", "--workers", "0"]) == 2
    out = capsys.readouterr().out
    assert "unknown demo mode(s) nope" in out and "must be positive" in out


_USER_CONF = """
import os
wsgi_app = "sample_app.app:app"
workers = 1
preload_app = {preload}
control_socket_disable = True
MARKS = {marks!r}

def when_ready(server):
    open(os.path.join(MARKS, "when_ready"), "w").write(str(os.getpid()))

def post_fork(server, worker):
    open(os.path.join(MARKS, "post_fork-%d" % os.getpid()), "w").write("")
"""


def _run_user_config(tmp_path: Path, *, preload: bool) -> tuple[str, list[str]]:
    marks = tmp_path / "marks"
    marks.mkdir()
    conf = tmp_path / "user.conf.py"
    conf.write_text(textwrap.dedent(_USER_CONF.format(preload=preload, marks=str(marks))))
    spec = ModeSpec("user-config", "", "python:cowprof.gunicorn",
                    {"COWPROF_GUNICORN_CONFIG": str(conf), "COWPROF_WARMUP": "/health"}, preload=False)
    cfg = replace(QUICK, heap_mb=2, workers=1)
    server = GunicornProcess(spec, cfg, free_port(), tmp_path / "gunicorn.log", None)
    try:
        tree = server.wait_ready(1, timeout=60)
        deadline = time.monotonic() + 10
        while not any(p.startswith("post_fork") for p in os.listdir(marks)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree.master == server.pid
    finally:
        server.stop()
    return (tmp_path / "gunicorn.log").read_text(), sorted(os.listdir(marks))


def test_user_hooks_compose_with_cowprof_hooks(tmp_path):
    log, marks = _run_user_config(tmp_path, preload=True)
    assert "when_ready" in marks and any(m.startswith("post_fork-") for m in marks)
    assert re.search(r"cowprof: warm-up: \d+ in-process requests in [0-9.]+ s, \d+ ok", log)
    assert "cowprof: prepared" in log
    assert "preload_app is off" not in log


def test_preload_off_is_warned(tmp_path):
    log, marks = _run_user_config(tmp_path, preload=False)
    assert "cowprof: preload_app is off" in log and "--preload" in log
    assert "cowprof: prepared" not in log and "warm-up" not in log
    assert "when_ready" in marks and any(m.startswith("post_fork-") for m in marks)  # user's hooks ran
