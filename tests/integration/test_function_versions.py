"""3.12's function versions: given in the master by prepare_fork, so that a worker's first
specialized call to a function made by types.FunctionType does not write the master's function
object. Paired with the same fork under COWPROF_VERSION_FUNCTIONS=0, where the worker does write them."""
from __future__ import annotations

import sys

import pytest

from pyrun import run_json

IS_312 = sys.version_info[:2] == (3, 12)

FORK = """
import json, types, cowprof
from cowprof import _native
from forkjson import in_child
ns = {}
exec(compile("def f(x):\\n    return x + 1\\n", "<generated>", "exec"), ns)
funcs = [types.FunctionType(ns["f"].__code__, {}) for _ in range(300)]
report = cowprof.prepare_fork()
master = [_native.function_version(f) for f in funcs]
def worker():
    for f in funcs:  # a call site of its own for each, called until it is specialized
        caller = eval("lambda f: f(1)")
        for _ in range(8):
            caller(f)
    return [_native.function_version(f) for f in funcs]

worker_versions = in_child(worker)
print(json.dumps({"versioned": report.functions_versioned, "skipped": report.function_versions_skipped,
                  "master": master, "worker": worker_versions}))
"""


@pytest.mark.skipif(not IS_312, reason="only CPython 3.12 versions functions at their first specialized call")
def test_312_worker_calls_write_no_function_version_after_prepare():
    out = run_json(FORK)
    assert out["skipped"] is None and out["versioned"] >= 300
    assert all(v >= 1 for v in out["master"]) and len(set(out["master"])) == 300  # distinct, as the interpreter gives
    assert out["worker"] == out["master"]  # nothing written into the 300 functions in the worker


@pytest.mark.skipif(not IS_312, reason="only CPython 3.12 versions functions at their first specialized call")
def test_312_baseline_worker_writes_the_versions_itself():
    out = run_json(FORK, env={"COWPROF_VERSION_FUNCTIONS": "0"})
    assert out["versioned"] == 0 and out["skipped"] == "not requested"
    assert set(out["master"]) == {0}
    written = sum(w != m for w, m in zip(out["worker"], out["master"]))
    assert written >= 290, written  # each specialized call gave its function a version in the worker


def test_function_versions_step_on_this_version():
    """3.12: the counter check passes; 3.13+: versions are given at creation, the step says so."""
    out = run_json("""
        import json, types, cowprof
        from cowprof import _native, function_versions
        why = function_versions.check()
        f = types.FunctionType((lambda: 1).__code__, {})
        report = cowprof.prepare_fork()
        print(json.dumps({"why": why, "versioned": report.functions_versioned, "no_walk": report.immortalize_skipped,
                          "skipped": report.function_versions_skipped,
                          # 3.11: this build of the native module has no heap walk, nor these
                          "f": _native.function_version(f) if hasattr(_native, "function_version") else None,
                          "counter": getattr(_native, "function_version_counter", lambda: None)()}))
    """)
    if IS_312:
        assert out["why"] is None and out["skipped"] is None and out["versioned"] >= 1
        assert out["f"] >= 1 and out["counter"] > out["f"]
    else:
        assert out["why"] == "only CPython 3.12 versions functions at their first specialized call"
        assert out["skipped"] == (out["no_walk"] or out["why"])  # 3.11: no walk, so no versions either
        assert out["versioned"] == 0 and out["counter"] is None
