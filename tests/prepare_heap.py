"""Builds a test heap, optionally prepares it, forks, and measures what a reading child copies.

Run as a script by tests (never imported into the pytest process, whose heap must stay mortal):
    python prepare_heap.py {prepare|baseline|freeze} N_OBJECTS_TARGET
Prints one JSON line: heap_bytes, child_dirty_growth_bytes, report (when prepared), child_status.
"""
from __future__ import annotations

import gc
import json
import os
import re
import sys

_DIRTY = re.compile(rb"^Private_Dirty:\s+(\d+) kB", re.M)


def private_dirty() -> int:
    with open("/proc/self/smaps_rollup", "rb") as f:
        return int(_DIRTY.search(f.read()).group(1)) * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Record:
    def __init__(self, i: int) -> None:
        self.ident = i + 100_000
        self.name = f"record-{i}"
        self.score = i * 0.25


def make_adder(k: int):
    def add(x: int) -> int:
        return x + k

    return add


def build(n: int) -> dict:
    """About n objects: instances (4 objects each), atomic dicts (4), tuples (3), str, float."""
    k = max(n // 15, 1)
    return {
        "records": [Record(i) for i in range(k)],
        "rows": [{"id": i + 200_000, "city": f"city-{i % 977}-{i}", "lat": i / 7.0} for i in range(k)],
        "pairs": [(f"key-{i}", i * 1.5) for i in range(k)],
        "words": [f"word-{i}-{'x' * (i % 13)}" for i in range(k)],
        "floats": [i * 0.001 for i in range(k)],
        "funcs": [make_adder(i) for i in range(1000)],
    }


def read_everything(heap: dict) -> float:
    """Touch every object the way request handlers do: attribute loads, iteration, calls."""
    total = 0.0
    for r in heap["records"]:
        total += r.score + len(r.name) + (r.ident & 1)
    for row in heap["rows"]:
        for key, value in row.items():
            total += len(key) if isinstance(value, str) else 0
        total += row["lat"]
    for key, value in heap["pairs"]:
        total += value + len(key)
    for w in heap["words"]:
        total += hash(w) & 1
    for f in heap["floats"]:
        total += f
    for fn in heap["funcs"]:
        total += fn(1)
    return total


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    gc.collect()
    before = rss()
    heap = build(n)
    gc.collect()
    heap_bytes = rss() - before
    report = None
    if mode == "prepare":
        import cowprof

        report = cowprof.prepare_fork().to_dict()
    elif mode == "freeze":
        gc.freeze()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if mode == "prepare":
            import cowprof

            cowprof.after_fork()
        start = private_dirty()
        read_everything(heap)
        read_everything(heap)
        gc.collect()
        grown = private_dirty() - start
        os.write(w, json.dumps({"grown": grown}).encode())
        os.close(w)
        sys.exit(0)  # a normal interpreter exit, finalization included
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    child = json.loads(data or b"{}")
    print(json.dumps({
        "heap_bytes": heap_bytes,
        "child_dirty_growth_bytes": child.get("grown"),
        "child_status": os.waitstatus_to_exitcode(status),
        "report": report,
    }))


if __name__ == "__main__":
    main()
