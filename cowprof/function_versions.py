"""3.12: function versions given in the master, so that workers do not write them.

A specialized call checks the callee's version (``func_version``). CPython 3.13+ give every function
one when it is created; 3.12 gives one only to functions made by a ``def`` or ``lambda`` that ran
its bytecode, and the others (made by ``types.FunctionType``, or whose ``__code__``,
``__defaults__``, ``__kwdefaults__`` or ``__annotations__`` was set: decorators, code generators,
dataclasses' and attrs' generated methods) get theirs at the first specialized call to them. In a
pre-fork worker that call writes the master's function object, and its page is copied.

:func:`assign` gives them that version in the master instead, from the counter the interpreter
takes it from, exactly as the interpreter would have (``_native.version_functions``). Because that
counter is read through internal headers, :func:`check` first proves at run time that this
interpreter draws versions from it: a fresh unversioned function, called through one call site
until the call is specialized, must get the counter's value and move it by one.
"""
from __future__ import annotations

import functools
import sys
import types
from typing import Any

from cowprof import _env

__all__ = ["ENV_SWITCH", "assign", "check"]

ENV_SWITCH = "COWPROF_VERSION_FUNCTIONS"
_CALLS = 32  # 3.12 specializes a call after 2 runs of it; a margin for a busier backoff


def _native() -> Any:
    try:
        from cowprof import _native as native
    except ImportError:
        return None
    return native if hasattr(native, "version_functions") else None


def _call(func: Any) -> None:
    func()


@functools.cache
def check() -> str | None:
    """None when the interpreter versions functions from the counter cowprof reads; else why not
    (also on 3.13+, which need none of this). Checked once per process."""
    native = _native()
    why: str | None
    if sys.version_info[:2] != (3, 12):
        why = "only CPython 3.12 versions functions at their first specialized call"
    elif native is None or native.function_version_counter() is None:
        why = "the native module of this build cannot read the function version counter"
    else:
        probe = types.FunctionType((lambda: None).__code__, {})
        before = native.function_version_counter()
        if native.function_version(probe) != 0 or not before:
            why = "a new function already had a version, or the counter ran out"
        else:
            for _ in range(_CALLS):
                _call(probe)
            got, after = native.function_version(probe), native.function_version_counter()
            why = None if (got, after) == (before, before + 1) else (
                f"the interpreter gave version {got} (counter {before} -> {after}): not from this counter")
    return why


def assign() -> tuple[int, str | None]:
    """Versions every unversioned function now (``COWPROF_VERSION_FUNCTIONS=0`` turns it off).
    Returns (functions versioned, why none were: None when the step ran)."""
    if not _env.flag(ENV_SWITCH, True):
        return 0, "not requested"
    why = check()
    if why is not None:
        return 0, why
    native = _native()
    assert native is not None
    return int(native.version_functions() or 0), None
