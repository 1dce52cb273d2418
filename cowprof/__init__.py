"""cowprof: copy-on-write memory profiler and fixer for Python pre-fork servers.

Fix: ``prepare_fork()`` in the master right before forking, ``after_fork()`` in each child.
Measure and show: the ``cowprof`` command (``cowprof --help``).

The fix's names load :mod:`cowprof.prepare` on first use, so the profiler's start-up (which never
prepares a heap) does not pay for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowprof.prepare import PrepareReport, after_fork, disable_gc_until_fork, prepare_fork

__version__ = "0.1.0"
__all__ = ["PrepareReport", "prepare_fork", "after_fork", "disable_gc_until_fork", "__version__"]
_FROM_PREPARE = frozenset(("PrepareReport", "prepare_fork", "after_fork", "disable_gc_until_fork"))


def __getattr__(name: str) -> Any:
    if name in _FROM_PREPARE:
        from cowprof import prepare

        value = getattr(prepare, name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'cowprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_PREPARE})
