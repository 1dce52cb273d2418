"""The ``attribution`` lines of record files (format 1.1): written after their sample, read strictly.

One line per attributed sample, right after the sample line it belongs to::

    {"kind": "attribution", "sample": 3, "seconds": 0.05, "error": null,
     "attribution": {<Attribution.to_dict(top)>} | null,
     "functions": {<FunctionAttribution.to_dict(top)>} | null, "functions_error": null}

A separate line kind rather than a key of the sample line: readers of format 1.0 skip line kinds
they do not know, so they read these files as recordings of pages only, and the sample line is on
disk before its attribution (which may take longer) is computed. Reading is as strict as for the
other lines: every field of its documented JSON type, byte counts non-negative integers. An
``attribution`` or ``functions`` object of a version this reader does not know is dropped with a
warning, not an error (a later writer may refine them).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cowprof import untrusted

T = TypeVar("T")

if TYPE_CHECKING:
    from cowprof.attribution import Attribution
    from cowprof.attributor import SampleAttribution
    from cowprof.functions import FunctionAttribution

__all__ = ["KIND", "RecordedAttribution", "line", "parse"]

KIND = "attribution"


@dataclasses.dataclass(frozen=True)
class RecordedAttribution:
    """An attribution line read back."""

    sample: int
    attribution: Attribution | None
    functions: FunctionAttribution | None
    error: str | None
    functions_error: str | None
    seconds: float
    warnings: tuple[str, ...] = ()


def _error(err: BaseException | None) -> dict[str, str] | None:
    return None if err is None else {"type": type(err).__name__, "message": str(err)}


def line(sample: int, sa: SampleAttribution, *, top: int | None) -> dict[str, Any]:
    """The JSON object of the attribution line of sample ``sample``."""
    return {
        "kind": KIND, "sample": sample, "seconds": round(sa.seconds, 6), "error": _error(sa.error),
        "attribution": sa.attribution.to_dict(top) if sa.attribution is not None else None,
        "functions": sa.functions.to_dict(top) if sa.functions is not None else None,
        "functions_error": _error(sa.functions_error),
    }


# ------------------------------------------------------------------------------- reading


def _message(obj: dict[str, Any], key: str) -> str | None:
    err = obj.get(key)
    if err is None:
        return None
    if isinstance(err, dict):
        return untrusted.string(err, "message")
    raise ValueError(f"'{key}' is not an object")


def _byte_counts(d: dict[str, Any], key: str, *, optional: bool) -> dict[str, int] | None:
    value = d.get(key)
    if value is None:
        if optional:
            return None
        raise ValueError(f"missing '{key}'")
    m = untrusted.obj(value, f"'{key}'")
    for k in m:
        untrusted.integer(m, k, minimum=0)
    return dict(m)


def _rows(d: dict[str, Any], key: str, fields: dict[str, str]) -> list[dict[str, Any]]:
    value = d.get(key)
    if not isinstance(value, list):
        raise ValueError(f"'{key}' is not a list")
    for row in value:
        untrusted.obj(row, f"an item of '{key}'")
        for name, kind in fields.items():
            if kind == "str":
                untrusted.string(row, name)
            elif kind == "bytes":
                untrusted.integer(row, name, minimum=0)
            else:
                untrusted.integer(row, name)
    return value


def _attribution(d: dict[str, Any]) -> Attribution:
    from cowprof.attribution import Attribution

    untrusted.integer(d, "master", minimum=1)
    untrusted.timestamp(d, "taken_at")
    untrusted.integer(d, "page_size", minimum=1)
    untrusted.string(d, "mode")
    untrusted.number(d, "seconds", minimum=0.0)
    untrusted.string(d, "source")
    hm = untrusted.obj(d.get("heapmap"), "'heapmap'")
    untrusted.integer(hm, "records", minimum=0)
    untrusted.number(hm, "created_at", minimum=0.0)
    untrusted.string(d, "causes_error", optional=True)
    workers = d.get("workers")
    if not isinstance(workers, list):
        raise ValueError("'workers' is not a list")
    for w in workers:
        untrusted.obj(w, "a worker")
        untrusted.integer(w, "pid", minimum=1)
        untrusted.integer(w, "copied_bytes", minimum=0)
        _rows(w, "types", {"type": "str", "bytes": "bytes"})
        for key in ("other_types_bytes", "no_object_bytes", "unknown_bytes"):
            untrusted.integer(w, key, minimum=0, optional=key == "unknown_bytes")
        for key in ("causes", "changed_words", "originals"):
            _byte_counts(w, key, optional=True)
    return Attribution.from_dict(d)


def _functions(d: dict[str, Any]) -> FunctionAttribution:
    from cowprof.functions import FunctionAttribution

    untrusted.integer(d, "master", minimum=1)
    untrusted.timestamp(d, "taken_at")
    untrusted.string(d, "source")
    untrusted.number(d, "seconds", minimum=0.0)
    for key in ("copied_bytes", "code_bytes", "unnamed_code_bytes", "other_functions_bytes",
                "other_modules_bytes"):
        untrusted.integer(d, key, minimum=0)
    _rows(d, "functions", {"function": "str", "file": "str", "line": "int", "bytes": "bytes"})
    _rows(d, "modules", {"module": "str", "bytes": "bytes"})
    return FunctionAttribution.from_dict(d)


def parse(obj: dict[str, Any]) -> RecordedAttribution:
    """An attribution line (a JSON object whose kind is ``attribution``); ``ValueError`` when a
    field is missing or of the wrong type."""
    from cowprof import attribution, functions

    sample = untrusted.integer(obj, "sample", minimum=0) or 0
    seconds = untrusted.number(obj, "seconds", minimum=0.0, optional=True) or 0.0
    warnings: list[str] = []

    def versioned(key: str, what: str, known: int, parse: Callable[[dict[str, Any]], T]) -> T | None:
        """``obj[key]`` parsed when its version is the one this cowprof reads, else skipped with a warning."""
        part = obj.get(key)
        if part is None:
            return None
        untrusted.obj(part, f"'{key}'")
        version = untrusted.integer(part, "version")
        if version == known:
            return parse(part)
        warnings.append(f"{what} of sample {sample} {'have' if what == 'functions' else 'has'} version {version} "
                        f"(this cowprof reads {known}): skipped")
        return None

    attr = versioned("attribution", "attribution", attribution.VERSION, _attribution)
    fattr = versioned("functions", "functions", functions.VERSION, _functions)
    return RecordedAttribution(sample=sample, attribution=attr, functions=fattr, error=_message(obj, "error"),
                               functions_error=_message(obj, "functions_error"), seconds=seconds,
                               warnings=tuple(warnings))
