"""Regions on a real tree: anonymous memory merged into a library's .bss mapping is ``python``.

tests/bss_prog.py loads a library built here with gcc (a 5-page .bss) and maps anonymous pages
right after it; the kernel merges them into the .bss mapping, as it does with pymalloc arenas next
to extension modules in real servers. The workers write every page of both. Only the .bss (as far
as the library's program headers say) is ``file``; the pages after it are ``python``. Baseline:
the region rule before the headers were read (the whole anonymous mapping after a library's data
is ``file``) puts all the adjacent pages in ``file``, which fails the same assertions.
"""
from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from forktree import stop_master

from cowprof import elf, pages, procfs

P = procfs.PAGE_SIZE
PROG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bss_prog.py")
ADJACENT = 512  # pages after the .bss: far more than the interpreter's own .data/.bss copies
LIB_C = r"""
int cowtest_data = 42;                        /* .data: the writable file mapping */
static char bss_area[5 * 4096 + 123];         /* .bss: past the file, mapped anonymous */
char *cowtest_bss(void) { return bss_area; }
unsigned long cowtest_bss_size(void) { return sizeof bss_area; }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed to build the test library (the native extension needs one too)"
    d = tmp_path_factory.mktemp("bsslib")
    (d / "bsslib.c").write_text(LIB_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(d / "libcowbss.so"), str(d / "bsslib.c")],
                   check=True, capture_output=True, timeout=120)
    return str(d / "libcowbss.so")


class BssTree:
    def __init__(self, lib: str, workers: int = 2, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen([sys.executable, PROG, lib, "--workers", str(workers),
                                      "--adjacent-pages", str(ADJACENT), "--timeout", str(timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=os.path.dirname(PROG))
        self.workers: list[int] = []
        try:
            self._read(timeout + 5)
        except BaseException:
            stop_master(self.proc, self.workers)
            raise

    def _read(self, timeout: float) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf, deadline = b"", time.monotonic() + timeout
        while b"READY" not in buf or not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            data = os.read(self.proc.stdout.fileno(), 65536) if left > 0 and sel.select(left) else b""
            if not data or b"ERROR" in buf + data:
                err = ""
                if not data:  # it exited: say why
                    self.proc.wait(timeout=10)
                    err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"bss_prog failed: {(buf + data).decode(errors='replace')} {err[-2000:]}")
            buf += data
        sel.close()
        for line in buf.decode().splitlines():
            word, *rest = line.split()
            if word == "BSS":
                self.bss = (int(rest[0]), int(rest[1]))
            elif word == "ADJACENT":
                self.adjacent = (int(rest[0]), int(rest[1]))
            elif word == "READY":
                self.master, self.workers = int(rest[0]), [int(x) for x in rest[1:]]

    def __enter__(self) -> BssTree:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_master(self.proc, self.workers)


def _pages(lo: int, size: int) -> set[int]:
    return set(range(lo // P * P, lo + size, P))


def _region_at(ranges: list[tuple[int, int, int]], addrs: set[int]) -> dict[str, int]:
    """Pages of ``addrs`` per region name in ``ranges``."""
    out: dict[str, int] = {}
    for a in addrs:
        (r,) = [r for s, e, r in ranges if s <= a < e]
        out[pages.REGIONS[r]] = out.get(pages.REGIONS[r], 0) + 1
    return out


@pytest.mark.parametrize("privileged", [None, False], ids=["auto", "exclusive-bit"])
def test_anonymous_pages_after_a_librarys_bss_are_python(library, privileged):
    elf.clear_cache()
    with BssTree(library) as t:
        adj = _pages(*t.adjacent)
        maps = procfs.read_maps(t.master)
        (merged,) = [m for m in maps if m.start < t.adjacent[0] < m.end or m.start == t.adjacent[0]]
        # the .bss array's pages past the library's last file page are in the same anonymous mapping
        bss_anon = {a for a in _pages(*t.bss) if merged.start <= a}
        assert merged.path == "" and merged.start < t.adjacent[0] and len(bss_anon) >= 5, merged
        rep = pages.scan(t.master, privileged=privileged, keep_addresses=True)
        assert sorted(w.pid for w in rep.workers) == sorted(t.workers)
        for w in rep.workers:
            copied = set(np.asarray(w.copied_addrs).tolist())
            assert adj <= copied and bss_anon <= copied  # the workers wrote both
            # the adjacent pages are python, only the .bss (and the interpreter's data) is file
            assert w.regions["python"].copied_bytes >= len(adj) * P
            assert len(bss_anon) * P <= w.regions["file"].copied_bytes < len(adj) * P
            ranges = pages.region_ranges(procfs.read_maps(w.pid), w.pid)
            assert _region_at(ranges, adj) == {"python": len(adj)}
            assert _region_at(ranges, bss_anon) == {"file": len(bss_anon)}
