"""JSON output of a page report: ``PageReport.to_dict()`` (the format documented in docs/CONTRACTS.md),
plus the top-level keys the caller adds (``cowprof snapshot --json``: ``late_imports``), one
document per call. Named ``jsonout`` so it never shadows the stdlib ``json``."""
from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowprof.pages import PageReport

__all__ = ["render"]


def render(report: PageReport, *, file: IO[str] | None = None, indent: int | None = 2,
           extra: dict[str, Any] | None = None) -> None:
    """Write ``report`` as JSON followed by a newline (``indent=None``: one compact line);
    ``extra`` keys are added at the top level (they never replace a key of the report)."""
    out = file if file is not None else sys.stdout
    doc = report.to_dict()
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    out.write(json.dumps(doc, indent=indent, allow_nan=False) + "\n")
    out.flush()
