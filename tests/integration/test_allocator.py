"""cowprof.allocator: the pymalloc fill, in a fresh interpreter each (it leaks memory on purpose)."""
from __future__ import annotations

import pytest

from pyrun import run_json

pytest.importorskip("cowprof._alloc", reason="the native module is built by the install")


def test_fill_leaves_no_free_block_in_used_pools():
    out = run_json("""
        import json
        from cowprof import _alloc, allocator
        a, b = "x", "y"
        keep = [(a, b) for _ in range(50_000)]
        del keep[::2]  # free blocks in every pool of the 64-byte class
        before = _alloc.stats()
        r = allocator.fill_free_blocks(max_bytes=64 << 20)
        print(json.dumps({"r": r.to_dict(), "before": before}))
    """)
    r, before = out["r"], out["before"]
    assert r["filled"] and r["skipped"] is None
    # stats() allocates a few objects itself: the counts of two calls differ by those
    free_before = sum(c[3] for c in before["size_classes"])
    assert r["free_blocks_before"] >= 25_000 and abs(r["free_blocks_before"] - free_before) < 200
    assert r["free_blocks_after"] == 0  # read in C right after the fill (stats() then starts new pools)
    # the free blocks at their size: no empty pool touched, none created
    assert abs(r["filler_bytes"] - sum(c[0] * c[3] for c in before["size_classes"])) < 200 * 64
    assert r["empty_pools_after"] == r["empty_pools_before"]


def test_fill_respects_max_bytes_and_can_be_off():
    out = run_json("""
        import json
        from cowprof import allocator
        a, b = "x", "y"
        keep = [(a, b) for _ in range(50_000)]
        del keep[::2]
        small = allocator.fill_free_blocks(max_bytes=100_000)
        off = allocator.fill_free_blocks(max_bytes=0)
        print(json.dumps({"small": small.to_dict(), "off": off.to_dict()}))
    """)
    assert out["small"]["filler_bytes"] <= 100_000 and out["small"]["skipped"] == "max_bytes reached"
    assert out["off"] == {**out["off"], "filled": False, "skipped": "turned off", "filler_bytes": 0}


def test_empty_pools_are_filled_only_on_request():
    out = run_json("""
        import json
        from cowprof import allocator
        keep = [object() for _ in range(200_000)]
        del keep[:]  # whole pools become empty
        r = allocator.fill_free_blocks(max_bytes=64 << 20, empty_pools=True)
        print(json.dumps(r.to_dict()))
    """)
    assert out["empty_pools_before"] > 0 and out["empty_pools_after"] == 0 and out["free_blocks_after"] == 0


def test_no_pymalloc_is_reported_not_raised():
    out = run_json("""
        import json
        from cowprof import allocator
        print(json.dumps(allocator.fill_free_blocks().to_dict()))
    """, env={"PYTHONMALLOC": "malloc"})
    assert out["filled"] is False and "pymalloc is not in use" in out["skipped"]


def test_prepare_fork_reports_the_fill():
    out = run_json("""
        import json, cowprof
        a, b = "x", "y"
        keep = [(a, b) for _ in range(20_000)]
        del keep[::2]
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps({"filler": r.filler_bytes, "skipped": r.fill_skipped, "summary": r.summary()}))
    """)
    assert out["filler"] > 0 and out["skipped"] is None and "free pool blocks filled" in out["summary"]
