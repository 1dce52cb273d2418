"""JSON output of a page report: exactly ``PageReport.to_dict()`` (the format documented in
docs/CONTRACTS.md), one document per call. Named ``jsonout`` so it never shadows the stdlib ``json``."""
from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from cowprof.pages import PageReport

__all__ = ["render"]


def render(report: PageReport, *, file: IO[str] | None = None, indent: int | None = 2) -> None:
    """Write ``report`` as JSON followed by a newline (``indent=None``: one compact line)."""
    out = file if file is not None else sys.stdout
    out.write(json.dumps(report.to_dict(), indent=indent, allow_nan=False) + "\n")
    out.flush()
