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
