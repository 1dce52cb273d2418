"""multiprocessing Pools, with the recipes of docs/servers.md, "multiprocessing": the ``fork`` context prepared
with ``prepare_parent``, and a ``forkserver`` (the Linux default since 3.14) whose server preloads the
heap and ``cowprof.forkserver``. Each pool's workers read the whole shared heap and are measured by
the page scan while alive; the same pool without cowprof must fail the bar."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from pyrun import TESTS_DIR

from cowprof.pages import scan

needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="immortalization needs CPython 3.12+")
WORKERS = 2
BAR = 0.03  # the worst worker may copy at most this share of its parent's resident memory
# ~120 MB: a pool worker's own start-up (unpickling, imports, allocator pools) copies ~2 MB whatever
# the heap, so the heap must be big enough for the share to mean something
OBJECTS = 1_500_000


def run_pool(tmp_path, method: str, mode: str) -> dict:
    """Start the pool, wait until every worker has read the heap, scan the workers' parent, stop."""
    ready, stop = tmp_path / f"ready-{method}-{mode}", tmp_path / f"stop-{method}-{mode}"
    ready.mkdir()
    proc = subprocess.Popen([sys.executable, os.path.join(TESTS_DIR, "mp_pool_prog.py"), method, mode,
                             str(WORKERS), str(ready), str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=TESTS_DIR, text=True,
                            env={**os.environ, "COWPROF_TEST_MP_OBJECTS": str(OBJECTS)})
    try:
        deadline = time.monotonic() + 120
        def done() -> list[str]:
            return [n for n in os.listdir(ready) if not n.endswith(".tmp")]

        while len(done()) < WORKERS:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "pool workers did not get ready"
            time.sleep(0.05)
        parents = {(ready / name).read_text() for name in done()}
        assert len(parents) == 1, parents
        parent = int(parents.pop())
        report = scan(parent)
        stop.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    finally:
        stop.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workers = sorted(int(name) for name in os.listdir(ready))
    assert json.loads(out.strip().splitlines()[-1])["pids"] == workers
    if method == "forkserver":
        assert parent != proc.pid  # the fork server, not the program, forked them
    assert sorted(w.pid for w in report.workers) == workers
    worst = max(w.copied_bytes for w in report.workers)
    return {"share": worst / report.master.rss_bytes, "master_rss": report.master.rss_bytes}


@needs_312
@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_pool_workers_copy_little_of_the_prepared_parent(tmp_path, method):
    prepared = run_pool(tmp_path, method, "cowprof")
    baseline = run_pool(tmp_path, method, "baseline")
    assert prepared["master_rss"] > 80 << 20  # the heap is really there
    assert prepared["share"] <= BAR, prepared
    assert baseline["share"] > BAR * 10, baseline  # without cowprof the same reads copy the heap


def test_forkserver_module_prepares_nothing_outside_a_fork_server():
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import cowprof.forkserver"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "set_forkserver_preload" in r.stderr
    r = subprocess.run([sys.executable, "-c", "import gc; n = gc.get_freeze_count(); import cowprof.forkserver as f; "
                        "print(f.REPORT, gc.get_freeze_count() - n)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["None", "0"], r.stderr  # nothing prepared or frozen
