"""cowprof.finalize.exit_order: holders before what they hold, cycles in the given order."""
from __future__ import annotations

import gzip
import io
import os

import pytest

finalize = pytest.importorskip("cowprof.finalize", reason="cowprof._native is not built")
exit_order = finalize.exit_order


class WithDel:
    def __del__(self) -> None:
        pass


def test_text_file_before_its_buffer_before_its_raw_file():
    with open(os.devnull, "w") as f:
        objects = [f.buffer.raw, f.buffer, f]
        assert exit_order(objects) == [f, f.buffer, f.buffer.raw]


def test_gzip_file_before_the_file_it_writes_to():
    raw = io.BytesIO()
    g = gzip.GzipFile(fileobj=raw, mode="wb")
    parts = [raw, g]
    buffer = getattr(g, "_buffer", None)  # 3.12+: a BufferedWriter over a stream back into g
    if buffer is not None:
        parts += [buffer, buffer.raw]
    order = exit_order(parts)
    g.close()
    assert order[0] is g
    assert [o for o in order if o is raw or o is g] == [g, raw]


def test_through_plain_containers_up_to_the_depth():
    inner = WithDel()
    outer = WithDel()
    outer.held = {"list": [inner]}  # outer -> its attributes -> dict -> list -> inner
    assert exit_order([inner, outer]) == [outer, inner]
    deep = WithDel()
    deep.held = [[[[inner]]]]  # deeper than EDGE_DEPTH levels: no edge, the given order is kept
    assert finalize.EDGE_DEPTH == 3
    assert exit_order([inner, deep]) == [inner, deep]


def test_a_cycle_keeps_the_given_order_and_the_rest_is_still_ordered():
    a, b, c = WithDel(), WithDel(), WithDel()
    a.other, b.other = b, a  # a <-> b
    b.child = c
    assert exit_order([b, c, a]) == [b, a, c]
    assert exit_order([a, b, c]) == [a, b, c]


def test_big_containers_are_not_looked_through():
    inner = WithDel()
    outer = WithDel()
    outer.many = [None] * finalize.EDGE_BUDGET + [inner]
    assert exit_order([inner, outer]) == [inner, outer]


def test_empty_and_unrelated():
    assert exit_order([]) == []
    objs = [WithDel() for _ in range(5)]
    assert exit_order(objs) == objs
