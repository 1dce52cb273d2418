"""Exit finalization: run, at interpreter exit, the finalizers that heap preparation would skip.

CPython runs an object's finalizer when it frees the object: io objects flush and close (and so
write what they buffered), ``__del__`` methods run (``NamedTemporaryFile`` deletes its file),
suspended generators run their ``finally`` blocks. An immortal object is never freed. So the heap
walk of :func:`cowprof.prepare_fork` leaves mortal every object whose type has a finalizer and the
dicts, cells and class instances that hold one directly (a module's globals, a dict of files, an
object with a file attribute): those are freed and finalized exactly when they would be without
cowprof, during the run or at exit.

What remains is an object with a finalizer that an immortal object keeps alive: a file in a list,
in a dict that is itself in a dict, in a cycle the frozen heap never collects, or a file a worker
creates after the fork and stores into a prepared container. Without cowprof it would be
freed at exit, when the modules are torn down. This module finalizes, at exit, every object with a
finalizer that is still alive (those the walk saw, held here by weak reference where the type allows
it, and the GC-tracked ones created since), so that none of them is lost:

- when: after every ``atexit`` handler (``logging.shutdown`` and the like can still write) and
  before the modules are torn down. CPython clears ``sys.__interactivehook__`` at the very start of
  module teardown, with ``sys.modules`` and every module's globals still intact (Python/pylifecycle.c,
  ``finalize_modules_delete_special``; tests/integration/test_exit_finalization.py checks the moment
  on each supported version). :func:`install` puts a small wrapper there that calls the hook it
  replaced and does the work when CPython drops it. If something drops it while the program runs,
  an ``atexit`` handler takes over (then it runs before handlers registered earlier);
- order: an object before the objects it holds (a ``TextIOWrapper`` before its buffer before its
  ``FileIO``, a ``GzipFile`` before its file object), through plain containers up to a few levels;
  objects that hold each other in the order they were created (the outer one first);
- how: the way CPython finalizes an object it frees (``PyObject_CallFinalizer``): once, errors
  reported as unraisable, never raised, and freeing the object later does not run it again.

The interpreter's own standard streams are left to CPython, which flushes them itself. A forked
child inherits all of this and does the same at its own normal exit (``sys.exit``, returning from
main: gunicorn's sync workers end that way), so data buffered before the fork is written by both
processes, as without cowprof. ``os._exit`` runs no finalizer, with or without cowprof.
"""
from __future__ import annotations

import atexit
import gc
import heapq
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cowprof import _native

__all__ = ["exit_order", "finalize_all", "install", "register"]

EDGE_DEPTH = 3
"""Levels of plain containers looked through between two objects with finalizers."""
EDGE_BUDGET = 256
"""Objects looked at per object with a finalizer when ordering (bounds the cost of big containers)."""
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE
_CONTAINERS = (dict, list, tuple, set, frozenset)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.CodeType, types.BuiltinFunctionType,
           types.MethodType, types.FrameType)

# weak references to the objects with a finalizer the walks left mortal; the objects themselves
# for the few types that take no weak reference
_weak: list[weakref.ref[Any]] = []
_strong: list[Any] = []
_state: dict[str, Any] = {"finished_in": None, "fallback_in": None}


def register(objects: Iterable[Any]) -> int:
    """Remembers objects with a finalizer (from the heap walk) for :func:`finalize_all`; returns how
    many were new."""
    known = {id(o) for o in _registered()}
    added = 0
    for obj in objects:
        if id(obj) in known or type(obj) is _ExitHook:
            continue
        known.add(id(obj))
        try:
            _weak.append(weakref.ref(obj))
        except TypeError:  # e.g. a class with __slots__ and __del__ but no __weakref__
            _strong.append(obj)
        added += 1
    return added


def _registered() -> list[Any]:
    alive = [o for o in (r() for r in _weak) if o is not None]
    return alive + _strong


class _ExitHook:
    """Stands in ``sys.__interactivehook__``: calling it calls the hook it replaced; when CPython
    drops it at exit, it finalizes."""

    __slots__ = ("hook", "__weakref__")

    def __init__(self, hook: Callable[[], Any] | None) -> None:
        self.hook = hook

    def __call__(self) -> Any:
        return self.hook() if self.hook is not None else None

    def __del__(self) -> None:
        if sys.is_finalizing():
            finalize_all()
        else:  # replaced or deleted while the program runs: never close files now
            _fall_back_to_atexit()


def _fall_back_to_atexit() -> None:
    if _state["fallback_in"] != os.getpid():
        _state["fallback_in"] = os.getpid()
        atexit.register(finalize_all)


def install() -> bool:
    """Arranges for :func:`finalize_all` to run at exit (see the module doc); False if it already was."""
    current = sys.__dict__.get("__interactivehook__")
    if type(current) is _ExitHook:
        return False
    sys.__interactivehook__ = _ExitHook(current)
    return True


def _interpreter_streams() -> set[int]:
    """ids of sys.stdin/stdout/stderr, their originals and the buffers and raw files under them."""
    found: set[int] = set()
    for name in ("stdin", "stdout", "stderr", "__stdin__", "__stdout__", "__stderr__"):
        stream = sys.__dict__.get(name)
        for _ in range(3):
            if stream is None:
                break
            found.add(id(stream))
            inner = getattr(stream, "buffer", None)
            stream = inner if inner is not None else getattr(stream, "raw", None)
    return found


def _candidates() -> list[Any]:
    skip = _interpreter_streams()
    out = []
    young = gc.get_objects()  # the tracked objects created since the walk (not the frozen heap)
    for obj in _registered() + _native.unfinalized(young):
        if id(obj) in skip or type(obj) is _ExitHook:
            continue
        skip.add(id(obj))
        out.append(obj)
    return out


def _held(obj: Any, index: dict[int, int], opaque: dict[type, bool]) -> list[int]:
    """Indexes (in ``index``) of the objects ``obj`` holds, directly or through plain containers.
    ``opaque`` caches, per type, whether its instances are not looked through."""
    found: list[int] = []
    seen = {id(obj)}
    frontier = [obj]
    budget = EDGE_BUDGET
    for _ in range(EDGE_DEPTH):
        deeper = []
        for ref in gc.get_referents(*frontier):
            key = id(ref)
            if key in seen:
                continue
            seen.add(key)
            if key in index:
                found.append(index[key])  # its own holdings are its own edges
            else:
                tp = type(ref)
                closed = opaque.get(tp)
                if closed is None:
                    closed = opaque[tp] = _opaque(tp)
                if not closed and (tp not in _CONTAINERS or len(ref) <= EDGE_BUDGET):
                    deeper.append(ref)
            budget -= 1
            if budget <= 0:
                return found
        if not deeper:
            break
        frontier = deeper
    return found


def _opaque(tp: type) -> bool:
    """Not looked through: anything but plain containers and instances of classes (types, modules,
    functions, code, frames: what leads to everything)."""
    if tp in _CONTAINERS:
        return False
    return issubclass(tp, _OPAQUE) or not tp.__flags__ & _HEAPTYPE


def exit_order(objects: Sequence[Any]) -> list[Any]:
    """``objects`` ordered so that each comes before those it holds, and otherwise in the given
    order (about the order they were created in). Objects holding each other (a cycle: gzip's
    GzipFile and its write buffer) come in the given order: the outer object first."""
    index = {id(o): i for i, o in enumerate(objects)}
    opaque: dict[type, bool] = {}
    holds = [sorted({j for j in _held(o, index, opaque) if j != i}) for i, o in enumerate(objects)]
    components = _strongly_connected(holds)
    component_of = [0] * len(objects)
    for c, members in enumerate(components):
        members.sort()
        for i in members:
            component_of[i] = c
    # Kahn's algorithm on the components, the one with the first object first when several are free
    targets: list[set[int]] = [set() for _ in components]
    holders = [0] * len(components)
    for i, held in enumerate(holds):
        for j in held:
            a, b = component_of[i], component_of[j]
            if a != b and b not in targets[a]:
                targets[a].add(b)
                holders[b] += 1
    free = [(members[0], c) for c, members in enumerate(components) if holders[c] == 0]
    heapq.heapify(free)
    order: list[Any] = []
    while free:
        _, c = heapq.heappop(free)
        order.extend(objects[i] for i in components[c])
        for b in targets[c]:
            holders[b] -= 1
            if holders[b] == 0:
                heapq.heappush(free, (components[b][0], b))
    return order


def _strongly_connected(edges: list[list[int]]) -> list[list[int]]:
    """The strongly connected components of the graph (Tarjan's algorithm, without recursion)."""
    n = len(edges)
    number = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(n):
        if number[root] >= 0:
            continue
        work = [(root, 0)]
        while work:
            v, k = work.pop()
            if k == 0:
                number[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if k < len(edges[v]):
                work.append((v, k + 1))
                w = edges[v][k]
                if number[w] < 0:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], number[w])
                continue
            if low[v] == number[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component.append(w)
                    if w == v:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return components


def finalize_all() -> int:
    """Finalizes every object with a finalizer that is still alive, holders first (see the module
    doc); once per process. Returns how many finalizers ran."""
    if _state["finished_in"] == os.getpid():
        return 0
    _state["finished_in"] = os.getpid()
    objects = _candidates()
    problem = None
    try:
        objects = exit_order(objects)
    except Exception as exc:  # noqa: BLE001 - finalize anyway, in registration order
        problem = exc
    ran = sum(1 for obj in objects if _native.call_finalizer(obj))
    del objects
    if problem is not None:
        raise problem  # reported as unraisable by whoever called us at exit
    return ran
