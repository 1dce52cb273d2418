"""cowprof.hotcode in this process: a failing round and why relocation is unavailable. The
relocation itself runs in fresh interpreters: tests/integration/test_hotcode.py."""
from __future__ import annotations

import sys

import pytest

from cowprof import hotcode


def test_failing_round_is_reported():
    r = hotcode.relocate(lambda: 1 / 0)
    if hotcode.unavailable():
        assert r.skipped == hotcode.unavailable()
    else:
        assert r.skipped.startswith("probe round failed: ZeroDivisionError")
    assert "not relocated" in r.summary()


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the check is about CPython versions")
def test_unavailable_names_the_reason():
    if sys.version_info >= (3, 12):
        assert hotcode.unavailable() is None
    else:
        assert "3.12" in hotcode.unavailable() or "does not specialize" in hotcode.unavailable()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the native visit (PyUnstable_GC_VisitObjects) is 3.12+")
def test_the_native_function_list_is_what_the_gc_lists():
    import gc
    import types

    from cowprof import _native

    def made_here() -> None:
        pass

    gc.collect()
    native = {id(f): f for f in _native.functions()}
    listed = {id(o): o for o in gc.get_objects() if type(o) is types.FunctionType}
    assert id(made_here) in native and all(type(f) is types.FunctionType for f in native.values())
    # 3.12/3.13 visit the generations gc.get_objects lists; 3.14+ the permanent one too
    assert native.keys() >= listed.keys() if sys.version_info >= (3, 14) else native.keys() == listed.keys()
    assert hotcode._all_functions() is not None and id(made_here) in {id(f) for f in hotcode._all_functions()}
