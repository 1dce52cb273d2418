"""cowprof: copy-on-write memory profiler and fixer for Python pre-fork servers.

Fix: ``prepare_fork()`` in the master right before forking, ``after_fork()`` in each child.
Measure and show: the ``cowprof`` command (``cowprof --help``).
"""
from cowprof.prepare import PrepareReport, after_fork, disable_gc_until_fork, prepare_fork

__version__ = "0.1.0"
__all__ = ["PrepareReport", "prepare_fork", "after_fork", "disable_gc_until_fork", "__version__"]
