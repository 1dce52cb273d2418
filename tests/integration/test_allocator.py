"""cowprof.allocator: the pymalloc and malloc fills, in a fresh interpreter each (they leak memory on
purpose)."""
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


EMPTY_POOLS_RSS = """
    import json
    from cowprof import _alloc
    def rss_anon():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) << 10 for l in f if l.startswith("RssAnon"))
    gone, kept = [], []
    for i in range(400_000):
        gone.append(object())
        if i % 16 == 0:
            kept.append((i,))  # pools of another class keep every arena alive
    del gone[:]  # ~7 MB of pools, touched, now empty
    before = rss_anon()
    r = _alloc.fill_pools(max_bytes=64 << 20, empty_pools=True, discard=DISCARD)
    print(json.dumps({"r": r, "rss_change": rss_anon() - before}))
"""


def test_filled_empty_pools_give_their_pages_back():
    out = run_json(EMPTY_POOLS_RSS.replace("DISCARD", "True"))
    r = out["r"]
    # all of each empty pool but the page with its header and the last one, where the blocks of
    # the largest class (the filler of empty pools) end a few hundred bytes short of the pool's end
    covered = r["empty_pools_before"] * (r["pool_size"] - 2 * 4096)
    assert r["empty_pools_before"] > 200 and r["discarded_bytes"] >= 0.9 * covered
    assert out["rss_change"] < -0.5 * covered, out


def test_filled_empty_pools_without_discard_stay_resident():
    out = run_json(EMPTY_POOLS_RSS.replace("DISCARD", "False"))
    r = out["r"]
    assert r["empty_pools_before"] > 200 and r["discarded_bytes"] == 0
    assert out["rss_change"] > -0.5 * r["empty_pools_before"] * (r["pool_size"] - 2 * 4096), out


def test_malloc_fill_takes_every_free_chunk_without_touching_their_pages():
    out = run_json("""
        import ctypes, json
        from cowprof import allocator
        def rss_anon():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) << 10 for l in f if l.startswith("RssAnon"))
        made = [bytearray(600 + (i * 37) % 3000) for i in range(40_000)]
        del made[::2]
        ctypes.CDLL(None).malloc_trim(0)
        before = rss_anon()
        r = allocator.fill_malloc_chunks(max_bytes=256 << 20)
        again = allocator.fill_malloc_chunks(max_bytes=256 << 20)
        print(json.dumps({"r": r.to_dict(), "again": again.to_dict(), "rss_change": rss_anon() - before}))
    """)
    r, again = out["r"], out["again"]
    # what is left is a few chunks no request of a bin's size fits (seen: 260 bytes with glibc 2.42)
    assert r["filled"] and r["skipped"] is None and r["free_before"] > 20_000 * 600
    assert r["free_after"] < 0.001 * r["free_before"], r
    assert r["filler_bytes"] >= r["free_before"] * 0.9
    # the chunks' headers only: a few KiB of the ~40 MB they cover
    assert out["rss_change"] < 2 << 20, out
    # a second call finds nothing left but the top-chunk probes of the per-thread cache
    assert again["free_before"] < 0.001 * r["free_before"] and again["filler_bytes"] < 100_000


def test_malloc_fill_respects_max_bytes_and_can_be_off():
    out = run_json("""
        import json
        from cowprof import allocator
        made = [bytearray(600 + (i * 37) % 3000) for i in range(20_000)]
        del made[::2]
        small = allocator.fill_malloc_chunks(max_bytes=100_000)
        off = allocator.fill_malloc_chunks(max_bytes=0)
        print(json.dumps({"small": small.to_dict(), "off": off.to_dict()}))
    """)
    assert out["small"]["filler_bytes"] <= 100_000 and out["small"]["skipped"] == "max_bytes reached"
    assert out["off"] == {**out["off"], "filled": False, "skipped": "turned off", "filler_bytes": 0}


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
        made = [bytes(700 + i % 900) for i in range(4_000)]
        del made[::2]
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps({"filler": r.filler_bytes, "skipped": r.fill_skipped, "summary": r.summary(),
                          "malloc": r.malloc_filler_bytes, "malloc_skipped": r.malloc_fill_skipped,
                          "phases": sorted(r.phase_seconds)}))
    """)
    assert out["filler"] > 0 and out["skipped"] is None and "free pool blocks filled" in out["summary"]
    assert out["malloc"] > 0 and out["malloc_skipped"] is None and "free malloc chunks filled" in out["summary"]
    assert {"release", "fill", "trim", "fill_malloc"} <= set(out["phases"])


@pytest.mark.parametrize("env, pools, malloc", [
    ({}, "filled", "filled"),
    ({"COWPROF_FILL_MALLOC": "0"}, "filled", "turned off"),
    ({"COWPROF_FILL_FREE_BLOCKS": "0"}, "turned off", "turned off"),
])
def test_fill_all_runs_the_three_steps_and_obeys_the_switches(env, pools, malloc):
    # what prepare_fork and the hot-code relocation share: pools, malloc_trim, malloc chunks, in order
    out = run_json("""
        import json
        from cowprof import allocator
        a, b = "x", "y"
        keep = [(a, b) for _ in range(20_000)]
        del keep[::2]
        made = [bytes(700 + i % 900) for i in range(4_000)]
        del made[::2]
        r = allocator.fill_all()
        print(json.dumps({"pools": r.pools.to_dict(), "malloc": r.malloc.to_dict(),
                          "phases": list(r.phase_seconds)}))
    """, env=env)
    assert out["phases"] == ["fill", "trim", "fill_malloc"]
    for step, want in (("pools", pools), ("malloc", malloc)):
        got = out[step]
        if want == "filled":
            assert got["filled"] and got["filler_bytes"] > 0, got
        else:
            assert got["skipped"] == want and got["filler_bytes"] == 0, got


def test_fill_before_every_fork_runs_in_the_armed_process_only():
    out = run_json("""
        import json, os
        from cowprof import allocator
        def fork_and_report(then=None):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                got = {"child": allocator.before_fork_totals()["calls"]}
                if then:
                    got.update(then())
                os.write(w, json.dumps(got).encode())
                os._exit(0)
            os.close(w)
            data = os.read(r, 10000)
            os.waitpid(pid, 0)
            return json.loads(data)
        default = allocator.fill_before_every_fork()
        armed = allocator.fill_before_every_fork(enabled=True)
        keep = [bytes(16 * (i % 20 + 1)) for i in range(20_000)][::2]  # partly used pools since
        first = fork_and_report(lambda: {"grandchild": fork_and_report()["child"]})
        off = (os.environ.__setitem__("COWPROF_FILL_BEFORE_FORK", "0"), allocator.fill_before_every_fork())[1]
        after_off = fork_and_report()
        print(json.dumps({"default": default, "armed": armed, "first": first, "off": off, "after_off": after_off,
                          "totals": allocator.before_fork_totals()}))
    """)
    assert out["default"] == "turned off" and out["armed"] is None and out["first"]["child"] == 1
    assert out["first"]["grandchild"] == 1  # the child forked without filling: not the armed process
    assert out["off"] == "turned off" and out["after_off"]["child"] == 1  # no second fill
    assert out["totals"]["calls"] == 1 and out["totals"]["pool_bytes"] > 0
