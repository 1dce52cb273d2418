"""cowprof: copy-on-write memory profiler and fixer for Python pre-fork servers."""
__version__ = "0.1.0"
