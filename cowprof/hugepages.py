"""Keep transparent huge pages off the heap the master shares with its workers.

With transparent huge pages on (``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``always``,
or ``madvise`` and memory advised ``MADV_HUGEPAGE``, as CPython 3.15 advises its pymalloc arenas),
the kernel's ``khugepaged`` thread collapses 2 MiB ranges of a process into huge pages in the
background. It does so in a worker for a range it has written a part of, and in the master for a
range it has written since the fork: the collapse copies every 4 KiB page of the range the
processes still shared, so sharing breaks in bulk, seconds after the fork and at random. Measured on
CPython 3.15: a worker that copied 8.5 MB gained 2.6 MB more once khugepaged had passed.

``keep_off_shared_heap()`` advises ``MADV_NOHUGEPAGE`` on the master's anonymous private writable
mappings (the heap, pymalloc arenas, large allocations) right before fork. The advice is a property
of the mappings, so the workers inherit it; huge pages the master already has stay (a worker's
write to one splits it and copies 4 KiB), and memory mapped after the fork gets the default policy.
It is given whatever the kernel's mode (a ``never`` can be changed while the servers run, and
``MADV_COLLAPSE`` collapses in any mode); it costs a system call per mapping, ~1-2 ms.
"""
from __future__ import annotations

import dataclasses
import os

from cowprof import procfs
from cowprof.errors import CowprofError


@dataclasses.dataclass(frozen=True)
class HugePageAdvice:
    """What ``keep_off_shared_heap`` advised."""

    bytes: int
    """Bytes of the mappings now advised ``MADV_NOHUGEPAGE``."""
    skipped: str | None
    """Why nothing (or not everything) was advised; None when every mapping was."""


def shared_heap_ranges(maps: list[procfs.Mapping]) -> list[tuple[int, int]]:
    """The anonymous private writable mappings (``[heap]``, unnamed, ``[anon:...]``): the memory a
    fork shares copy-on-write that khugepaged may collapse. Stacks and file mappings are left."""
    return [(m.start, m.end) for m in maps
            if m.writable and m.private and not m.file_backed
            and (m.path in ("", "[heap]") or m.path.startswith("[anon:"))]


def keep_off_shared_heap() -> HugePageAdvice:
    """Advise ``MADV_NOHUGEPAGE`` on this process's shared heap (see the module docstring)."""
    try:
        from cowprof import _alloc
    except ImportError as exc:
        return HugePageAdvice(0, f"cowprof._alloc is not built ({exc})")
    try:
        ranges = shared_heap_ranges(procfs.read_maps(os.getpid()))
    except CowprofError as exc:
        return HugePageAdvice(0, str(exc))
    advised, refused, err = _alloc.no_hugepages(ranges)
    if refused:
        return HugePageAdvice(advised, f"the kernel refused {refused} of {len(ranges)} mappings ({os.strerror(err)})")
    return HugePageAdvice(advised, None)
