"""Copied bytes by function (code objects) and by module (instances), read from the master's memory.

The interpreter's specializing bytecode writes the inline caches of every code object a worker
runs, so code objects are a large share of a web worker's copies. This view joins the copied pages
with the records of a heap map (saved by ``prepare_fork``, or read from outside by
:mod:`cowprof.remote`) and reads, for each copied code object, its ``co_qualname``,
``co_filename`` and ``co_firstlineno`` from the master's memory (read-only, ptrace rights as for
``--by cause``). The module of a function is the ``__module__`` of a function object whose
``__code__`` it is (functions among the map's records); a code object with no such function (a
nested or never-bound code object) is named by its qualname alone. Instances are grouped by the
module of their type (the type name's part before the last dot; builtins without a dot).

Why the names are read from memory rather than recorded in the heap map at walk time: the map
would have to carry strings for every code object (tens of thousands in a Django master), written
by every ``prepare_fork``, while the master's memory already holds them and is needed anyway for a
master that never saved a map.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from . import attribution
from .attribution import NoAttribution
from .heapmap import HeapMap
from .memreader import MemoryAccessDenied
from .pages import PageReport, scan
from .remote.objects import read_str
from .remote.target import Interpreter, Memory, find_interpreter
from .tree import find_tree

__all__ = ["FunctionAttribution", "Function", "by_function", "module_of", "snapshot"]

VERSION = 1


@dataclasses.dataclass(frozen=True)
class Function:
    name: str  # module.qualname (qualname alone when the module is unknown)
    filename: str
    firstlineno: int

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.firstlineno}"


@dataclasses.dataclass
class FunctionAttribution:
    """Copied bytes of code objects by function and of objects by the module of their type."""

    master: int
    taken_at: float
    source: str
    copied_bytes: int
    code_bytes: int
    functions: list[tuple[Function, int]]  # largest first
    modules: list[tuple[str, int]]  # largest first
    unnamed_code_bytes: int = 0  # code objects whose fields did not check out
    seconds: float = 0.0
    other_functions_bytes: int = 0  # beyond ``functions`` (a top-N list read back from JSON)
    other_modules_bytes: int = 0

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        fn = self.functions if top is None else self.functions[:top]
        mods = self.modules if top is None else self.modules[:top]
        return {
            "version": VERSION, "master": self.master, "taken_at": self.taken_at, "source": self.source,
            "seconds": self.seconds, "copied_bytes": self.copied_bytes, "code_bytes": self.code_bytes,
            "unnamed_code_bytes": self.unnamed_code_bytes,
            "functions": [{"function": f.name, "file": f.filename, "line": f.firstlineno, "bytes": b} for f, b in fn],
            "other_functions_bytes": self.other_functions_bytes + sum(b for _f, b in self.functions[len(fn):]),
            "modules": [{"module": m, "bytes": b} for m, b in mods],
            "other_modules_bytes": self.other_modules_bytes + sum(b for _m, b in self.modules[len(mods):]),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FunctionAttribution:
        """The inverse of :meth:`to_dict` (fields checked by the caller, e.g. a record reader)."""
        return cls(master=int(d["master"]), taken_at=float(d["taken_at"]), source=str(d["source"]),
                   copied_bytes=int(d["copied_bytes"]), code_bytes=int(d["code_bytes"]),
                   functions=[(Function(str(f["function"]), str(f["file"]), int(f["line"])), int(f["bytes"]))
                              for f in d["functions"]],
                   modules=[(str(m["module"]), int(m["bytes"])) for m in d["modules"]],
                   unnamed_code_bytes=int(d["unnamed_code_bytes"]), seconds=float(d["seconds"]),
                   other_functions_bytes=int(d["other_functions_bytes"]),
                   other_modules_bytes=int(d["other_modules_bytes"]))


def module_of(type_name: str) -> str:
    """The module part of a heap map type name (``sample_app.data.Customer`` -> ``sample_app.data``)."""
    module, dot, _ = type_name.rpartition(".")
    return module if dot else "builtins"


def _function_modules(mem: Memory, interp: Interpreter, hm: HeapMap) -> dict[int, str]:
    """code object address -> module name, from the function objects among the map's records."""
    names = [str(n) for n in hm.type_names.tolist()]
    if "function" not in names:
        return {}
    t = names.index("function")
    pre = int(hm.type_preheader[t]) if hm.type_preheader is not None and hm.type_preheader.size > t else 0
    funcs = np.asarray(hm.addr[hm.type == t], dtype=np.uint64) + np.uint64(pre)
    lay = interp.layout
    ftype, ok0 = mem.words(funcs + np.uint64(8))
    code, ok1 = mem.words(funcs + np.uint64(lay.func_code))
    mod, ok2 = mem.words(funcs + np.uint64(lay.func_module))
    good = ok0 & ok1 & ok2 & (ftype == np.uint64(interp.symbols["PyFunction_Type"])) & (code != 0) & (mod != 0)
    cache: dict[int, str | None] = {}
    out: dict[int, str] = {}
    for c, m in zip(code[good].tolist(), mod[good].tolist()):
        if m not in cache:
            cache[m] = read_str(mem, interp, m)
        if cache[m] is not None:
            out.setdefault(c, cache[m])  # type: ignore[arg-type]
    return out


def _code_info(mem: Memory, interp: Interpreter, addr: int) -> tuple[str, str, int] | None:
    """(qualname, filename, firstlineno) of the code object at ``addr``, checked field by field."""
    lay = interp.layout
    if mem.word(addr + 8) != interp.symbols["PyCode_Type"]:
        return None
    qual, fname, name = (mem.word(addr + o) for o in (lay.co_qualname, lay.co_filename, lay.co_name))
    line = mem.u32(addr + lay.co_firstlineno)
    q = read_str(mem, interp, qual) if qual else None
    f = read_str(mem, interp, fname) if fname else None
    n = read_str(mem, interp, name) if name else None
    if q is None or f is None or n is None or line is None or not q.endswith(n):
        return None
    return q, f, line if line < 1 << 31 else line - (1 << 32)


def by_function(report: PageReport, hm: HeapMap, mem: Memory, interp: Interpreter, *,
                source: str = "heapmap", cache: dict[str, Any] | None = None) -> FunctionAttribution:
    """All workers' copied bytes by function (code objects) and by module of the objects' types.

    ``cache``: a dict the caller keeps across calls for the same master (``record``): the join's
    ranges and the functions' modules are kept while ``hm`` is the same object, the names read for
    each code object address for as long as the dict lives."""
    t0 = time.perf_counter()
    cache = {} if cache is None else cache
    if cache.get("map") is not hm:
        cache.update(map=hm, layout=attribution.layout_of(hm), modules=None)
    codes: dict[int, tuple[str, str, int] | None] = cache.setdefault("code", {})
    # every worker's pages: a page copied by two workers counts twice, as in the by-type view
    per_rec = np.zeros(len(hm), dtype=np.float64)
    for w in report.workers:
        per_rec += attribution.record_bytes(hm, np.asarray(w.copied_addrs, dtype=np.uint64), report.page_size,
                                            _lay=cache["layout"])
    names = [str(n) for n in hm.type_names.tolist()]
    unknown_name = getattr(hm, "unknown_name", None)
    by_module: dict[str, float] = {}
    type_bytes = np.bincount(np.asarray(hm.type, dtype=np.intp), weights=per_rec, minlength=len(names))
    found = getattr(hm, "found", None)
    for i, b in enumerate(type_bytes.tolist()):
        if b <= 0 or names[i] == unknown_name:
            continue
        info = found.types[i] if found is not None and i < len(found.types) else None
        mod = info.module if info is not None else module_of(names[i])
        by_module[mod] = by_module.get(mod, 0.0) + b
    functions: dict[Function, float] = {}
    unnamed = 0.0
    code_bytes = 0.0
    if "code" in names:
        t = names.index("code")
        pre = int(hm.type_preheader[t]) if hm.type_preheader is not None and hm.type_preheader.size > t else 0
        recs = np.flatnonzero((np.asarray(hm.type) == t) & (per_rec > 0))
        if cache["modules"] is None:
            cache["modules"] = _function_modules(mem, interp, hm)
        modules = cache["modules"]
        for r in recs.tolist():
            addr = int(hm.addr[r]) + pre
            b = float(per_rec[r])
            code_bytes += b
            if addr not in codes:
                codes[addr] = _code_info(mem, interp, addr)
            info = codes[addr]
            if info is None:
                unnamed += b
                continue
            qual, fname, line = info
            mod = modules.get(addr)
            key = Function(f"{mod}.{qual}" if mod else qual, fname, line)
            functions[key] = functions.get(key, 0.0) + b
    rows = sorted(((f, round(b)) for f, b in functions.items()), key=lambda fb: (-fb[1], fb[0].name))
    mods = sorted(((m, round(b)) for m, b in by_module.items()), key=lambda mb: (-mb[1], mb[0]))
    return FunctionAttribution(master=report.master.pid, taken_at=report.taken_at, source=source,
                               copied_bytes=sum(w.copied_bytes for w in report.workers),
                               code_bytes=round(code_bytes), functions=rows, modules=mods,
                               unnamed_code_bytes=round(unnamed), seconds=time.perf_counter() - t0)


def snapshot(pid: int, *, procfs_root: str = "/proc", heapmap_dir: str | None = None,
             top: int | None = None) -> FunctionAttribution:
    """``cowprof snapshot PID --by function``: scan, heap map (or the master's memory), names."""
    del top  # every function is computed; the reporter shows the top ones
    tree = find_tree(pid, procfs_root=procfs_root)
    report = scan(tree, procfs_root=procfs_root, keep_addresses=True)
    hm = attribution.heapmap_or_memory(report, procfs_root=procfs_root, heapmap_dir=heapmap_dir)
    try:
        with Memory(report.master.pid, procfs_root) as mem:
            interp = getattr(hm, "interpreter", None) or find_interpreter(report.master.pid, mem, procfs_root)
            return by_function(report, hm, mem, interp, source=getattr(hm, "source", "heapmap"))
    except MemoryAccessDenied as err:
        raise NoAttribution(report.master.pid, f"naming the copied functions needs to read the master's "
                                               f"memory: {err}") from None

