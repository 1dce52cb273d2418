"""Attribution gives the same tables from a format 3 heap map as from a format 2 one of the same heap
(issue 17): the master of a synthetic app (tests/attribution_apps.py) writes its map in both formats
from one walk, and by type, by cause and by function are computed from each on the same page scan
(by cause: on the same bytes of memory, read once, as the live processes keep writing a few pages)."""
from __future__ import annotations

import numpy as np
import pytest

from attribution_apps import App, app_python
from cowprof import attribution, functions, heapmap
from cowprof.heapmap import HeapMap
from cowprof.memreader import MemReader
from cowprof.remote.target import Memory, find_interpreter
from cowprof.pages import scan
from cowprof.tree import find_tree

pytestmark = pytest.mark.skipif(app_python() is None, reason="the synthetic apps need CPython 3.12+")


def _both_maps(app: App, old_dir: str) -> tuple[HeapMap, HeapMap]:
    new = heapmap.find_heapmap(app.master)
    old = heapmap.find_heapmap(app.master, directory=old_dir)
    assert (new.format_version, old.format_version) == (3, 2)
    for field in ("addr", "size", "type", "type_names", "type_preheader"):
        assert np.array_equal(getattr(new, field), getattr(old, field)), field
    return new, old


class _ReadOnce:
    """A reader factory for ``attribution.attribute``: each page request is read from the process
    the first time and replayed the next, so two attributions see the same memory."""

    def __init__(self) -> None:
        self.pages: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, pid: int) -> _ReadOnce.Reader:
        return _ReadOnce.Reader(self, pid)

    class Reader:
        def __init__(self, store: _ReadOnce, pid: int) -> None:
            self.store, self.pid, self.real = store, pid, None

        def read_pages(self, addrs: np.ndarray, out: np.ndarray, page_size: int) -> np.ndarray:
            key = (self.pid, np.asarray(addrs, dtype=np.uint64).tobytes())
            if key not in self.store.pages:
                self.real = self.real or MemReader(self.pid)
                ok = self.real.read_pages(addrs, out, page_size)
                self.store.pages[key] = (out.copy(), ok.copy())
            data, ok = self.store.pages[key]
            out[...] = data
            return ok.copy()

        def close(self) -> None:
            if self.real is not None:
                self.real.close()


def _tables(a: attribution.Attribution) -> dict:
    d = a.to_dict()
    del d["seconds"]
    return d


def test_by_type_and_by_cause_are_the_same_from_both_formats(tmp_path):
    with App("strhash", n=60_000, old_format_dir=str(tmp_path / "format2")) as app:
        new, old = _both_maps(app, str(tmp_path / "format2"))
        report = scan(find_tree(app.master), keep_addresses=True)
        memory = _ReadOnce()
        from_new = attribution.attribute(report, new, causes=True, open_reader=memory)
        from_old = attribution.attribute(report, old, causes=True, open_reader=memory)
    assert memory.pages  # the causes were read from the processes
    assert from_new.causes_error is None, from_new.causes_error
    assert all(w.copied_bytes > 1 << 20 and dict(w.types).get("str", 0) > w.copied_bytes / 2
               for w in from_new.workers)  # the tables hold something to compare
    assert _tables(from_new) == _tables(from_old)


def test_by_function_is_the_same_from_both_formats(tmp_path):
    with App("functions", old_format_dir=str(tmp_path / "format2")) as app:
        new, old = _both_maps(app, str(tmp_path / "format2"))
        report = scan(find_tree(app.master), keep_addresses=True)
        with Memory(app.master) as mem:
            interp = find_interpreter(app.master, mem)
            from_new = functions.by_function(report, new, mem, interp)
            from_old = functions.by_function(report, old, mem, interp)
    assert any("hot_0" in f.name for f, _b in from_new.functions)
    assert (from_new.functions, from_new.modules, from_new.code_bytes, from_new.unnamed_code_bytes) == (
        from_old.functions, from_old.modules, from_old.code_bytes, from_old.unnamed_code_bytes)
