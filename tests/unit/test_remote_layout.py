"""The layouts of cowprof.remote checked against the running interpreter (every supported version
runs this file): offsets measured with ctypes, and the reader pointed at this very process."""
from __future__ import annotations

import ctypes
import os
import sys
import tempfile

import numpy as np
import pytest

from cowprof import heapmap
from cowprof.remote import elf
from cowprof.remote.objects import TypeTable, read_str
from cowprof.remote.target import LAYOUTS, Memory, UnsupportedTarget, _verified, find_interpreter

pytestmark = pytest.mark.skipif(sys.version_info[:2] not in LAYOUTS or sys.maxsize < 2**32,
                                reason="no remote layout for this interpreter (3.12-3.15, 64-bit)")
LAY = LAYOUTS.get(sys.version_info[:2])


def _word(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


class Outer:
    class Inner:
        def method(self) -> int:
            return 1


def test_offsets_match_this_interpreter():
    t = Outer.Inner
    assert _word(id(t) + LAY.tp_basicsize) == t.__basicsize__
    assert _word(id(t) + LAY.tp_itemsize) == t.__itemsize__
    assert _word(id(t) + LAY.tp_flags) == t.__flags__
    assert _word(id(t) + LAY.tp_base) == id(object)
    assert _word(id(t) + LAY.ht_name) == id(t.__name__)
    assert _word(id(t) + LAY.ht_name + 16) == id(t.__qualname__)
    f = t.method
    code = f.__code__
    assert _word(id(f) + LAY.func_code) == id(code)
    assert _word(id(f) + LAY.func_module) == id(f.__module__)
    assert _word(id(f) + LAY.func_qualname) == id(f.__qualname__)
    for off, attr in ((LAY.co_filename, "co_filename"), (LAY.co_name, "co_name"), (LAY.co_qualname, "co_qualname")):
        assert _word(id(code) + off) == id(getattr(code, attr))
    assert ctypes.c_int.from_address(id(code) + LAY.co_firstlineno).value == code.co_firstlineno
    s = "a name"
    assert ctypes.c_ssize_t.from_address(id(s) + LAY.str_length).value == len(s)
    assert ctypes.string_at(id(s) + LAY.str_ascii_data, len(s)) == s.encode()
    assert sys.getsizeof("") - 1 == LAY.str_ascii_data
    d = {"k": 1}
    keys = _word(id(d) + LAY.ma_keys)
    assert keys and _word(id(d) + LAY.ma_values) == 0
    assert ctypes.c_ssize_t.from_address(keys + LAY.dk_nentries).value == 1
    from cowprof.heapmap import preheader_sizes

    assert preheader_sizes() == (LAY.gc_head, LAY.managed_preheader)


def test_this_process_is_found_verified_and_read():
    with Memory(os.getpid()) as mem:
        interp = find_interpreter(os.getpid(), mem)
        assert interp.version == sys.version_info[:3]
        assert interp.symbols["PyFloat_Type"] == id(float) and interp.symbols["PyType_Type"] == id(type)
        assert read_str(mem, interp, id(Outer.Inner.__qualname__)) == "Outer.Inner"
        assert read_str(mem, interp, id("caf\xe9 \u20ac")) == "caf\xe9 \u20ac"
        assert read_str(mem, interp, id(3.5)) is None  # not a str
        from cowprof.procfs import read_maps

        writable = np.array([(m.start, m.end) for m in read_maps(os.getpid()) if m.writable], dtype=np.uint64)
        types = TypeTable(mem, interp, writable)
        import collections

        cands = [id(float), id(Outer.Inner), id(collections.OrderedDict), id(type), id(3.5), 0x10]
        assert types.resolve(np.array(cands, dtype=np.uint64)).tolist() == [True, True, True, True, False, False]
        for tp in (float, Outer.Inner, collections.OrderedDict, type):
            assert types.get(id(tp)).name == heapmap._type_name(tp)
        assert types.get(id(Outer.Inner)).preheader == sys.getsizeof(Outer.Inner()) - Outer.Inner().__sizeof__()


def test_a_wrong_layout_is_refused():
    with Memory(os.getpid()) as mem:
        interp = find_interpreter(os.getpid(), mem)
        addrs = dict(interp.symbols)
        addrs["PyFloat_Type"] = addrs["PyLong_Type"]  # what a wrong symbol table or layout would give
        with pytest.raises(UnsupportedTarget, match="expected object layout"):
            _verified(os.getpid(), mem, interp.path, addrs)


def test_not_an_elf_file():
    with tempfile.TemporaryFile() as f:
        f.write(b"#!/bin/sh\n" + b"\0" * 100)
        f.flush()
        with pytest.raises(elf.NotElf):
            elf.read_symbols(f.fileno(), frozenset({"Py_Version"}))
