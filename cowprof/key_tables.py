"""What workers would write into the master's dict key tables, done in the master (3.12+).

Two writes, both into key tables that outlive any one dict, so the heap walk does them instead
(``_native.walk``'s ``shared_keys_refcnt`` and ``version_keys``):

* **Shared tables' counts.** The instances of a class keep their attribute values inline and share
  one key table, the type's ``ht_cached_keys``, which is reference-counted apart from the objects:
  each time an instance's attributes become a dict of their own (``obj.__dict__``, ``vars(obj)``,
  ``copy.copy``, Django's ``cached_property``) the count goes up, and down when that dict is freed.
  Key tables have an immortal count the interpreter never changes (that of its static empty
  table); the walk gives it to the shared table of every heap type. Such a table is never freed:
  the type owning it is immortal too after the walk.
* **Versions.** The specializer gives a module's globals table and a class's shared table a version
  (``dk_version``, from the interpreter's counter) the first time it specializes code that depends
  on it (``LOAD_GLOBAL``, module attributes, methods of instances with inline values). The walk
  gives each table that has none the next version, as the interpreter would.

Both are read through internal headers (``native/interp_state.c``), so each is first proved at run
time: materializing and freeing the dict of a fresh class's instance must move its table's count
by one, and must leave it alone once the table has the immortal count (:func:`check_counts`); a
fresh module's globals table must get the counter's next value when a ``LOAD_GLOBAL`` of it is
specialized (:func:`check_versions`).
"""
from __future__ import annotations

import functools
import sys
import types
from typing import Any

from cowprof import _env

__all__ = ["ENV_COUNTS", "ENV_VERSIONS", "check_counts", "check_versions", "walk_options"]

ENV_COUNTS = "COWPROF_IMMORTAL_SHARED_KEYS"
ENV_VERSIONS = "COWPROF_VERSION_KEYS"
_CALLS = 32  # a LOAD_GLOBAL is specialized after 2 runs; a margin for a busier backoff


def _native() -> Any:
    try:
        from cowprof import _native as native
    except ImportError:
        return None
    return native if hasattr(native, "keys_refcount") and native.keys_refcount({}) is not None else None


def _unavailable() -> str | None:
    if sys.version_info < (3, 12):
        return "immortal objects need CPython 3.12+"
    if _native() is None:
        return "the native module of this build cannot read key tables"
    return None


def _probe_class() -> type:
    class Probe:
        def __init__(self) -> None:
            self.a = 1
            self.b = 2

    Probe()  # the first instance gives the class its shared key table
    return Probe


def _count_moves(native: Any, cls: type) -> tuple[int | None, int | None, int | None]:
    """The shared table's count before, while an instance's dict exists, and after it is freed."""
    before = native.keys_refcount(cls)
    obj = cls()
    vars(obj)  # materializes the instance's dict, which references the shared table
    during = native.keys_refcount(cls)
    del obj
    return before, during, native.keys_refcount(cls)


@functools.cache
def check_counts() -> str | None:
    """None when this interpreter leaves a shared key table with the immortal count alone; else
    why not. Checked once per process."""
    why = _unavailable()
    if why is not None:
        return why
    native = _native()
    immortal = native.keys_refcount({})
    before, during, after = _count_moves(native, _probe_class())
    if before is None or (during, after) != (before + 1, before):
        return f"an instance's dict did not count the shared table ({before} -> {during} -> {after})"
    probe = _probe_class()
    native.immortalize_shared_keys(probe, immortal)
    moves = _count_moves(native, probe)
    if moves != (immortal, immortal, immortal):
        return f"the interpreter changed an immortal shared table's count ({immortal} -> {moves})"
    return None


@functools.cache
def check_versions() -> str | None:
    """None when this interpreter versions key tables from the counter cowprof reads; else why
    not. Checked once per process."""
    why = _unavailable()
    if why is not None:
        return why
    native = _native()
    globals_: dict[str, Any] = {"__builtins__": __builtins__, "value": 1}
    read = types.FunctionType(compile("def read():\n    return value\n", "<cowprof probe>", "exec").co_consts[0],
                              globals_)
    before = native.keys_version_counter()
    if native.keys_version(globals_) != 0 or not before:
        return "a new globals table already had a version, or the counter ran out"
    for _ in range(_CALLS):
        read()
    got, after = native.keys_version(globals_), native.keys_version_counter()
    if (got, after) != (before, before + 1):
        return f"the interpreter gave version {got} (counter {before} -> {after}): not from this counter"
    return None


def walk_options() -> tuple[dict[str, Any], str | None]:
    """The walk's keyword arguments for the steps that passed their check and are not turned off
    (``COWPROF_IMMORTAL_SHARED_KEYS=0``, ``COWPROF_VERSION_KEYS=0``), and why a step is not taken
    (``"; "``-joined), or None. Run it before the collection: its probes leave garbage behind."""
    options: dict[str, Any] = {}
    skipped = []
    counts = check_counts() if _env.flag(ENV_COUNTS, True) else "not requested"
    if counts is None:
        options["shared_keys_refcnt"] = int(_native().keys_refcount({}))
    else:
        skipped.append(f"shared counts: {counts}")
    versions = check_versions() if _env.flag(ENV_VERSIONS, True) else "not requested"
    if versions is None:
        options["version_keys"] = True
    else:
        skipped.append(f"versions: {versions}")
    return options, "; ".join(skipped) or None
