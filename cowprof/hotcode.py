"""Hot code relocation: copy the code objects that serving keeps writing into densely packed memory.

CPython 3.11+ specializes bytecode in place, in the code object (``co_code_adaptive``): every
specializable instruction has an inline cache whose first entry is a counter. An instruction that
cannot be specialized (or keeps missing) decrements its counter on every execution, forever, so
however long the warm-up, each worker writes to every code object it runs, and the kernel copies
the whole 4 KiB page around it. Measured on a stock Django project (3.12, 200 requests after two
warm-up rounds, then 10 or 60 rounds): ~480 code objects are still written per worker, ~200 KB of
code spread over ~360 pages. Setting those counters to the "unreachable" value CPython 3.13 has
(0xFFFF) does not help either: the interpreter stores the unchanged value back, which is a write.

What can be changed is where those code objects are. :func:`relocate`:

1. hashes the adaptive bytecode (``code._co_code_adaptive``) of every function's code object and
   of the code objects nested in their constants, runs one warm-up round (the caller's
   ``run_round``), and calls the code objects whose bytecode changed *hot*;
2. fills the partly used pymalloc pools (:func:`cowprof.allocator.fill_free_blocks`), so the copies
   made next are allocated side by side in fresh pools instead of in holes all over the heap;
3. copies each hot code object (``code.replace()``; a nested one's parent gets a copy whose
   constants hold the nested copies) and points every function that used it at the copy
   (``function.__code__ = copy``).

The copies start unspecialized: the caller runs its warm-up again so the master specializes them
before the fork. Cost: the copies (the hot code's size, ~200 KB on that Django project) stay in
the master; the originals are freed unless something else references them. Functions frozen by
an earlier ``gc.freeze()`` are seen on 3.14+ only (the GC's visit lists its permanent generation
there, not on 3.12/3.13); running frames and generators keep the code they started with.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import types
from array import array
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CodeKey", "Fingerprint", "RelocationResult", "code_key", "relocate", "unavailable"]

#: what names a code object across processes and restarts: (co_filename, co_firstlineno, co_qualname)
CodeKey = tuple[str, int, str]

#: cowprof's own code: never hot (the master runs its preparation after the fingerprint, and its
#: per-worker hooks are a few small functions)
_OWN_CODE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True)
class RelocationResult:
    """What :func:`relocate` did."""

    hot: int = 0
    """Code objects whose adaptive bytecode changed during the probe round, plus the learned ones."""
    learned: int = 0
    """Of those, code objects the probe round did not write but workers of earlier masters did."""
    copied: int = 0
    """Code objects copied (the hot ones plus their enclosing code objects)."""
    functions: int = 0
    """Functions now running a copy."""
    bytes: int = 0
    """``sys.getsizeof`` of the copies."""
    seconds: float = 0.0
    skipped: str | None = None
    """Why nothing was relocated, or None."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.skipped:
            return f"hot code not relocated: {self.skipped}"
        learned = f" ({self.learned:,} learned from earlier workers)" if self.learned else ""
        return (f"hot code: {self.hot:,} code objects written by warm-up{learned}, {self.copied:,} copied "
                f"({self.bytes / 1024:,.0f} KiB) for {self.functions:,} functions in {self.seconds:.2f} s")


def unavailable() -> str | None:
    """Why relocation cannot run here, or None."""
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} has no CPython code objects"
    if not hasattr(types.CodeType, "_co_code_adaptive"):
        return f"CPython {sys.version_info[0]}.{sys.version_info[1]} does not specialize bytecode in place"
    if sys.version_info < (3, 12):
        return "relocation is used and tested on CPython 3.12+ (3.11 quickens code only after 8 calls)"
    return None


def code_key(code: types.CodeType) -> CodeKey:
    return (code.co_filename, code.co_firstlineno, code.co_qualname)


def _adaptive_hash(code: types.CodeType) -> int:
    return hash(code._co_code_adaptive)  # type: ignore[attr-defined]


def _all_functions() -> list[types.FunctionType]:
    """Every function object the GC tracks: from the native module's visit where it is built (a
    list of every tracked object, then a type test each, took 0.28 s on a heap of 4M instances)."""
    try:
        from cowprof import _native
    except ImportError:  # a source checkout without the build
        _native = None  # type: ignore[assignment]
    if _native is not None and hasattr(_native, "functions"):
        return _native.functions()
    return [o for o in gc.get_objects() if type(o) is types.FunctionType]


class _CodeGraph:
    """Every live Python function, the code objects they run and the code objects nested in those.

    Built to leave little garbage behind: freed small objects leave empty pools in the master that
    workers would write again. So the code objects go into a list (and a set, by value: equal code
    objects are interchangeable), their hashes into an ``array`` (no int objects kept), and parents
    are found when needed by scanning constants, not kept in a map of ids.
    """

    def __init__(self) -> None:
        self.functions = _all_functions()
        seen: set[types.CodeType] = set()
        self.codes: list[types.CodeType] = []
        stack = [f.__code__ for f in self.functions]
        while stack:
            code = stack.pop()
            if code in seen:
                continue
            seen.add(code)
            self.codes.append(code)
            stack.extend(c for c in code.co_consts if type(c) is types.CodeType)
        self.hashes = array("q", (_adaptive_hash(c) for c in self.codes))

    def changed(self) -> set[types.CodeType]:
        """Code objects whose adaptive bytecode changed since the snapshot, cowprof's own excepted
        (the snapshot itself runs this module; ``prepare_fork`` runs after the fingerprint)."""
        return {c for c, h in zip(self.codes, self.hashes)
                if _adaptive_hash(c) != h and not c.co_filename.startswith(_OWN_CODE)}

    def with_parents(self, hot: set[types.CodeType]) -> set[types.CodeType]:
        """``hot`` plus every code object that holds one of them as a constant, transitively."""
        out = set(hot)
        grew = True
        while grew:
            grew = False
            for code in self.codes:
                if code not in out and any(type(c) is types.CodeType and c in out for c in code.co_consts):
                    out.add(code)
                    grew = True
        return out


class Fingerprint:
    """The adaptive bytecode of every function's code object, hashed in the master right before
    the fork, so that a worker can tell which code objects it has written since (learned hot code:
    :mod:`cowprof.preload` records them at the worker's exit, and the next master relocates them
    with the warm-up's own). Holds the code objects and an ``array`` of hashes, nothing else."""

    def __init__(self) -> None:
        self._graph = _CodeGraph()
        self._graph.functions = []  # the code objects and their hashes are all a worker needs

    def __len__(self) -> int:
        return len(self._graph.codes)

    def retake(self) -> None:
        """Hashes the same code objects again, in place (no object kept): for bytecode the master
        itself changed after the fingerprint (the walk's settled constant loads on 3.14)."""
        graph = self._graph
        for i, code in enumerate(graph.codes):
            graph.hashes[i] = _adaptive_hash(code)

    def written(self) -> list[CodeKey]:
        """Keys of the code objects whose adaptive bytecode changed since the fingerprint."""
        return sorted(code_key(c) for c in self._graph.changed())


def _copy_all(todo: set[types.CodeType]) -> dict[types.CodeType, types.CodeType]:
    """Copies of the code objects ``todo``; a copied parent's constants hold its children's copies.
    Children are copied first (iteratively: nesting can be deep)."""
    copies: dict[types.CodeType, types.CodeType] = {}
    for root in sorted(todo, key=lambda c: (c.co_filename, c.co_firstlineno, c.co_qualname)):
        stack = [(root, False)]
        while stack:
            code, children_done = stack.pop()
            if code in copies:
                continue
            nested = [c for c in code.co_consts if type(c) is types.CodeType and c in todo]
            if not children_done and any(c not in copies for c in nested):
                stack.append((code, True))
                stack.extend((c, False) for c in nested if c not in copies)
                continue
            if nested:
                consts = tuple(copies[c] if type(c) is types.CodeType and c in todo else c for c in code.co_consts)
                copies[code] = code.replace(co_consts=consts)
            else:
                copies[code] = code.replace()
    return copies


def relocate(run_round: Callable[[], Any], *, before_copy: Callable[[], Any] | None = None,
             learned: Collection[CodeKey] = ()) -> RelocationResult:
    """Finds the code objects ``run_round()`` writes and moves them to fresh, dense memory (see the
    module doc), with those named in ``learned`` (what workers of earlier masters wrote, see
    :class:`Fingerprint`). ``before_copy`` runs right before the copies are made (the caller fills
    the allocator's free blocks there). Never raises for an exception of ``run_round``: it is
    reported as ``skipped``."""
    started = time.perf_counter()
    why = unavailable()
    if why:
        return RelocationResult(skipped=why)
    graph = _CodeGraph()
    try:
        run_round()
    except Exception as exc:  # noqa: BLE001 - the probe round is the caller's warm-up
        return RelocationResult(skipped=f"probe round failed: {type(exc).__name__}: {exc}",
                                seconds=round(time.perf_counter() - started, 4))
    hot = graph.changed()
    wanted = set(learned)
    learned_hot = {c for c in graph.codes if c not in hot and code_key(c) in wanted} if wanted else set()
    hot |= learned_hot
    if not hot:
        return RelocationResult(skipped="the probe round wrote no code object",
                                seconds=round(time.perf_counter() - started, 4))
    todo = graph.with_parents(hot)
    if before_copy is not None:
        before_copy()
    copies = _copy_all(todo)
    functions = 0
    for func in graph.functions:
        copy = copies.get(func.__code__)
        if copy is None:
            continue
        try:
            func.__code__ = copy
        except (ValueError, TypeError):  # a closure that no longer matches: leave that function alone
            continue
        functions += 1
    size = sum(sys.getsizeof(c) for c in copies.values())
    return RelocationResult(hot=len(hot), learned=len(learned_hot), copied=len(copies), functions=functions,
                            bytes=size, seconds=round(time.perf_counter() - started, 4))
