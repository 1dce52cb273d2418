"""A master whose child writes pages it shares only through the allocator or the specializer.

Run as a script by tests/integration/test_residue_cow.py (never imported into pytest):
    python residue_heap.py {pools|code|caches|malloc|consts|late|hugepages|keys} {on|off}

- ``pools``: the heap holds hundreds of pymalloc pools with free blocks (two of every three small
  tuples freed); the child then allocates tuples of the same size class. ``on`` prepares with the
  allocator fill (the default), ``off`` with ``fill_free_blocks=False``.
- ``code``: 1,500 functions whose code objects sit in holes spread over many pools, each running
  an instruction the specializer cannot specialize (an attribute of an object with
  ``__getattr__``), so every call writes its code object; the child calls each of them. ``on``
  relocates the hot code (cowprof.hotcode) before preparing, ``off`` does not.

- ``caches``: 8,000 attribute names made at run time and looked up on 64 classes, so that only
  the type attribute cache holds them; the child looks up as many other names, and each entry it
  replaces frees a name of the master's. ``on`` prepares with ``release_caches=True`` (the
  default), ``off`` with ``release_caches=False``.

- ``malloc``: thousands of free glibc malloc chunks between live ``bytes`` objects of 600–2,000
  bytes (too big for pymalloc); the child makes as many of the same sizes. ``on`` prepares with
  the malloc fill (the default), ``off`` with ``COWPROF_FILL_MALLOC=0``.

- ``consts``: 3,000 functions returning constants (a float, a str, bytes, a nested tuple), run in
  the master before it prepares, so that 3.14 has specialized their loads as LOAD_CONST_MORTAL;
  the child calls each of them. ``on`` prepares by default (the loads settled to
  LOAD_CONST_IMMORTAL), ``off`` with ``COWPROF_SETTLE_CONST_LOADS=0``.

- ``late``: after ``prepare_fork`` the master makes and frees bytes of 20 sizes (untracked by the GC) (as a server's
  master does between preparing and forking), leaving partly used pools of each; the child makes
  as many. ``on`` fills them right before the fork (``COWPROF_FILL_BEFORE_FORK=1``, opt-in), ``off`` with
  ``COWPROF_FILL_BEFORE_FORK=0``.

- ``hugepages``: an 8 MiB buffer (a malloc'd mapping of its own); the child asks the kernel to
  collapse each 2 MiB range inside it into a huge page (``MADV_COLLAPSE``, what khugepaged does on
  its own schedule to a range a process has partly written), which copies the whole range. ``on``
  prepares by default (the mappings advised ``MADV_NOHUGEPAGE``: the kernel refuses), ``off`` with
  ``COWPROF_NO_HUGEPAGES=0``. The child reports the ``madvise`` results.

- ``keys``: 3,000 classes, then one instance of each (side by side on few pages); the child
  materializes each instance's ``__dict__``, which counts the key table its class's instances
  share, one table on nearly every page of the classes. ``on`` prepares by default (the tables
  immortal), ``off`` with ``COWPROF_IMMORTAL_SHARED_KEYS=0``.

Protocol: after the child's workload the master prints ``READY <master> <child>`` and waits for a
line on stdin (the test scans the tree meanwhile), then prints one JSON line and exits.
"""
from __future__ import annotations

import gc
import json
import os
import sys

import cowprof
from cowprof import hotcode

N_TUPLES = 300_000
N_FUNCS = 1500


class Lenient:
    """Attribute loads on it go through __getattr__: LOAD_ATTR never specializes."""

    def __getattr__(self, name: str) -> int:
        return 1


def pools_heap() -> list:
    a, b = "left", "right"
    keep = [(a, b) for _ in range(N_TUPLES)]  # a new 2-tuple each time, no new items
    del keep[::3], keep[::2]  # frees two of every three: holes in every pool of the class
    return keep


def pools_child(_heap: object) -> None:
    a, b = "up", "down"
    fresh = [(a, b) for _ in range(60_000)]
    assert len(fresh) == 60_000


def _function_source(i: int) -> str:
    return (f"def f{i}(o):\n    t = 0\n" + "".join(f"    t += o.a{j}\n" for j in range(4)) +
            f"    return t + {i}\n")


def same_class_tuple_len(obj: object) -> int:
    """A tuple length whose tuples fall in the pymalloc size class of ``obj`` (layouts differ by
    version: 3.14 tuples cache their hash)."""
    want = (sys.getsizeof(obj) + 15) // 16
    return next(n for n in range(1, 64) if (sys.getsizeof(tuple(range(n))) + 15) // 16 == want)


def code_heap() -> list:
    probe = {}
    exec(_function_source(0), {}, probe)
    n_items = same_class_tuple_len(probe["f0"].__code__)
    fill = [tuple(range(n_items)) for _ in range(N_FUNCS * 12)]
    del fill[::12]  # one hole in twelve: code objects made next land all over these pools
    namespace: dict = {}
    for i in range(N_FUNCS):
        exec(_function_source(i), namespace)
    funcs = [namespace[f"f{i}"] for i in range(N_FUNCS)]
    return [fill, funcs]


def call_all(heap: list, times: int = 1) -> None:
    o = Lenient()
    for _ in range(times):
        for f in heap[1]:
            f(o)


def code_child(heap: list) -> None:
    call_all(heap, 20)


N_NAMES = 8000
# the cache's slot is the type's version tag mixed with the name's address (3.12+): names looked up
# on many classes land in as many different slots
LOOKED = [type(f"Looked{k}", (), {}) for k in range(64)]


def caches_heap() -> list:
    keep = []
    for i in range(N_NAMES):
        getattr(LOOKED[i % len(LOOKED)], f"master_attribute_{i}", None)  # then only the cache holds it
        keep.append((i, -i))  # spreads the names over many pages
    return keep


def caches_child(heap: list) -> None:
    for i in range(N_NAMES):
        getattr(LOOKED[i % len(LOOKED)], f"child_attribute_{i}", None)


N_CHUNKS = 6000


def malloc_heap() -> list:
    made = [bytes(600 + (i * 37) % 1400) for i in range(2 * N_CHUNKS)]
    return made[::2]  # every other one freed: a free chunk between two live ones


def malloc_child(heap: list) -> None:
    heap.append([bytes(600 + (i * 37) % 1400) for i in range(N_CHUNKS)])


N_CONST_FUNCS = 3000


def consts_heap() -> list:
    namespace: dict = {}
    exec("".join(f"def c{i}():\n    return ({i}.5, 'a b {i}', b'x {i}', ({i}, (2, 3.5)))\n"
                 for i in range(N_CONST_FUNCS)), namespace)
    funcs = [namespace[f"c{i}"] for i in range(N_CONST_FUNCS)]
    for f in funcs:
        f()
    return funcs


def consts_child(heap: list) -> None:
    for _ in range(5):
        for f in heap:
            f()


def late_after_prepare() -> list:
    made = [bytes(16 * n) for n in range(1, 21) for _ in range(3000)]
    return made[::2]  # every other one freed: partly used pools of 20 size classes


def late_child(heap: list) -> None:
    heap.append([bytes(16 * n) for n in range(1, 21) for _ in range(1500)])


HUGE = 2 << 20
MADV_COLLAPSE = 25  # linux/mman.h, kernel 6.1+


def hugepages_heap() -> bytearray:
    return bytearray(b"h" * (4 * HUGE))


def hugepages_child(heap: bytearray) -> list[int]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = ctypes.addressof((ctypes.c_char * len(heap)).from_buffer(heap))
    first = (start + HUGE - 1) // HUGE * HUGE
    errnos = []
    for addr in range(first, start + len(heap) - HUGE + 1, HUGE):
        errnos.append(0 if libc.madvise(addr, HUGE, MADV_COLLAPSE) == 0 else ctypes.get_errno())
    return errnos


N_CLASSES = 3000


def keys_heap() -> list:
    classes = [type(f"Keyed{i}", (), {"__init__": _set_attributes}) for i in range(N_CLASSES)]
    return [cls() for cls in classes]


def _set_attributes(self: object) -> None:
    self.a = 1  # type: ignore[attr-defined]
    self.b = 2  # type: ignore[attr-defined]


def keys_child(heap: list) -> int:
    return len([vars(obj) for obj in heap])


def main() -> None:
    scenario, mode = sys.argv[1], sys.argv[2]
    relocation = None
    if scenario == "pools":
        heap = pools_heap()
        report = cowprof.prepare_fork(heapmap=False, fill_free_blocks=(mode == "on"))
        child_work = pools_child
    elif scenario == "malloc":
        heap = malloc_heap()
        os.environ["COWPROF_FILL_MALLOC"] = "1" if mode == "on" else "0"
        report = cowprof.prepare_fork(heapmap=False)
        child_work = malloc_child
    elif scenario == "consts":
        heap = consts_heap()
        os.environ["COWPROF_SETTLE_CONST_LOADS"] = "1" if mode == "on" else "0"
        report = cowprof.prepare_fork(heapmap=False)
        child_work = consts_child
    elif scenario == "late":
        os.environ["COWPROF_FILL_BEFORE_FORK"] = "1" if mode == "on" else "0"
        report = cowprof.prepare_fork(heapmap=False)
        heap = late_after_prepare()
        child_work = late_child
    elif scenario == "hugepages":
        heap = hugepages_heap()
        os.environ["COWPROF_NO_HUGEPAGES"] = "1" if mode == "on" else "0"
        report = cowprof.prepare_fork(heapmap=False)
        child_work = hugepages_child
    elif scenario == "keys":
        heap = keys_heap()
        os.environ["COWPROF_IMMORTAL_SHARED_KEYS"] = "1" if mode == "on" else "0"
        report = cowprof.prepare_fork(heapmap=False)
        child_work = keys_child
    elif scenario == "caches":
        heap = caches_heap()
        report = cowprof.prepare_fork(heapmap=False, release_caches=(mode == "on"))
        child_work = caches_child
    else:
        heap = code_heap()
        call_all(heap, 3)
        if mode == "on":
            from cowprof import allocator

            result = hotcode.relocate(lambda: call_all(heap),
                                      before_copy=lambda: (gc.collect(), allocator.fill_free_blocks()))
            relocation = result.to_dict()
            call_all(heap, 3)
        report = cowprof.prepare_fork(heapmap=False)
        child_work = code_child
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        cowprof.after_fork()
        os.write(done_w, json.dumps(child_work(heap)).encode())
        os.read(go_r, 1)
        os._exit(0)
    child_result = json.loads(os.read(done_r, 1 << 16))
    sys.stdout.write(f"READY {os.getpid()} {pid}\n")
    sys.stdout.flush()
    sys.stdin.readline()
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"child_status": status, "filler_bytes": report.filler_bytes,
                      "malloc_filler_bytes": report.malloc_filler_bytes, "malloc_fill_skipped": report.malloc_fill_skipped,
                      "fill_skipped": report.fill_skipped, "relocation": relocation,
                      "immortalize_skipped": report.immortalize_skipped,
                      "const_loads_settled": report.const_loads_settled, "child_result": child_result,
                      "no_hugepages_bytes": report.no_hugepages_bytes,
                      "no_hugepages_skipped": report.no_hugepages_skipped}))


if __name__ == "__main__":
    main()
