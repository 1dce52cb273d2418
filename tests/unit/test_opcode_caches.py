"""prepare._opcode_caches: the inline cache sizes the walk steps through adaptive bytecode with."""
from __future__ import annotations

import opcode
import sys

import pytest

from cowprof import prepare

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="opcode describes cache sizes by name from 3.13")


@needs_313
def test_every_specialized_opcode_has_its_familys_cache_size():
    table = prepare._opcode_caches()
    assert table is not None and len(table) == 256
    for base, members in opcode._specializations.items():
        want = opcode._inline_cache_entries.get(base, 0)
        assert table[opcode.opmap[base]] == want
        assert all(table[opcode._specialized_opmap[m]] == want for m in members)


@needs_313
def test_an_opcode_of_no_known_family_means_no_table(monkeypatch):
    monkeypatch.setattr(opcode, "_specialized_opmap", {**opcode._specialized_opmap, "LOAD_SOMETHING_NEW": 250})
    assert prepare._opcode_caches() is None


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.11/3.12 list cache sizes by opcode number")
def test_before_313_there_is_no_table():
    assert prepare._opcode_caches() is None
