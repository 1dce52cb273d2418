"""Attributor (record --by): the saved heap map is read once and again only when its segments
change, the join layout is kept, an unchanged report reuses its result, the records read from the
master's memory are read for the newly copied pages only, and a failure is the sample's error."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cowprof import heapmap, procfs, remote
from cowprof.attribution import NoAttribution
from cowprof.attributor import Attributor
from cowprof.heapmap import HeapMap
from cowprof.memreader import MemoryAccessDenied
from cowprof.pages import PageReport
from cowprof.remote.heap import Found
from cowprof.remote.objects import TypeInfo
from conftest import master_dict, page_report, worker_dict

PS = 4096
BASE = 0x7F0000000000


def own_map(names: list[str], records: list[tuple[int, int, int]]) -> HeapMap:
    """A heap map of this very process (so it is current): (address, size, type index) records."""
    me = procfs.ProcessIdentity.read(os.getpid())
    return HeapMap(pid=me.pid, start_ticks=me.start_ticks, boot_id=me.boot_id, created_at=1.0,
                   addr=np.array([r[0] for r in records], dtype=np.uint64),
                   size=np.array([r[1] for r in records], dtype=np.uint32),
                   type=np.array([r[2] for r in records], dtype=np.uint32),
                   type_names=np.array(names), type_preheader=np.zeros(len(names), dtype=np.uint8))


def report(pages: dict[int, list[int]], *, master: int | None = None) -> PageReport:
    """Workers that copied the pages at ``BASE + i * PS`` for the ``i`` in ``pages[pid]``."""
    return page_report([worker_dict(pid, len(p) * PS) for pid, p in pages.items()],
                       master=master_dict(master or os.getpid()), page_size=PS,
                       copied_addrs={pid: [BASE + i * PS for i in p] for pid, p in pages.items()})


def page_records(type_index: int, pages: range) -> list[tuple[int, int, int]]:
    """One 4 KiB object per page."""
    return [(BASE + i * PS, PS, type_index) for i in pages]


def test_the_saved_map_is_read_once_and_again_when_a_segment_is_added(tmp_path):
    heapmap.save(own_map(["str", "float"], page_records(0, range(0, 8)) + page_records(1, range(8, 16))),
                 str(tmp_path))
    att = Attributor(os.getpid(), heapmap_dir=str(tmp_path))
    first = att.attribute(report({11: [0, 1, 2, 8]}))
    assert first.error is None and first.attribution is not None
    assert dict(first.attribution.workers[0].types) == {"str": 3 * PS, "float": PS}
    for pages in ([0, 1], [8, 9, 10], [3]):
        sa = att.attribute(report({11: pages}))
        assert sa.error is None and sa.attribution.workers[0].copied_bytes == len(pages) * PS
    assert att.map_loads == 1  # four samples, one read of the map
    # a repeat prepare_fork writes segment 1: what it says about pages 0..3 wins from now on
    heapmap.save(own_map(["dict"], page_records(0, range(0, 4))), str(tmp_path), seq=1)
    sa = att.attribute(report({11: [0, 1, 2, 8]}))
    assert dict(sa.attribution.workers[0].types) == {"dict": 3 * PS, "float": PS}
    assert att.map_loads == 2


def test_an_unchanged_report_reuses_the_by_type_result(tmp_path):
    heapmap.save(own_map(["str"], page_records(0, range(0, 8))), str(tmp_path))
    att = Attributor(os.getpid(), heapmap_dir=str(tmp_path))
    rep = report({11: [0, 1], 12: [2]})
    a = att.attribute(rep)
    # the sampler answers with the previous report (same page arrays) when nothing faulted
    b = att.attribute(rep.replace(taken_at=2.0))
    assert att.reused == 1 and b.attribution.taken_at == 2.0
    assert [w.to_dict() for w in b.attribution.workers] == [w.to_dict() for w in a.attribution.workers]
    att.attribute(report({11: [0, 1], 12: [2]}))  # a new scan: new arrays, computed again
    assert att.reused == 1


def test_without_a_map_and_memory_rights_the_sample_keeps_the_error(tmp_path, monkeypatch):
    def denied(rep, **kw):
        raise MemoryAccessDenied(rep.master.pid)

    monkeypatch.setattr(remote, "heapmap_from_memory", denied)
    att = Attributor(os.getpid(), heapmap_dir=str(tmp_path))  # an empty directory: no saved map
    sa = att.attribute(report({11: [0]}))
    assert sa.attribution is None and isinstance(sa.error, NoAttribution)
    assert "needs to read the master's memory" in str(sa.error) and "prepare_fork" in str(sa.error)


def _found(pages: np.ndarray, type_addr: int) -> Found:
    """What cowprof.remote would find: one object of the type at ``type_addr`` per page."""
    info = TypeInfo(addr=type_addr, name=f"T{type_addr:X}", module="app", flags=0, basicsize=16, itemsize=0,
                    preheader=0)
    return Found(start=pages.astype(np.uint64), size=np.full(pages.size, PS, dtype=np.uint64),
                 type=np.zeros(pages.size, dtype=np.int64), types=[info], pool_pages=int(pages.size))


def test_from_memory_only_the_newly_copied_pages_are_read(tmp_path, monkeypatch):
    reads: list[list[int]] = []

    def from_memory(rep, *, procfs_root="/proc", pages=None, interpreter=None):
        pages = np.asarray(pages, dtype=np.uint64)
        reads.append([(int(p) - BASE) // PS for p in pages])
        # pages below 4 hold objects of type A, the others of type B
        a, b = pages[pages < BASE + 4 * PS], pages[pages >= BASE + 4 * PS]
        fa, fb = _found(a, 0xA000), _found(b, 0xB000)
        fb.type[:] = 1
        found = Found(start=np.concatenate([fa.start, fb.start]), size=np.concatenate([fa.size, fb.size]),
                      type=np.concatenate([fa.type, fb.type]), types=fa.types + fb.types)
        return remote._remote_map(rep.master.pid, found, interpreter or object(), {}, 0)

    monkeypatch.setattr(remote, "heapmap_from_memory", from_memory)
    att = Attributor(os.getpid(), heapmap_dir=str(tmp_path))
    s1 = att.attribute(report({11: [0, 1], 12: [1]}))
    s2 = att.attribute(report({11: [0, 1, 5], 12: [1, 6]}))
    s3 = att.attribute(report({11: [0, 1, 5], 12: [1, 6]}))
    assert reads == [[0, 1], [5, 6]]  # the third sample copied nothing new: nothing read
    assert att.remote_pages == 4 and att.map_loads == 0
    assert dict(s1.attribution.workers[0].types) == {"TA000": 2 * PS}
    for s in (s2, s3):
        assert dict(s.attribution.workers[0].types) == {"TA000": 2 * PS, "TB000": PS}
        assert dict(s.attribution.workers[1].types) == {"TA000": PS, "TB000": PS}


def test_merge_remote_unifies_types_by_address_and_prefers_the_new_record():
    old = remote._remote_map(1, _found(np.array([BASE, BASE + PS], dtype=np.uint64), 0xA000), object(), {}, 0)
    new_found = _found(np.array([BASE + PS, BASE + 2 * PS], dtype=np.uint64), 0xB000)
    new_found.size[:] = 64  # re-read: the allocation at BASE + PS is now 64 bytes
    new = remote._remote_map(1, new_found, object(), {}, 0)
    merged = remote.merge_remote(old, new)
    assert merged.addr.tolist() == [BASE, BASE + PS, BASE + 2 * PS]
    assert merged.size.tolist() == [PS, 64, 64]
    assert [merged.type_names[t] for t in merged.type.tolist()] == ["TA000", "TB000", "TB000"]
    assert merged.type_names[-1] == remote.UNKNOWN_RECORD


def test_record_by_needs_valid_groupings(capsys):
    from cowprof.cli import main

    assert main(["record", "1", "-o", "/nonexistent/x", "--by", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_record_loop_writes_attribution_lines_and_warns_once(tmp_path, capsys):
    from cowprof.commands.record import record_loop
    from cowprof.record import RecordWriter, read_record
    from cowprof.sampler import Sample

    class Samples:
        stop_reason = "count"

        def __iter__(self):
            for i in range(3):
                yield Sample(index=i, time=1.0 + i, elapsed=float(i), lateness=0.0,
                             report=report({11: [0, 1]}), error=None)

    class Failing:
        def attribute(self, rep):
            from cowprof.attributor import SampleAttribution

            return SampleAttribution(None, None, NoAttribution(10, "no heap map and no ptrace rights"))

    path = tmp_path / "r.jsonl"
    with RecordWriter(path, target={"pid": 10}, attribution={"by": ["type"], "top": 5}) as w:
        assert record_loop(Samples(), w, attributor=Failing(), top=5) == "count"
        w.close("count")
    err = capsys.readouterr().err
    assert err == ("cowprof: sample 0 has no attribution: no heap map and no ptrace rights "
                   "(pages are still recorded)\n")
    rec = read_record(path)
    assert len(rec.reports) == 3 and all(s.attribution_error == "no heap map and no ptrace rights"
                                         for s in rec.samples)
