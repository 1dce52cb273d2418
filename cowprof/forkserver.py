"""Preload module for multiprocessing's ``forkserver`` start method: importing it in the fork server
prepares that process's heap (:func:`cowprof.recipes.prepare_parent`) before it forks any child.

With ``forkserver`` (the default start method on Linux since Python 3.14) your program does not fork
the workers: a separate fork server does, from the modules named in ``set_forkserver_preload``, which
it imports in order before forking its first child. Name your modules first and this one last::

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["myapp.model", "cowprof.forkserver"])
    with ctx.Pool(4) as pool:
        ...

(:func:`cowprof.recipes.forkserver_context` does exactly this.) The children get
:func:`cowprof.after_fork` through ``os.register_at_fork``. Imported anywhere but in a fork server's
preload step, the module warns and prepares nothing: preparing a process that goes on running your
program would make everything it has loaded immortal for no benefit.

Note that the fork server ignores preload modules that fail to import (an ``ImportError``):
``cowprof snapshot <fork server pid>`` shows whether its children share its heap.
"""
from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

from cowprof.prepare import PrepareReport
from cowprof.recipes import prepare_parent

__all__ = ["REPORT", "in_fork_server_preload"]


def in_fork_server_preload() -> bool:
    """Whether this import runs inside ``multiprocessing.forkserver.main`` (the preload step)."""
    frame: FrameType | None = sys._getframe(1)
    suffix = os.path.join("multiprocessing", "forkserver.py")
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_code.co_filename.endswith(suffix):
            return True
        frame = frame.f_back
    return False


REPORT: PrepareReport | None = None
"""What preparing the fork server did (None where this module was imported elsewhere)."""

if in_fork_server_preload():
    REPORT = prepare_parent()
else:
    warnings.warn("cowprof.forkserver prepares only a multiprocessing fork server: name it last in "
                  "set_forkserver_preload() instead of importing it", RuntimeWarning, stacklevel=2)
