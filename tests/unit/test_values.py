"""The plain value classes that replace dataclasses on the start-up path (cowprof._values), and
the threads a scan reads with (cowprof._parallel)."""
from __future__ import annotations

import copy
import pickle
import threading
import time

import pytest

from cowprof import _parallel
from cowprof.pages import PageReport, RegionPages
from cowprof.procfs import Mapping, MemCounters, Stat
from cowprof.tree import Tree


def test_frozen_values_compare_hash_show_and_copy_like_frozen_dataclasses():
    m = Mapping(0x1000, 0x3000, "rw-p", 0, "00:00", 0, "")
    assert m == Mapping(0x1000, 0x3000, "rw-p", 0, "00:00", 0, "") and hash(m) == hash(Mapping(*m))
    assert m != m.replace(end=0x2000) and m.replace(end=0x2000).size == 0x1000
    assert repr(Tree(10, (11, 12))) == "Tree(master=10, workers=(11, 12))"
    assert pickle.loads(pickle.dumps(m)) == m and copy.copy(m) == m
    with pytest.raises(AttributeError):
        m.start = 5  # type: ignore[misc]
    assert MemCounters(rss=3, private_clean=1, private_dirty=2).uss == 3 and MemCounters().swap == 0
    st = Stat(1, "x", "Z", 0, 5, 0, 0)
    assert st.zombie and st.flags == 0 and st.memory_state == (5, 0, 0, 0, 0)


def test_mutable_values_compare_and_show_their_fields_only():
    a, b = RegionPages(1, 2, 3), RegionPages(1, 2, 3)
    assert a == b and a != RegionPages(1, 2, 4) and repr(a) == "RegionPages(shared_bytes=1, copied_bytes=2, new_bytes=3)"
    with pytest.raises(TypeError):
        hash(a)
    c = a.replace(new_bytes=9)
    assert (a.new_bytes, c.new_bytes) == (3, 9)
    with pytest.raises(AttributeError):
        a.colour = 1  # type: ignore[attr-defined]


def test_report_equality_ignores_the_address_arrays():
    d = {"version": 1, "taken_at": 1.0, "privileged": False, "mode": "exclusive-bit", "page_size": 4096,
         "scan_seconds": 0.1, "gone": [],
         "master": {"pid": 10, "started_at": 0.0, "rss_bytes": 1, "pss_bytes": 1, "uss_bytes": 1},
         "workers": [{"pid": 11, "started_at": 0.0, "rss_bytes": 1, "pss_bytes": 1, "uss_bytes": 1,
                      "shared_bytes": 0, "copied_bytes": 0, "new_bytes": 0}]}
    a, b = PageReport.from_dict(d), PageReport.from_dict(d)
    a.workers[0].copied_addrs = object()  # type: ignore[assignment]
    assert a == b and "copied_addrs" not in repr(a)
    assert a.replace(taken_at=2.0).taken_at == 2.0 and a.taken_at == 1.0


def test_in_threads_keeps_order_and_hands_back_errors():
    seen = set()

    def job(i):
        seen.add(threading.get_ident())
        if i == 3:
            raise ValueError(i)
        return i * i

    out = _parallel.in_threads([lambda i=i: job(i) for i in range(8)], threads=3)
    assert [r for ok, r in out if ok] == [i * i for i in range(8) if i != 3]
    assert not out[3][0] and isinstance(out[3][1], ValueError)
    assert _parallel.in_threads([], threads=3) == []


def test_in_threads_raises_what_first_raises_after_the_jobs_stop():
    done = []

    def first():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _parallel.in_threads([lambda i=i: (time.sleep(0.005), done.append(i)) for i in range(50)], first=first,
                             threads=2)
    assert len(done) < 50  # the helper stopped taking jobs
    assert not [t for t in threading.enumerate() if t.name.startswith("cowprof-read")]  # and was joined
