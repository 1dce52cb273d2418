"""cowprof.hotcode in a fresh interpreter each: which code objects a round relocates, that the
functions still behave, and that the copies are packed together."""
from __future__ import annotations

import pytest

from cowprof import hotcode
from pyrun import run_json

needs_adaptive = pytest.mark.skipif(hotcode.unavailable() is not None, reason=str(hotcode.unavailable()))


@needs_adaptive
def test_relocates_what_the_round_writes_and_keeps_behaviour():
    out = run_json("""
        import json, types
        from cowprof import hotcode

        class Lenient:
            def __getattr__(self, name):
                return 2

        def hot(o):
            return o.x + o.y

        def cold(o):
            return o.z

        def outer(n):
            def inner(k):          # a hot nested code object: its parent is copied with it
                return k * n + o.w - 2
            return inner(3)

        def gen(n):
            for i in range(n):
                yield i * 2

        o = Lenient()
        def round_():
            hot(o); outer(2); sum(gen(3))
        for _ in range(3):
            round_(); cold(o)
        before = {f.__name__: f.__code__ for f in (hot, cold, outer, gen)}
        r = hotcode.relocate(round_)
        moved = {name: f.__code__ is not before[name] for name, f in (("hot", hot), ("cold", cold),
                                                                       ("outer", outer), ("gen", gen))}
        inner_moved = outer.__code__.co_consts != before["outer"].co_consts or any(
            a is not b for a, b in zip(outer.__code__.co_consts, before["outer"].co_consts))
        print(json.dumps({"r": r.to_dict(), "moved": moved, "inner_moved": inner_moved,
                          "results": [hot(o), cold(o), outer(5), list(gen(3))],
                          "equal_code": hot.__code__ == before["hot"]}))
    """)
    r = out["r"]
    assert r["skipped"] is None and r["hot"] >= 3 and r["functions"] >= 3 and r["bytes"] > 0
    assert out["moved"] == {"hot": True, "cold": False, "outer": True, "gen": True}
    assert out["inner_moved"]
    assert out["results"] == [4, 2, 15, [0, 2, 4]]
    assert out["equal_code"]  # a copy, not a different function


@needs_adaptive
def test_copies_are_packed_together():
    """Hot code objects made in holes all over the heap end up next to each other."""
    out = run_json("""
        import json, sys
        from cowprof import allocator, hotcode
        class Lenient:
            def __getattr__(self, name):
                return 1
        src = "def f{i}(o):\\n    return o.a + o.b + {i}\\n"
        probe = {}; exec(src.format(i=0), probe)
        want = (sys.getsizeof(probe["f0"].__code__) + 15) // 16
        n_items = next(n for n in range(1, 64) if (sys.getsizeof(tuple(range(n))) + 15) // 16 == want)
        holes = [tuple(range(n_items)) for _ in range(6000)]
        del holes[::10]
        ns = {}
        for i in range(500):
            exec(src.format(i=i), ns)
        funcs = [ns[f"f{i}"] for i in range(500)]
        o = Lenient()
        def round_():
            for f in funcs:
                f(o)
        round_(); round_()
        def pages():
            return len({id(f.__code__) >> 12 for f in funcs})
        before = pages()
        r = hotcode.relocate(round_, before_copy=allocator.fill_free_blocks)
        print(json.dumps({"before": before, "after": pages(), "hot": r.hot}))
    """)
    assert out["hot"] >= 500
    assert out["after"] * 3 <= out["before"], out
