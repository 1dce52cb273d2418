"""The fork recipe: make the master's heap safe to share copy-on-write, then fork.

``prepare_fork()`` runs in the master right before it forks workers:

1. ``gc.collect()`` — drops garbage and (3.12+) clears the free lists, so workers don't inherit
   half-dead objects whose pages they would write while reusing them;
2. the native heap walk — every reachable object gets the immortal refcount (PEP 683), so the
   ``Py_INCREF``/``Py_DECREF`` a worker does on a read no longer writes to its page; exact ``str``
   objects get their hash cached and types get their version tag (both otherwise written lazily).
   Objects with a finalizer (io objects, ``__del__``, generators) and the objects holding them
   directly stay mortal; :mod:`cowprof.finalize` finalizes at exit those still alive. On 3.14 the
   loads of constants that are now immortal become ``LOAD_CONST_IMMORTAL`` (``LOAD_CONST_MORTAL``
   increfs them without looking). The key table each class's instances share gets the immortal
   count, and it and each module's globals table a version (:mod:`cowprof.key_tables`). On
   3.12, functions without a version get the one the interpreter would give them at their first
   specialized call (:mod:`cowprof.function_versions`);
3. ``gc.freeze()`` — moves everything tracked to the permanent generation, so the workers'
   collections never write GC headers of the master's objects;
4. releasing what a worker would free or reuse in pages it shares: the attribute names only the
   type attribute cache holds (a worker replacing the entry frees the name) and, once everything
   is frozen, the dead objects parked in CPython's free lists since step 1 (a worker's next tuple,
   list or dict would be built in them);
5. filling the free blocks of partly used pymalloc pools and the arenas' empty pools
   (:mod:`cowprof.allocator`), so that the workers' first allocations go to fresh pools instead of
   writing pages they share;
6. ``malloc_trim(0)`` — hands free malloc memory back to the OS instead of to the first worker
   that touches it;
7. filling glibc malloc's free chunks (what step 6 left of them: their headers), so that the
   workers' ``malloc`` takes fresh memory instead of the gaps between the master's data;
8. advising ``MADV_NOHUGEPAGE`` on the anonymous memory, so that khugepaged collapses no 2 MiB
   range of it into a huge page in the master or a worker, which copies every page of the range
   the processes still share (:mod:`cowprof.hugepages`);
9. with ``COWPROF_FILL_BEFORE_FORK=1``, arming the same two fills right before each later
   ``os.fork()`` of this process, for what the master allocated and freed since
   (:func:`cowprof.allocator.fill_before_every_fork`; off by default, see there).

Policy lives here; the native module only walks. See docs/fix.md for trade-offs
(prepared objects are never freed; a second call only handles objects created since).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

from cowprof import _env, allocator, function_versions, hugepages, key_tables

try:
    from cowprof import _native
except ImportError as exc:  # a source checkout without the build, or an unsupported platform
    _native = None  # type: ignore[assignment]  # (checked before every use)
    _NATIVE_IMPORT_ERROR: str | None = f"cowprof._native is not built ({exc})"
else:
    _NATIVE_IMPORT_ERROR = None

__all__ = ["PrepareReport", "prepare_fork", "after_fork", "disable_gc_until_fork", "immortalize_unavailable"]

ALLOW_UNTESTED_ENV = "COWPROF_ALLOW_UNTESTED"


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What ``prepare_fork`` did. Byte and object counts come from the native walk."""

    objects: int
    """Objects visited by the walk (each once)."""
    immortalized: int
    """Objects whose refcount this call set to the immortal value."""
    bytes: int
    """Bytes of the visited objects (``__sizeof__`` plus GC/managed pre-header)."""
    seconds: float
    """Wall time of the whole ``prepare_fork`` call."""
    walk_seconds: float
    """Wall time of the native walk alone."""
    frozen: int
    """``gc.get_freeze_count()`` afterwards (objects in the permanent generation)."""
    python: str
    """Interpreter version, e.g. ``"CPython 3.12.1"``."""
    immortalize_skipped: str | None = None
    """Why immortalization did not run: ``None`` when it ran, ``"not requested"`` for
    ``immortalize=False``, else the reason (old or free-threaded interpreter, missing build)."""
    trimmed: bool = False
    """Whether ``malloc_trim`` released memory."""
    collected: int = 0
    """Unreachable objects found by the ``gc.collect()`` before the walk."""
    released: int = 0
    """Unreachable objects found by the collection that cleared the free lists after the freeze."""
    already_immortal: int = 0
    left_mortal: int = 0
    """Objects the walk left mortal: those with a finalizer (``with_finalizer``) and the dicts, cells
    and class instances holding one directly, so that they are freed and finalized as without
    cowprof (and, on debug builds of 3.14+, the strings that are not interned)."""
    with_finalizer: int = 0
    """Objects with a finalizer (io objects, ``__del__``, generators) the walk saw; those still alive
    at exit are finalized then (:mod:`cowprof.finalize`)."""
    strings_hashed: int = 0
    types_tagged: int = 0
    const_loads_settled: int = 0
    """3.14: ``LOAD_CONST_MORTAL`` instructions of code the master ran before the walk, rewritten to
    ``LOAD_CONST_IMMORTAL`` now that their constants are immortal (the mortal form increfs without
    looking, writing the constant's page in every worker); ``COWPROF_SETTLE_CONST_LOADS=0`` keeps them."""
    functions_versioned: int = 0
    """3.12: functions given in the master the version the interpreter gives them at the first
    specialized call (those made by ``types.FunctionType`` or whose code, defaults or annotations
    were set), which would otherwise be written in every worker (:mod:`cowprof.function_versions`;
    ``COWPROF_VERSION_FUNCTIONS=0`` turns it off)."""
    function_versions_skipped: str | None = None
    """Why no function was versioned (3.13+: not needed; ``"not requested"``; a failed check of the
    interpreter's version counter), or None."""
    shared_keys_immortalized: int = 0
    """Key tables shared by a class's instances given the immortal count, so that a worker
    materializing an instance's ``__dict__`` (or freeing it) does not write the master's table
    (:mod:`cowprof.key_tables`; ``COWPROF_IMMORTAL_SHARED_KEYS=0`` turns it off)."""
    keys_versioned: int = 0
    """Modules' globals tables and classes' shared key tables given the version the specializer
    would give them in a worker (``COWPROF_VERSION_KEYS=0`` turns it off)."""
    key_tables_skipped: str | None = None
    """Why either key-table step was not taken (``"not requested"``, no walk, a failed run-time
    check of the interpreter), or None."""
    full_walk: bool = True
    """False when only objects created since the previous call were walked (the cheap repeat)."""
    heapmap_path: str | None = None
    """Where the heap map was saved (see cowprof.heapmap), when it was."""
    filler_bytes: int = 0
    """Bytes allocated (for good) to fill partly used pymalloc pools (see cowprof.allocator)."""
    fill_skipped: str | None = None
    """Why the pools were not (all) filled, or None."""
    malloc_filler_bytes: int = 0
    """Bytes of glibc malloc's free chunks allocated (for good) after ``malloc_trim``, so that
    workers' ``malloc`` takes fresh memory (see cowprof.allocator); their pages stay given back."""
    malloc_fill_skipped: str | None = None
    """Why malloc's free chunks were not (all) filled, or None."""
    no_hugepages_bytes: int = 0
    """Bytes of anonymous memory advised ``MADV_NOHUGEPAGE`` (see cowprof.hugepages)."""
    no_hugepages_skipped: str | None = None
    """Why that memory was not (all) advised (``"not requested"``, the native module not built,
    ``/proc`` unreadable, the kernel refusing), or None."""
    late_imports: tuple[str, ...] = ()
    """Modules the workers of this app's earlier masters imported after the fork (each then
    loaded once per worker): cowprof.preload's learned list."""
    preloaded: tuple[str, ...] = ()
    """Learned modules imported in this master before preparing (``COWPROF_PRELOAD=learned``)."""
    imports_error: str | None = None
    """Why late imports are not recorded or learned (e.g. an unusable directory), or None."""
    heapmap_bytes: int = 0
    """Size of the heap map file saved (format 3: ~4 bytes an object), 0 when none was."""
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall time of each step: ``imports`` (learned preload), ``collect`` (gc.collect), ``setup``
    (the heap map file, which removes stale maps), ``walk`` (the native walk, its heap map writer
    thread included; ``writer_wait``: how much of it the walk waited for that thread), ``heapmap``
    (the map's metadata, renaming it into place), ``finalize`` (registering the objects left
    mortal), ``versions`` (3.12's function versions), ``freeze``, ``release`` (type cache and free
    lists), ``fill`` (free pool blocks), ``trim``, ``fill_malloc``, ``hugepages``."""

    @property
    def immortalize_ran(self) -> bool:
        return self.immortalize_skipped is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for logs."""
        mb = self.bytes / 1e6
        parts = [f"prepared {self.objects:,} objects ({mb:,.1f} MB) in {self.seconds:.2f} s"]
        if self.immortalize_skipped:
            parts.append(f"not immortalized: {self.immortalize_skipped}")
        else:
            parts.append(
                f"{self.immortalized:,} immortalized, {self.strings_hashed:,} str hashes cached, "
                f"{self.types_tagged:,} type tags, {self.left_mortal:,} left mortal "
                f"({self.with_finalizer:,} with a finalizer)"
            )
        parts.append(f"{self.frozen:,} objects frozen")
        if self.const_loads_settled:
            parts.append(f"{self.const_loads_settled:,} constant loads made immortal")
        if self.functions_versioned:
            parts.append(f"{self.functions_versioned:,} function versions given")
        if self.shared_keys_immortalized or self.keys_versioned:
            parts.append(f"{self.shared_keys_immortalized:,} shared key tables made immortal, "
                         f"{self.keys_versioned:,} key tables versioned")
        if self.filler_bytes:
            parts.append(f"{self.filler_bytes / 1e6:,.2f} MB of free pool blocks filled")
        if self.trimmed:
            parts.append("malloc_trim released memory")
        if self.malloc_filler_bytes:
            parts.append(f"{self.malloc_filler_bytes / 1e6:,.2f} MB of free malloc chunks filled")
        if self.no_hugepages_bytes:
            parts.append(f"huge pages kept off {self.no_hugepages_bytes / 1e6:,.1f} MB")
        if not self.full_walk:
            parts.append("repeat call: only new objects walked")
        return "; ".join(parts)


# Module state. A forked child inherits it, which is what we want: a child that prepares its own
# children knows the inherited heap is already done.
_state: dict[str, Any] = {
    "walked_and_frozen": False,  # an immortalizing walk was followed by our gc.freeze()
    "gc_disabled_by_us": False,
    "warned": False,
    "heapmap_seq": 0,  # segment number of the last heap map saved (0 after a full walk)
}


def immortalize_unavailable() -> str | None:
    """Why this interpreter/build cannot immortalize, or ``None`` if it can."""
    if sys.implementation.name != "cpython":
        return f"immortal objects are a CPython feature (this is {sys.implementation.name})"
    if sys.version_info < (3, 12):
        return f"immortal objects need CPython 3.12+ (PEP 683); this is {platform.python_version()}"
    if _native is None:
        return _NATIVE_IMPORT_ERROR
    info = _native.info()
    if not info["can_walk"]:
        return str(info["reason"])
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if info["compiled_for"] != running:
        return f"cowprof._native was built for CPython {info['compiled_for']}, running {running}"
    if info["untested"] and os.environ.get(ALLOW_UNTESTED_ENV) != "1":
        return (
            f"immortalization on CPython {running} is built from its headers but untested; "
            f"set {ALLOW_UNTESTED_ENV}=1 to use it"
        )
    return None


ENV_RELEASE = "COWPROF_RELEASE_CACHES"
ENV_SETTLE_LOADS = "COWPROF_SETTLE_CONST_LOADS"
ENV_NO_HUGEPAGES = "COWPROF_NO_HUGEPAGES"


def _warn_once(message: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"cowprof: {message}; only gc.freeze() is applied", RuntimeWarning, stacklevel=3)


def prepare_fork(
    *, immortalize: bool = True, freeze: bool = True, trim: bool = True, heapmap: bool | str = True,
    fill_free_blocks: bool | int = True, release_caches: bool = True, record_imports: bool = True,
    no_hugepages: bool = True,
) -> PrepareReport:
    """Prepare the current (master) process's heap to be shared with workers forked after it.

    Call it in the master right before forking (gunicorn: ``cowprof.gunicorn``'s ``when_ready``).
    Never raises for an unsupported interpreter: it freezes, reports what it skipped and why, and
    warns once. Calling it again is safe and cheap: only objects created since are walked.

    ``heapmap``: record each object's address range and type for attribution (``True`` saves it
    to cowprof's per-user directory keyed by this PID, see ``cowprof.heapmap``; a string is a
    directory to save into; ``False`` skips it: a 16-byte record per object, written by a native
    thread while the walk runs, ~3 ns of walk time per object).

    ``fill_free_blocks``: fill the free blocks of partly used pymalloc pools after the walk
    (``True``: up to ``cowprof.allocator.DEFAULT_MAX_BYTES``, a number: up to that many bytes,
    ``False``: not at all); ``COWPROF_FILL_FREE_BLOCKS`` (``0``, ``1`` or a size such as ``8M``)
    overrides it.

    ``release_caches``: empty the type attribute cache and (when freezing) CPython's free lists
    before the fill, so that workers neither free the names only that cache holds nor build new
    objects in the dead ones parked in the free lists, both on pages they share;
    ``COWPROF_RELEASE_CACHES`` (``0`` or ``1``) overrides it.

    ``record_imports``: learn which modules earlier workers of this app imported after the fork
    and have the children forked from now on record theirs (``cowprof.preload``; small files in
    cowprof's private preload directory).

    ``no_hugepages``: advise ``MADV_NOHUGEPAGE`` on the anonymous memory last (``cowprof.hugepages``);
    ``COWPROF_NO_HUGEPAGES`` (``0`` or ``1``) overrides it.
    """
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    learned, imports_error = _imports(record_imports)  # first: what it creates is prepared too
    t = _phase(phases, "imports", t0)
    # before the collection: its probe classes are garbage the collection frees
    keys_options, keys_skipped = key_tables.walk_options() if immortalize else ({}, "not requested")
    collected = gc.collect()
    t = _phase(phases, "collect", t)
    skipped = immortalize_unavailable() if immortalize else None
    walk: dict[str, Any] = {}
    full_walk = True
    heapmap_path = None
    record = bool(heapmap) and _native is not None and hasattr(_native, "walk")
    # imported before the walk, so its own objects are prepared too (it does not load numpy)
    from cowprof import heapmap as _heapmap_module
    if immortalize and not skipped:
        from cowprof import finalize as _finalize  # before the walk too
    if skipped:
        _warn_once(skipped)
    if (immortalize and not skipped) or record:
        if gc.get_freeze_count() and not _state["walked_and_frozen"]:
            # Objects frozen before our first walk (the user's own gc.freeze recipe) sit in the
            # permanent generation, which the GC-list walk cannot see: bring them back first.
            gc.unfreeze()
        elif gc.get_freeze_count():
            # Everything frozen was walked by our previous call; only newer objects are walked.
            # (Objects someone else froze between two calls are not: documented.)
            full_walk = False
        gc_head, managed = _heapmap_module.preheader_sizes()
        kwargs: dict[str, Any] = dict(immortalize=bool(immortalize and not skipped), gc_head=gc_head,
                                      managed_preheader=managed, new_only=not full_walk,
                                      opcode_caches=_opcode_caches() if _env.flag(ENV_SETTLE_LOADS, True) else None)
        if not skipped:
            kwargs.update(keys_options)
        segment = _heapmap_segment(heapmap, full_walk) if record else None
        t = _phase(phases, "setup", t)
        if segment is not None:
            walk, heapmap_path = _heapmap_module.walk_into(segment, _native.walk, **kwargs)
            if heapmap_path is not None:
                _state["heapmap_seq"] = segment.seq
            else:
                warnings.warn(f"cowprof: heap map not saved: {walk.get('heapmap_error')}", RuntimeWarning,
                              stacklevel=2)
        else:
            walk = _native.walk(**kwargs)
        phases["walk"] = float(walk.get("seconds", 0.0))
        if "heapmap_wait_seconds" in walk:  # part of the walk: waiting for the map's writer thread
            phases["writer_wait"] = float(walk["heapmap_wait_seconds"])
        t = _phase(phases, "heapmap", t)
        phases["heapmap"] = max(phases["heapmap"] - phases["walk"], 0.0)
        if kwargs["immortalize"]:
            # what the walk left mortal because of a finalizer, finalized at exit if still alive
            _finalize.register(walk.pop("finalizable", ()))
            _finalize.install()
        t = _phase(phases, "finalize", t)
        if walk.get("const_loads_settled") and "cowprof.preload" in sys.modules:
            # the walk rewrote bytecode the fingerprint hashed: workers must not take it for theirs
            sys.modules["cowprof.preload"].retake_fingerprint()
            t = _phase(phases, "fingerprint", t)
    walk.pop("finalizable", None)
    if immortalize and not skipped:
        versioned, versions_skipped = function_versions.assign()
    else:
        versioned, versions_skipped = 0, skipped if immortalize else "not requested"
    t = _phase(phases, "versions", t)
    if freeze:
        gc.freeze()
        if immortalize and not skipped:
            _state["walked_and_frozen"] = True
    t = _phase(phases, "freeze", t)
    released = _release_reusable(frozen=bool(freeze)) if _env.flag(ENV_RELEASE, release_caches) else 0
    t = _phase(phases, "release", t)
    fills = allocator.fill_all(fill_free_blocks, trim=trim and _native is not None)
    phases.update(fills.phase_seconds)
    t = time.perf_counter()
    advice = (hugepages.keep_off_shared_heap() if _env.flag(ENV_NO_HUGEPAGES, no_hugepages)
              else hugepages.HugePageAdvice(0, "not requested"))
    _phase(phases, "hugepages", t)
    allocator.fill_before_every_fork(fill_free_blocks)
    return PrepareReport(
        objects=int(walk.get("objects", 0)),
        immortalized=int(walk.get("immortalized", 0)),
        bytes=int(walk.get("bytes", 0)),
        seconds=time.perf_counter() - t0,
        walk_seconds=float(walk.get("seconds", 0.0)),
        frozen=gc.get_freeze_count(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        immortalize_skipped=skipped if immortalize else "not requested",
        trimmed=fills.trimmed,
        collected=collected,
        released=released,
        already_immortal=int(walk.get("already_immortal", 0)),
        left_mortal=int(walk.get("left_mortal", 0)),
        with_finalizer=int(walk.get("with_finalizer", 0)),
        strings_hashed=int(walk.get("strings_hashed", 0)),
        types_tagged=int(walk.get("types_tagged", 0)),
        const_loads_settled=int(walk.get("const_loads_settled", 0)),
        functions_versioned=versioned,
        shared_keys_immortalized=int(walk.get("shared_keys_immortalized", 0)),
        keys_versioned=int(walk.get("keys_versioned", 0)),
        key_tables_skipped=skipped if (immortalize and skipped) else keys_skipped,
        function_versions_skipped=versions_skipped,
        full_walk=full_walk,
        heapmap_path=heapmap_path,
        filler_bytes=fills.pools.filler_bytes,
        fill_skipped=fills.pools.skipped,
        malloc_filler_bytes=fills.malloc.filler_bytes,
        malloc_fill_skipped=fills.malloc.skipped,
        no_hugepages_bytes=advice.bytes,
        no_hugepages_skipped=advice.skipped,
        late_imports=learned,
        preloaded=_preloaded(),
        imports_error=imports_error,
        heapmap_bytes=_file_size(heapmap_path),
        phase_seconds=phases,
    )


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] = now - since
    return now


def _file_size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def _imports(record: bool) -> tuple[tuple[str, ...], str | None]:
    """Learned late imports of this app, and arming the record of the next children's (cowprof.preload)."""
    if not record:
        return (), "not requested"
    from cowprof import preload

    learned = preload.learn()
    error = preload.record_master(learned.key) or learned.error
    return learned.modules, error


def _preloaded() -> tuple[str, ...]:
    mod = sys.modules.get("cowprof.preload")
    return tuple(mod.preloaded()) if mod is not None else ()


def _opcode_caches() -> bytes | None:
    """The inline cache entries of every opcode, specialized ones included (256 bytes, from the
    running interpreter's ``opcode`` module), for the walk to step through adaptive bytecode; None
    where the module does not describe them all (before 3.13, which the walk does not need it for)."""
    import opcode

    entries = getattr(opcode, "_inline_cache_entries", None)
    if not isinstance(entries, Mapping):  # 3.15: a frozendict; 3.12: a list by opcode number
        return None
    specialized = getattr(opcode, "_specialized_opmap", {})
    family = getattr(opcode, "_specializations", {})
    if set(specialized) - {member for members in family.values() for member in members}:
        return None  # a specialized opcode of no known family: its cache size would be a guess
    numbers = {**opcode.opmap, **specialized}
    table = bytearray(256)
    for name, count in entries.items():
        for member in (name, *family.get(name, ())):
            if member in numbers:
                table[numbers[member]] = count
    return bytes(table)


def _release_reusable(*, frozen: bool) -> int:
    """Step 4: empties the type attribute cache (``PyType_ClearCache``: version tags are kept, so
    specialized code stays valid) and, when everything is frozen, collects the then empty young
    generations, which also clears the free lists. The fill that follows takes the blocks they
    leave. Returns the objects that collection found unreachable."""
    if _native is not None:
        _native.clear_type_cache()
    return gc.collect() if frozen else 0


def _heapmap_segment(heapmap: bool | str, full_walk: bool) -> Any:
    """The heap map file the walk will stream into, or None (with a warning) if it cannot be created."""
    from cowprof import heapmap as hm
    from cowprof.errors import BadInput

    directory = heapmap if isinstance(heapmap, str) else None
    seq = 0 if full_walk else _state["heapmap_seq"] + 1
    try:
        return hm.Segment(os.getpid(), directory, seq)
    except (OSError, BadInput) as exc:
        warnings.warn(f"cowprof: heap map not saved: {exc}", RuntimeWarning, stacklevel=3)
        return None


def disable_gc_until_fork() -> None:
    """Step one of the gc.freeze recipe: disable the collector early in the master, so that no
    collection leaves holes in pages that will be shared. ``after_fork()`` re-enables it."""
    if gc.isenabled():
        gc.disable()
        _state["gc_disabled_by_us"] = True


def after_fork() -> None:
    """Call in each child right after fork. Re-enables the GC if ``disable_gc_until_fork``
    disabled it, and starts recording the modules this child imports (``cowprof.preload``);
    nothing else that would write to the shared heap."""
    if _state["gc_disabled_by_us"]:
        gc.enable()
        _state["gc_disabled_by_us"] = False
    preload = sys.modules.get("cowprof.preload")
    if preload is not None:
        try:
            preload.watch_imports()
        except Exception:  # noqa: BLE001 - recording is diagnostics; the child must run anyway
            pass
