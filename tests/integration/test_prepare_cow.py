"""Copy-on-write effect of prepare_fork: a forked child that reads the whole heap copies almost
nothing when the master was prepared, and most of the heap when it was not (same bar, so the
test can fail)."""
import sys

import pytest

from pyrun import run_script_json

needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="immortalization needs CPython 3.12+")
N_OBJECTS = 1_200_000  # builds a bit over 1M objects (the report counts them)


@pytest.fixture(scope="module")
def runs():
    return {mode: run_script_json("prepare_heap.py", mode, str(N_OBJECTS))
            for mode in ("prepare", "baseline", "freeze")}


@needs_312
@pytest.mark.slow
def test_prepared_heap_has_over_a_million_objects(runs):
    report = runs["prepare"]["report"]
    assert report["objects"] >= 1_000_000
    assert report["immortalized"] >= 1_000_000
    assert report["immortalize_skipped"] is None


@needs_312
@pytest.mark.slow
def test_prepared_child_copies_under_3_percent(runs):
    run = runs["prepare"]
    assert run["child_status"] == 0
    ratio = run["child_dirty_growth_bytes"] / run["heap_bytes"]
    assert ratio < 0.03, f"prepared child copied {ratio:.1%} of the heap"


@needs_312
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["baseline", "freeze"])
def test_unprepared_child_copies_over_30_percent(runs, mode):
    """The same bar fails without cowprof: plain preload and the gc.freeze recipe both copy."""
    run = runs[mode]
    assert run["child_status"] == 0
    ratio = run["child_dirty_growth_bytes"] / run["heap_bytes"]
    assert ratio > 0.30, f"{mode} child copied only {ratio:.1%} of the heap"
