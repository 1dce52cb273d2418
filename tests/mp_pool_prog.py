"""A multiprocessing Pool whose workers read a shared heap and stay alive to be measured.

    python mp_pool_prog.py {fork|forkserver} {cowprof|baseline} WORKERS READY_DIR STOP_FILE

fork: this process builds the heap (tests/mp_heap.py), prepares it with
cowprof.recipes.prepare_parent (cowprof mode) and forks the pool. forkserver: the fork server
preloads the heap module and, in cowprof mode, cowprof.forkserver (cowprof.recipes.forkserver_context).
Prints one JSON line when the pool is done. The test scans the workers' parent meanwhile.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    method, mode, workers, ready_dir, stop_file = sys.argv[1:6]
    n = int(workers)
    from mp_tasks import read_and_wait

    if method == "fork":
        import mp_heap  # noqa: F401 - the heap the children share
        if mode == "cowprof":
            from cowprof.recipes import prepare_parent
            prepare_parent()
        ctx = multiprocessing.get_context("fork")
    elif mode == "cowprof":
        from cowprof.recipes import forkserver_context
        ctx = forkserver_context(["mp_heap"])
    else:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["mp_heap"])
    with ctx.Pool(n) as pool:
        pids = pool.starmap(read_and_wait, [(ready_dir, n, stop_file)] * n)
    print(json.dumps({"pids": sorted(pids)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
