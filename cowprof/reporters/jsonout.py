"""JSON output, one document per call, of what the commands print as JSON:

* a page report: ``PageReport.to_dict()`` (the format documented in docs/CONTRACTS.md), plus the
  top-level keys the caller adds (``cowprof snapshot --json``: ``late_imports``);
* a recording over time (``cowprof report --json``): :func:`recording_dict`;
* an attribution by type/cause or by function (``snapshot --by type|cause|function --json``): its
  ``to_dict(top)`` (docs/attribute.md).

Named ``jsonout`` so it never shadows the stdlib ``json``.
"""
from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowprof.attribution import Attribution
    from cowprof.functions import FunctionAttribution
    from cowprof.pages import PageReport
    from cowprof.record import Recording

__all__ = ["RECORDING_VERSION", "document", "recording_dict", "render"]


def document(data: PageReport | Recording | Attribution | FunctionAttribution, *, top: int | None = None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of ``data``: a page report's ``to_dict()`` with the ``extra`` keys added at
    the top level (they never replace a key of the report); a recording's :func:`recording_dict`;
    an attribution's ``to_dict(top)``."""
    from cowprof.pagereport import PageReport

    if isinstance(data, PageReport):
        doc = data.to_dict()
        for key, value in (extra or {}).items():
            doc.setdefault(key, value)
        return doc
    from cowprof.record import Recording

    if isinstance(data, Recording):
        return recording_dict(data)
    return data.to_dict(top)


def render(data: PageReport | Recording | Attribution | FunctionAttribution, file: IO[str] | None = None, *,
           indent: int | None = 2, top: int | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write :func:`document` of ``data`` as JSON followed by a newline to ``file`` (default stdout;
    ``indent=None``: one compact line)."""
    out = file if file is not None else sys.stdout
    out.write(json.dumps(document(data, top=top, extra=extra), indent=indent, allow_nan=False) + "\n")
    out.flush()


RECORDING_VERSION = 1


def recording_dict(recording: Recording) -> dict[str, Any]:
    """``cowprof report FILE --json``: what was recorded, each worker's copied bytes over time and,
    for ``record --by``, the copied bytes by type, cause and function over time (docs/live-record.md)."""
    from cowprof.reporters import attribution_series, worker_series

    samples = recording.samples
    doc: dict[str, Any] = {
        "version": RECORDING_VERSION, "path": recording.path,
        "record_version": f"{recording.header.get('version')}.{recording.header.get('minor', 0)}",
        "target": recording.header.get("target"), "created_at": recording.header.get("created_at"),
        "samples": len(samples), "failed": sum(1 for s in samples if s.error is not None),
        "end": recording.end.get("reason") if recording.end else None, "warnings": list(recording.warnings),
        "attributed_by": recording.attributed_by,
        "workers": [{"pid": s.pid, "started_at": s.started_at, "label": s.label, "times": s.times,
                     "copied_bytes": s.copied_bytes, "shared_bytes": s.shared_bytes, "new_bytes": s.new_bytes}
                    for s in worker_series(recording.reports)],
        "attribution": None,
    }
    series = attribution_series(recording)
    if series is not None:
        doc["attribution"] = {
            "times": series.times, "copied_bytes": series.copied_bytes,
            "types": [{"type": t, "bytes": v} for t, v in series.types],
            "causes": None if series.causes is None else [{"cause": c, "bytes": v} for c, v in series.causes],
            "causes_error": series.causes_error,
            "functions": [{"function": f.name, "file": f.filename, "line": f.firstlineno, "bytes": b,
                           "max_bytes": m} for f, b, m in series.functions],
            "function_times": series.function_times,
            "function_series": [{"function": n, "bytes": v} for n, v in series.function_series],
            "code_bytes": series.function_code_bytes,
            "missing": series.missing, "last_error": series.last_error,
        }
    return doc

