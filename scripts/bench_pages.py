#!/usr/bin/env python3
"""Benchmark of cowprof.pages.scan: one full classification of a master and its forked workers.

Starts tests/forktree_prog.py (a master that fills an anonymous buffer of ``--master-mb`` MiB, then
forks ``--workers`` workers that each copy ``--write-pages`` pages and touch ``--new-pages`` fresh
ones), then times ``scan()`` ``--repeat`` times in each mode. Prints one line per mode with the
best and median seconds (wall and, for a loaded machine, CPU time of this process) and the seconds
per GiB resident scanned (the RSS of all processes of the tree; target: at most 0.25 s/GiB). Needs
root for the PFN mode (it is skipped otherwise). Also prints the CPU cost of splitting the mappings
into regions (``pages.region_ranges``, which reads libraries' ELF program headers for their
``.bss``) for this process (numpy and cowprof loaded) and the master: with the headers cached, and
cold (cache cleared).

    .venv/py3.12/bin/python scripts/bench_pages.py [--master-mb 1024 --workers 4 --repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from forktree import ForkTree  # noqa: E402

from cowprof import elf, pages, procfs  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from cowprof.tree import find_tree  # noqa: E402

GIB = 1 << 30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--master-mb", type=float, default=1024)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--write-pages", type=int, default=2048, help="pages each worker copies (default 8 MiB)")
    ap.add_argument("--new-pages", type=int, default=2048, help="fresh pages each worker touches")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    with ForkTree(workers=args.workers, master_mb=args.master_mb, write_pages=args.write_pages,
                  new_pages=args.new_pages, timeout=300) as t:
        setup = time.perf_counter() - t0
        tree = find_tree(t.master_pid)
        rss = sum(procfs.read_smaps_rollup(p).rss for p in (tree.master, *tree.workers))
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus, tree: master {args.master_mb:g} MiB + "
              f"{args.workers} workers, RSS of the tree {rss / GIB:.2f} GiB (setup {setup:.1f} s)")
        modes = [False]
        if procfs.kpagecount_readable() and procfs.pfns_visible():
            modes.insert(0, True)
        for priv in modes:
            times, cpu = [], []
            for _ in range(args.repeat):
                c0 = time.process_time()
                rep = scan(tree, privileged=priv)
                cpu.append(time.process_time() - c0)
                times.append(rep.scan_seconds)
            best, med = min(times), statistics.median(times)
            w = rep.workers[0]
            print(f"mode {rep.mode:13s}: best {best:.3f} s, median {med:.3f} s for {1 + len(rep.workers)} processes; "
                  f"{best / (rss / GIB):.3f} s/GiB resident (median {med / (rss / GIB):.3f}); "
                  f"CPU best {min(cpu):.3f} s, median {statistics.median(cpu):.3f} s "
                  f"= {min(cpu) / (rss / GIB):.3f} s/GiB; "
                  f"worker copied {w.copied_bytes >> 20} MiB, new {w.new_bytes >> 20} MiB, "
                  f"shared {w.shared_bytes >> 20} MiB")
        if hasattr(pages, "region_ranges"):  # cowprof before the .bss split has none
            for pid in (os.getpid(), tree.master):
                region_split(pid, args.repeat)
    return 0


def region_split(pid: int, repeat: int) -> None:
    """CPU time of ``pages.region_ranges`` for one process: median of ``repeat`` batches of 100."""
    maps = procfs.read_maps(pid)
    warm, cold = [], []
    for _ in range(repeat):
        elf.clear_cache()
        c0 = time.process_time()
        pages.region_ranges(maps, pid)
        cold.append(time.process_time() - c0)
        c0 = time.process_time()
        for _ in range(100):
            pages.region_ranges(maps, pid)
        warm.append((time.process_time() - c0) / 100)
    print(f"region split of PID {pid} ({len(maps)} mappings): {statistics.median(warm) * 1e6:.0f} µs CPU "
          f"with the headers cached, {statistics.median(cold) * 1e6:.0f} µs cold (median of {repeat})")


if __name__ == "__main__":
    sys.exit(main())
