"""prepare_fork's contract, each check in a fresh interpreter (it immortalizes its whole heap)."""
import sys

import pytest

from pyrun import run_json, run_py

needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="immortalization needs CPython 3.12+")


@needs_312
def test_refcount_of_prepared_object_does_not_change():
    out = run_json("""
        import json, sys, cowprof
        class Thing: pass
        thing = Thing()
        before_prepare = [sys.getrefcount(thing)]
        held = [thing]                      # a new reference before preparing: counted
        before_prepare.append(sys.getrefcount(thing))
        cowprof.prepare_fork()
        a = sys.getrefcount(thing)
        more = [thing] * 1000               # 1000 new references
        alias = thing
        b = sys.getrefcount(thing)
        del more, alias
        c = sys.getrefcount(thing)
        print(json.dumps({"before": before_prepare, "a": a, "b": b, "c": c}))
    """)
    assert out["before"][1] == out["before"][0] + 1  # mortal: references are counted
    assert out["a"] == out["b"] == out["c"]


@needs_312
def test_objects_created_after_prepare_are_still_freed():
    out = run_json("""
        import gc, json, weakref, cowprof
        keep = [object() for _ in range(1000)]
        cowprof.prepare_fork()
        fired = []
        class Late: pass
        late = Late()
        ref = weakref.ref(late, lambda r: fired.append("late"))
        del late                            # refcount drop frees it at once
        cyc = Late(); cyc.self = cyc        # a cycle needs the (still enabled) collector
        ref2 = weakref.ref(cyc, lambda r: fired.append("cycle"))
        del cyc
        gc.collect()
        print(json.dumps({"fired": fired, "dead": [ref() is None, ref2() is None]}))
    """)
    assert out["fired"] == ["late", "cycle"]
    assert out["dead"] == [True, True]


@needs_312
def test_walk_reaches_untracked_containers_dict_keys_and_code_objects():
    out = run_json("""
        import gc, json, cowprof
        from cowprof import _native
        atomic = {"k": 12345.5, "s": "".join(["atomic", "-value"])}   # untracked dict
        key = "".join(["not", "-interned", "-key"])
        keyed = {key: 1.5}                                            # str key: dict_traverse skips it
        nested = ((1.25, "".join(["deep", "-str"])), 2.5)             # untracked tuples
        def func():
            return "a-constant-string-in-co_consts-" + str(7) + func.__name__
        gc.collect()
        checks_before = [_native.is_immortal(atomic["k"]), _native.is_immortal(key)]
        cowprof.prepare_fork()
        print(json.dumps({
            "before": checks_before,
            "untracked": [gc.is_tracked(atomic), gc.is_tracked(nested)],
            "after": {
                "dict_value": _native.is_immortal(atomic["k"]) and _native.is_immortal(atomic["s"]),
                "dict_key": _native.is_immortal(key),
                "tuple_items": _native.is_immortal(nested[0][0]) and _native.is_immortal(nested[0][1]),
                "code": _native.is_immortal(func.__code__),
                "consts": all(_native.is_immortal(c) for c in func.__code__.co_consts if c is not None),
                "names": all(_native.is_immortal(n) for n in func.__code__.co_names),
                "linetable": _native.is_immortal(func.__code__.co_linetable),
            },
        }))
    """)
    assert out["before"] == [False, False]
    # these containers are invisible to gc's lists (3.14 no longer untracks dicts of atomic values)
    assert out["untracked"] == [sys.version_info >= (3, 14), False]
    assert all(out["after"].values()), out["after"]


@needs_312
def test_deep_nesting_does_not_recurse():
    """A recursive walker would overflow the C stack on these chains; the walk uses its own stack."""
    out = run_json("""
        import gc, json, cowprof
        from cowprof import _native
        gc.disable()
        t = (1.5,)
        for _ in range(300_000):
            t = (t, 2.5)
            gc.collect(0)           # untracks the new tuple: its items are untracked
        linked = None
        for i in range(300_000):    # a GC-tracked chain as deep
            linked = [linked, i + 1000]
        gc.enable()
        r = cowprof.prepare_fork()
        inner = t
        while len(inner) == 2:
            inner = inner[0]
        node = linked
        while node[0] is not None:
            node = node[0]
        print(json.dumps({"tracked": gc.is_tracked(t), "inner": _native.is_immortal(inner[0]),
                          "deepest_list": _native.is_immortal(node), "objects": r.objects}))
    """)
    assert out["tracked"] is False
    assert out["inner"] is True
    assert out["deepest_list"] is True
    assert out["objects"] > 900_000


@needs_312
@pytest.mark.parametrize("child_collects", [False, True])
def test_interpreter_exits_cleanly_after_immortalizing(child_collects):
    proc = run_py(f"""
        import gc, os, sys, cowprof
        data = [{{"i": i, "s": str(i) * 3}} for i in range(100_000)]
        objs = [type("T%d" % i, (), {{"x": i}})() for i in range(2_000)]
        cowprof.prepare_fork()
        pid = os.fork()
        if pid == 0:
            cowprof.after_fork()
            if {child_collects}:
                gc.collect()
            del data[:10]
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        if {child_collects}:
            gc.collect()
        print("child", os.waitstatus_to_exitcode(status))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child 0"
    assert "Traceback" not in proc.stderr and "Fatal" not in proc.stderr


@needs_312
def test_second_call_is_safe_and_only_walks_new_objects():
    out = run_json("""
        import json, cowprof
        big = [{"i": i, "f": i * 0.5} for i in range(200_000)]
        first = cowprof.prepare_fork()
        small = [[i] for i in range(100)]      # new tracked objects since the first call
        second = cowprof.prepare_fork()
        third = cowprof.prepare_fork()
        from cowprof import _native
        print(json.dumps({"first": first.to_dict(), "second": second.to_dict(), "third": third.to_dict(),
                          "new_immortal": _native.is_immortal(small[5][0] if small[5][0] > 256 else small[5])}))
    """)
    first, second, third = out["first"], out["second"], out["third"]
    assert first["full_walk"] and first["objects"] > 600_000
    assert not second["full_walk"]
    assert second["objects"] < first["objects"] / 20
    assert second["immortalized"] >= 100          # the new lists
    assert third["immortalized"] < 100            # nothing left to do
    assert out["new_immortal"] is True
    assert second["frozen"] >= first["frozen"]


@needs_312
def test_objects_frozen_by_someone_else_are_walked():
    out = run_json("""
        import gc, json, cowprof
        from cowprof import _native
        early = [{"v": 1.0 + i} for i in range(1000)]
        gc.freeze()                           # the user's own gc.freeze recipe ran first
        r = cowprof.prepare_fork()
        print(json.dumps({"walked": _native.is_immortal(early) and _native.is_immortal(early[3]["v"]),
                          "full": r.full_walk}))
    """)
    assert out == {"walked": True, "full": True}


def test_disable_gc_until_fork_and_after_fork():
    out = run_json("""
        import gc, json, os, cowprof
        cowprof.disable_gc_until_fork()
        disabled = not gc.isenabled()
        report = cowprof.prepare_fork()
        still_disabled_in_master = not gc.isenabled()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            cowprof.after_fork()
            os.write(w, b"1" if gc.isenabled() else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        print(json.dumps({"disabled": disabled, "master": still_disabled_in_master,
                          "child_enabled": os.read(r, 1) == b"1", "frozen": report.frozen}))
    """)
    assert out["disabled"] and out["master"] and out["child_enabled"]
    assert out["frozen"] > 0


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the 3.11 fallback")
def test_python_311_freezes_and_reports_no_immortalization():
    out = run_json("""
        import json, warnings, cowprof
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = cowprof.prepare_fork()
            r2 = cowprof.prepare_fork()
        print(json.dumps({"r": r.to_dict(), "warnings": [str(w.message) for w in caught]}))
    """)
    r = out["r"]
    assert r["immortalized"] == 0
    assert "3.12" in r["immortalize_skipped"]
    assert r["frozen"] > 0
    assert len(out["warnings"]) == 1 and "3.12" in out["warnings"][0]


def test_summary_is_one_line():
    out = run_json("""
        import json, cowprof
        print(json.dumps(cowprof.prepare_fork().summary()))
    """)
    assert "\\n" not in out and "objects" in out and "frozen" in out


@needs_312
def test_extension_static_types_are_not_traversed():
    """numpy defines static types with a tp_traverse that must not be called on them (it aborts)."""
    out = run_json("""
        import json, numpy, cowprof
        from cowprof import _native
        arr = numpy.arange(10_000, dtype=numpy.float64)
        objs = [numpy.float64(i) for i in range(1000)]
        r = cowprof.prepare_fork()
        print(json.dumps({"objects": r.objects, "arr": _native.is_immortal(arr),
                          "sum": float(arr.sum())}))
    """)
    assert out["arr"] is True and out["objects"] > 10_000
    assert out["sum"] == 49995000.0


# The collection before the walk: a garbage cycle it missed would be made immortal and frozen, never
# freed. Each child makes a cycle of a weakly referenceable object and says whether prepare_fork
# freed it. Baseline: gc.freeze() alone (the walk's immortalization without a collection) keeps it.
_GARBAGE_CYCLE = """
    import gc, json, weakref, cowprof
    class Node: pass
    node = Node(); node.self = node
    ref = weakref.ref(node)
    keep = [[i] for i in range(5000)]
    {setup}
    {prepare}
    print(json.dumps({{"freed": ref() is None}}))
"""


@needs_312
@pytest.mark.parametrize("setup", [
    # survived a full collection (generation 2), dropped, then a young collection since
    "gc.collect()\ndel node\ngc.collect(1)",
    # old, no full collection ever ran, the collector disabled (the gc.freeze recipe's first step)
    "gc.disable()\ngc.collect(1)\ndel node",
    # dropped right after a full collection
    "gc.collect()\ndel node",
], ids=["old-then-young-collection", "collector-disabled", "just-after-full-collection"])
def test_prepare_fork_frees_garbage_cycles_before_freezing(setup):
    indent = "\n    "
    out = run_json(_GARBAGE_CYCLE.format(setup=setup.replace("\n", indent), prepare="cowprof.prepare_fork()"))
    assert out["freed"], out
    baseline = run_json(_GARBAGE_CYCLE.format(setup=setup.replace("\n", indent), prepare="gc.freeze()"))
    assert not baseline["freed"], baseline


@pytest.mark.skipif("LOAD_CONST_MORTAL" not in getattr(__import__("opcode"), "_specialized_opmap", {}),
                    reason="this CPython has no LOAD_CONST_MORTAL (3.14 only)")
def test_mortal_constant_loads_become_immortal_and_still_load_the_constant():
    out = run_json("""
        import dis, json, sys, cowprof
        def f():
            return (1.5, "a b", [2.5, 3.5], b"raw" * 300)
        def watched():
            return (4.5, "c d")
        f(), watched()
        sys.monitoring.use_tool_id(3, "t")
        sys.monitoring.set_local_events(3, watched.__code__, sys.monitoring.events.LINE)
        sys.monitoring.register_callback(3, sys.monitoring.events.LINE, lambda *a: None)
        ops = lambda fn: [i.opname for i in dis.get_instructions(fn, adaptive=True) if "CONST" in i.opname]
        before = ops(f)
        report = cowprof.prepare_fork(heapmap=False)
        print(json.dumps({"before": before, "after": ops(f), "settled": report.const_loads_settled,
                          "value": repr(f()), "again": repr(f()), "watched": watched(),
                          "summary": report.summary()}))
    """)
    assert "LOAD_CONST_MORTAL" in out["before"] and "LOAD_CONST_MORTAL" not in out["after"]
    assert "LOAD_CONST_IMMORTAL" in out["after"] and out["settled"] > 0
    assert out["value"] == out["again"] == repr((1.5, "a b", [2.5, 3.5], b"raw" * 300))
    assert out["watched"] == [4.5, "c d"] and "constant loads made immortal" in out["summary"]
