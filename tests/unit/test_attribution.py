"""Attribution on synthetic heap maps and pages: the by-type split, the word classification, the
choice of the original page, the per-page split rule, the permission fallback, and the layout facts
(offsets) the classification relies on, checked against this interpreter with ctypes."""
from __future__ import annotations

import ctypes
import gc
import io
import json
import mmap
import os
import sys

import numpy as np
import pytest

from cowprof import attribution as att
from cowprof import heapmap, procfs
from cowprof.errors import BadInput, ProcessGone
from cowprof.heapmap import HeapMap
from cowprof.memreader import MemoryAccessDenied, MemReader
from cowprof.pages import PageReport
from cowprof.reporters import attribution as rep
from cowprof.reporters import jsonout
from conftest import master_dict, page_report, worker_dict

PS = 4096


def make_hm(records: list[tuple[int, int, str]], pre: dict[str, int], **extra) -> HeapMap:
    """A sorted heap map from (addr, size, type name) records; ``pre``: pre-header per type."""
    records = sorted(records)
    names = sorted({n for _a, _s, n in records} | set(pre))
    idx = {n: i for i, n in enumerate(names)}
    hm = HeapMap(pid=1, start_ticks=0, boot_id="", created_at=123.0,
                 addr=np.array([a for a, _s, _n in records], dtype=np.uint64),
                 size=np.array([s for _a, s, _n in records], dtype=np.uint32),
                 type=np.array([idx[n] for _a, _s, n in records], dtype=np.uint32),
                 type_names=np.array(names), type_preheader=np.array([pre.get(n, 0) for n in names], np.uint8))
    for k, v in extra.items():
        setattr(hm, k, v)
    return hm


def make_report(copied: dict[int, list[int]], master: int = 100) -> PageReport:
    """Workers that copied the pages at ``copied[pid]`` (their addresses, as a scan keeps them)."""
    return page_report([worker_dict(pid, len(a) * PS) for pid, a in copied.items()], master=master_dict(master),
                       page_size=PS, copied_addrs=copied)


# ------------------------------------------------------------------------------------ by type


def test_by_type_splits_pages_by_the_bytes_each_object_occupies():
    hm = make_hm([
        (0x10000, 24, "float"),  # widened to its 32-byte block
        (0x10020, 24, "float"),
        (0x10FF0, 48, "bytes"),  # 16 bytes on page 0x10000, 32 on page 0x11000
        (0x11100, 40, "Node"),  # widened to 48, but clamped at the next record: 32
        (0x11120, 100, "str"),  # widened to 112
        (0x30000, 64, "tuple"),  # on no copied page
    ], pre={"Node": 16})
    report = make_report({11: [0x11000, 0x10000, 0x20000]})
    [w] = att.by_type(report, hm)
    assert w.copied_bytes == 3 * PS
    assert dict(w.types) == {"float": 64, "bytes": 48, "str": 112, "Node": 32}
    assert [t for t, _b in w.types] == ["str", "float", "bytes", "Node"]  # largest first
    assert w.no_object_bytes == 3 * PS - 256


def test_by_type_object_spanning_many_pages_and_many_objects_per_page():
    recs = [(0x100000 + 32 * i, 24, "float") for i in range(256)]  # two full pages of floats
    recs.append((0x200000 - 16, 3 * PS + 32, "bytearray"))  # covers pages 0x200000..0x202000 fully
    hm = make_hm(recs, pre={})
    report = make_report({11: [0x100000, 0x101000, 0x200000, 0x201000, 0x202000]})
    [w] = att.by_type(report, hm)
    assert dict(w.types) == {"float": 2 * PS, "bytearray": 3 * PS}
    assert w.no_object_bytes == 0


def test_by_type_needs_the_copied_addresses():
    report = make_report({11: [0x1000]})
    report.workers[0].copied_addrs = None
    with pytest.raises(BadInput, match="keep_addresses"):
        att.by_type(report, make_hm([(0x1000, 16, "float")], pre={}))


# ------------------------------------------------------------------------- word classification


def classify(hm: HeapMap, addrs: list[int]) -> list[str]:
    codes = att._classify_words(att._layout(hm), np.array(addrs, dtype=np.uint64))
    return [att.CAUSES[c] for c in codes.tolist()]


def test_changed_words_are_classified_by_record_and_offset():
    hm = make_hm([
        (0x1000, 24, "float"),
        (0x2000, 40, "Node"),  # GC type: object at 0x2010
        (0x3000, 64, "__main__.C"),  # GC + managed dict/weakref: object at 0x3020
        (0x4000, 64, "str"),
        (0x5000, 56, "list"),  # list object (16 + 40)
        (0x6000, 64, "list"),  # a list's item buffer
    ], pre={"Node": 16, "__main__.C": 32, "list": 16})
    assert classify(hm, [0x1000, 0x1008, 0x1018]) == ["refcount", "other_field", "other_field"]
    assert classify(hm, [0x2000, 0x2008, 0x2010, 0x2018]) == ["gc_header", "gc_header", "refcount", "other_field"]
    assert classify(hm, [0x3000, 0x3008, 0x3010, 0x3018, 0x3020]) == [
        "other_field", "other_field", "gc_header", "gc_header", "refcount"]
    assert classify(hm, [0x4000, 0x4018, 0x4020]) == ["refcount", "str_hash", "other_field"]
    assert classify(hm, [0x5000, 0x5010, 0x6000, 0x6010]) == ["gc_header", "refcount", "other_field", "other_field"]
    assert classify(hm, [0x500, 0x1020, 0x7000]) == ["allocator", "allocator", "allocator"]


def test_buffer_records_inferred_or_taken_from_the_heap_map():
    recs = [(0x1000, 56, "list"), (0x2000, 64, "list"), (0x3000, 64, "dict"), (0x4000, 1184, "dict"),
            (0x5000, 216, "set"), (0x6000, 512, "set")]
    hm = make_hm(recs, pre={"list": 16, "dict": 16, "set": 16})
    assert att._layout(hm).buffer.tolist() == [False, True, False, True, False, True]
    flagged = make_hm(recs, pre={"list": 16, "dict": 16, "set": 16},
                      is_buffer=np.array([False, False, False, False, True, True]))
    assert att._layout(flagged).buffer.tolist() == [False, False, False, False, True, True]


needs_native = pytest.mark.skipif(sys.version_info < (3, 12), reason="the object layout comes from cowprof._native, "
                                  "which walks only on CPython 3.12+ (the 3.11 run is the profiler side)")


@needs_native
def test_object_layout_facts_hold_in_this_interpreter():
    """The layout a map records (from the native module's headers and measurements), read back with
    ctypes from live objects of this interpreter."""
    from cowprof import _native, heapmap
    
    lay = heapmap.object_layout(*heapmap.preheader_sizes())
    s = "attribution-%d" % os.getpid()
    h = hash(s)
    assert ctypes.c_ssize_t.from_address(id(s) + lay["str_hash_offset"]).value == h
    f = float(os.getpid()) + 0.25
    word = ctypes.c_uint64.from_address(id(f) + lay["refcount_offset"])
    before = word.value
    g = [f, f, f]  # three more references: the refcount word counts them
    assert word.value - before == 3 and len(g) == 3
    assert ctypes.c_void_p.from_address(id(f) + lay["type_offset"]).value == id(float)
    assert sys.getsizeof([]) - [].__sizeof__() == lay["gc_head"]
    assert lay["basicsize"]["dict"] == dict.__basicsize__
    tracked = [[]]
    assert gc.is_tracked(tracked)
    # the GC header is the gc_head bytes before the object: _gc_next is set only while tracked
    assert ctypes.c_uint64.from_address(id(tracked) - lay["gc_head"]).value != 0
    untracked = (1.5, "x")
    gc.collect()
    assert not gc.is_tracked(untracked)
    floats = [float(i) + 0.5 for i in range(64)]
    assert all(id(x) % lay["block_align"] == 0 for x in floats)
    info = _native.info()
    if sys.version_info >= (3, 14):  # the immortal scheme: 32-bit count + ob_flags in the same word
        assert info["immortal_refcnt"] == 3 << 30 and "ob_flags" in info["scheme"]
    else:
        assert info["immortal_refcnt"] == 0xFFFFFFFF


# ---------------------------------------------------------------------------------- by cause


class FakeReader:
    """Pages of one process from a dict address -> page bytes; missing pages are unreadable."""

    def __init__(self, pages: dict[int, bytes]) -> None:
        self.pages = pages
        self.closed = False

    def read_pages(self, addrs, out, page_size):
        ok = np.zeros(len(addrs), dtype=bool)
        rows = out.reshape(len(addrs), -1).view(np.uint8)
        for i, a in enumerate(np.asarray(addrs).tolist()):
            if a in self.pages:
                rows[i] = np.frombuffer(self.pages[a], dtype=np.uint8)
                ok[i] = True
        return ok

    def close(self):
        self.closed = True


def page(words: dict[int, int] | None = None, fill: int = 7) -> bytes:
    arr = np.full(PS // 8, fill, dtype=np.uint64)
    for off, v in (words or {}).items():
        arr[off // 8] = v
    return arr.tobytes()


P1, P2, P3, P4 = 0x10000, 0x11000, 0x12000, 0x13000
E_PRESENT = int(procfs.PM_PRESENT)
E_EXCL = int(procfs.PM_PRESENT | procfs.PM_EXCLUSIVE)


@pytest.fixture
def tree(monkeypatch):
    """Master 100 and workers 11, 12. Worker 11 copied P1..P4, worker 12 copied P3.

    P1: the master still shares it (original certain); 11 changed 3 refcounts and 1 GC header.
    P2: the master diverged (exclusive), worker 12 still shares the original; 11's page equals it.
    P3: everybody exclusive: the master's page is assumed original; one word outside any record.
    P4: the master has no page and nobody shares one: no original.
    """
    pagemaps = {
        100: {P1: E_PRESENT, P2: E_EXCL, P3: E_EXCL, P4: 0},
        11: {P1: E_EXCL, P2: E_EXCL, P3: E_EXCL, P4: E_EXCL},
        12: {P1: E_PRESENT, P2: E_PRESENT, P3: E_EXCL, P4: 0},
    }

    def fake_pagemap(pid, addrs, page_size, procfs_root):
        return np.array([pagemaps[pid].get(a, 0) for a in addrs.tolist()], dtype=np.uint64)

    monkeypatch.setattr(att, "_pagemap_at", fake_pagemap)
    monkeypatch.setattr(att, "_master_identity", lambda pid, root, required=True: procfs.ProcessIdentity(pid, 1))  # alive
    original = {P1: page(), P2: page(), P3: page(), P4: page()}
    memory = {
        100: {**original, P2: page({0: 99})},  # the master's own post-fork write on P2
        11: {P1: page({0x10: 1, 0x78: 2, 0x70: 3, 0x68: 4}), P2: page(), P3: page({0x800: 5}), P4: page()},
        12: {P1: page(), P2: page(), P3: page({0x10: 9})},
    }
    hm = make_hm([(P1 + 0x60 * i, 48, "Node") for i in range(4)] + [(P3, 48, "Node")], pre={"Node": 16})
    # Node records at P1+0x00, +0x60, +0xC0 (objects at +0x10, +0x70, +0xD0) and at P3 (object +0x10)
    report = make_report({11: [P1, P2, P3, P4], 12: [P3]})
    readers: dict[int, FakeReader] = {}

    def open_reader(pid):
        readers[pid] = FakeReader(memory[pid])
        return readers[pid]

    return report, hm, open_reader, readers


def test_by_cause_picks_originals_and_splits_pages_by_changed_words(tree):
    report, hm, open_reader, readers = tree
    attr = att.attribute(report, hm, causes=True, open_reader=open_reader)
    assert attr.causes_error is None and attr.has_causes
    w11, w12 = attr.workers
    assert w11.originals == {"master": PS, "sibling": PS, "master_assumed": PS, "none": PS}
    # P1: 0x10 and 0x70 are object starts (refcount), 0x68 the GC header of the object at 0x70,
    # 0x78 a field of it: 2 refcount, 1 GC, 1 other word -> 1/2, 1/4, 1/4 of the page.
    # P2 equals the sibling's original: identical. P3: 0x800 is on no record. P4: unknown.
    assert w11.causes == {"refcount": PS // 2, "gc_header": PS // 4, "str_hash": 0, "other_field": PS // 4,
                          "allocator": PS, "identical": PS, "unknown": PS}
    assert w11.changed_words == {"refcount": 2, "gc_header": 1, "str_hash": 0, "other_field": 1,
                                 "allocator": 1, "identical": 0, "unknown": 0}
    assert w12.originals == {"master": 0, "sibling": 0, "master_assumed": PS, "none": 0}
    assert w12.causes["refcount"] == PS and sum(w12.causes.values()) == PS
    assert all(r.closed for r in readers.values())
    assert attr.total_causes()[0] == ("refcount", PS // 2 + PS)


def test_without_memory_access_by_type_stays_and_the_error_says_what_is_needed(tree):
    report, hm, _open_reader, _readers = tree

    def denied(pid):
        raise MemoryAccessDenied(pid)

    attr = att.attribute(report, hm, causes=True, open_reader=denied)
    assert not attr.has_causes and attr.total_causes() is None
    assert "ptrace" in attr.causes_error and "root" in attr.causes_error
    assert "/proc/11/mem" in attr.causes_error or "/proc/100/mem" in attr.causes_error
    assert dict(attr.workers[0].types) == {"Node": 5 * 48}
    assert all(w.causes is None and w.originals is None for w in attr.workers)
    out = io.StringIO()
    rep.render(attr, by="cause", file=out)
    text = out.getvalue()
    assert "by cause unavailable" in text and "ptrace" in text and "Node" in text
    assert attr.total_causes() is None


def test_a_worker_that_exits_counts_as_unknown(tree):
    report, hm, open_reader, _readers = tree

    def gone_11(pid):
        if pid == 11:
            raise ProcessGone(11)
        return open_reader(pid)

    attr = att.attribute(report, hm, causes=True, open_reader=gone_11)
    w11 = attr.workers[0]
    assert w11.causes["unknown"] == w11.copied_bytes == 4 * PS
    assert attr.workers[1].causes["refcount"] == PS


# ------------------------------------------------------------------------- memory and pagemap


def test_memreader_reads_runs_and_reports_unreadable_pages():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    ps = mmap.PAGESIZE
    base = libc.mmap(None, 4 * ps, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        for i in range(4):
            ctypes.memset(base + i * ps, 0x10 + i, ps)
        assert libc.munmap(base + 2 * ps, ps) == 0  # a hole in the middle of a run
        addrs = np.array([base + i * ps for i in range(4)], dtype=np.uint64)
        out = np.zeros((4, ps), dtype=np.uint8)
        with MemReader(os.getpid()) as r:
            ok = r.read_pages(addrs, out, ps)
        assert ok.tolist() == [True, True, False, True]
        assert [int(out[i, 0]) for i in (0, 1, 3)] == [0x10, 0x11, 0x13]
        assert (out[3] == 0x13).all()
    finally:
        libc.munmap(base, 4 * ps)


def test_memreader_errors():
    with pytest.raises(ProcessGone):
        MemReader(2**22 + 12345, procfs_root="/nonexistent-proc")
    with MemReader(os.getpid()) as r, pytest.raises(ValueError):
        r.read_pages(np.array([0], dtype=np.uint64), np.zeros(10, dtype=np.uint8), PS)


def test_pagemap_at_reads_sparse_addresses():
    buf = np.ones((3, PS), dtype=np.uint8)  # touched: present
    first = (buf.ctypes.data + PS - 1) // PS * PS
    addrs = np.array([first, first + PS], dtype=np.uint64)
    entries = att._pagemap_at(os.getpid(), addrs, PS, "/proc")
    assert ((entries & procfs.PM_PRESENT) != 0).all()


# ------------------------------------------------------------------------------ heap map lookup


def test_missing_heapmap_is_a_one_line_bad_input(tmp_path):
    with pytest.raises(heapmap.NoHeapMap) as err:
        heapmap.find_heapmap(os.getpid(), directory=str(tmp_path))
    assert isinstance(err.value, BadInput) and err.value.exit_code == 2
    assert "prepare_fork" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------- JSON and rendering


def test_json_round_trip_and_rendering(tree):
    report, hm, open_reader, _readers = tree
    attr = att.attribute(report, hm, causes=True, open_reader=open_reader)
    d = json.loads(json.dumps(attr.to_dict()))
    assert d["version"] == att.VERSION and d["master"] == 100
    assert d["workers"][0]["types"] == [{"type": "Node", "bytes": 240}]
    assert d["workers"][0]["causes"]["unknown"] == PS
    back = att.Attribution.from_dict(d)
    assert back.total_types() == attr.total_types() and back.total_causes() == attr.total_causes()
    with pytest.raises(BadInput):
        att.Attribution.from_dict({"version": 99})
    out = io.StringIO()
    jsonout.render(attr, out, top=1)
    assert json.loads(out.getvalue())["workers"][0]["no_object_bytes"] == 4 * PS - 240
    for by, words in (("type", ["Node", "no object", "Of copied"]),
                      ("cause", ["refcount", "GC header", "identical content", "unknown original", "Words"])):
        out = io.StringIO()
        rep.render(attr, by=by, file=out)
        for w in words:
            assert w in out.getvalue(), (by, w, out.getvalue())
    with pytest.raises(ValueError):
        rep.render(attr, by="region", file=io.StringIO())


def test_top_n_folds_the_rest_into_other_types():
    recs = [(0x10000 + 64 * i, 48, f"T{i % 5}") for i in range(60)]
    attr = att.attribute(make_report({11: [0x10000]}), make_hm(recs, pre={}), causes=False)
    assert attr.causes_error == "not requested"
    assert {t for t, _b in attr.total_types()} >= {f"T{i}" for i in range(5)}
    d = attr.to_dict(top=2)
    w = d["workers"][0]
    assert len(w["types"]) == 2 and w["other_types_bytes"] == 60 * 48 - sum(t["bytes"] for t in w["types"])
    out = io.StringIO()
    rep.render(attr, by="type", top=2, file=out)
    assert "(other types: 3)" in out.getvalue()
