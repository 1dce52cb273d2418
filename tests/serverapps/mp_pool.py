"""multiprocessing fixture: a ``fork`` Pool whose tasks read a catalog built in the parent.

    python mp_pool.py --mode cowprof --workers 2 --tasks 40 --copies 20

Builds ``--copies`` copies of the fixed catalog as Python objects, applies the fork recipe of
``--mode`` (``baseline`` none; ``gc-freeze`` the ``gc`` documentation's: ``gc.disable()`` first,
``gc.freeze()`` before the pool, ``gc.enable()`` as the pool initializer; ``cowprof`` docs/servers.md's:
``cowprof.recipes.prepare_parent()`` before the pool, ``after_fork`` registered for the children),
creates a ``fork`` Pool and prints ``READY <parent pid> <worker pids...>``. Then it reads commands
from stdin: ``run N`` maps N tasks over the pool (each reads every product and review) and prints
``DONE <answers> <distinct worker pids>``; end of input closes the pool and exits. The caller
scans the tree between commands, while the workers still live.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import sys

import catalog_data

DATA: list[dict] = []


def task(n: int) -> tuple[int, int]:
    return os.getpid(), (catalog_data.read_records(DATA) + n) % 1_000_003


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("baseline", "gc-freeze", "cowprof"), default="baseline")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--copies", type=int, default=20)
    args = p.parse_args()
    if args.mode == "gc-freeze":
        gc.disable()
    DATA.extend(catalog_data.records(args.copies))
    initializer = None
    if args.mode == "cowprof":
        from cowprof.recipes import prepare_parent

        print(f"cowprof: {prepare_parent().summary()}", file=sys.stderr, flush=True)
    elif args.mode == "gc-freeze":
        gc.freeze()
        initializer = gc.enable
    with mp.get_context("fork").Pool(args.workers, initializer=initializer) as pool:
        children = [w.pid for w in pool._pool]  # noqa: SLF001 - the pool's own processes, for the caller
        print(f"READY {os.getpid()} {' '.join(map(str, children))}", flush=True)
        for line in sys.stdin:
            word, _, count = line.partition(" ")
            if word != "run" or not count.strip().isdigit():
                print(f"ERROR unknown command {line.strip()!r}", flush=True)
                continue
            answers = pool.map(task, range(int(count)), chunksize=1)
            print(f"DONE {len(answers)} {len({pid for pid, _ in answers})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
