"""Reporters: render page reports, recordings and attributions they are given.

One interface: every reporter module has ``render(data, file=None, *, options...)``, which writes
``data`` to ``file`` (default stdout; the progress line: stderr) and returns nothing, or for the
live views what they pass on or end with:

* :mod:`~cowprof.reporters.table`: a page report by worker or region, or a recording's summary;
* :mod:`~cowprof.reporters.attribution`: an attribution by type or cause, or by function;
* :mod:`~cowprof.reporters.jsonout`: the JSON of any of these;
* :mod:`~cowprof.reporters.html`: a recording as a self-contained HTML page;
* :mod:`~cowprof.reporters.prometheus`: a page report as the Prometheus text exposition (bytes,
  to a binary file; :func:`~cowprof.reporters.prometheus.exposition` returns them, and the
  exporter serves the same families through its ``ReportCollector``);
* :mod:`~cowprof.reporters.live`: ``cowprof top``'s view of an iterable of samples, refreshed in
  place until it ends (returns the final view state);
* :mod:`~cowprof.reporters.progress`: ``cowprof record``'s progress line over an iterable of
  samples, which it passes on.

Nothing here reads /proc or decides policy. This module holds the small helpers the reporters share:
byte formatting, the region order, the causes' labels, :func:`worker_series` (per-worker time series of a recording)
and :func:`attribution_series` (a recording's copied bytes by type, cause and function over time).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cowprof._values import Mutable

if TYPE_CHECKING:
    from cowprof.functions import Function
    from cowprof.pages import PageReport, WorkerPages
    from cowprof.record import Recording

__all__ = ["CAUSE_LABELS", "MiB", "OTHER_TYPES", "REGION_ORDER", "AttributionSeries", "WorkerSeries",
           "attribution_series", "fmt_bytes", "fmt_mib", "fmt_size", "ordered_regions",
           "shared_fraction", "worker_series"]

#: what the reporters call each cause of :data:`cowprof.attribution.CAUSES` (the JSON keeps the keys)
CAUSE_LABELS: dict[str, str] = {
    "refcount": "refcount",
    "gc_header": "GC header",
    "str_hash": "str hash",
    "other_field": "other object field",
    "allocator": "allocator / free block",
    "identical": "identical content",
    "unknown": "unknown original",
}

MiB = 1 << 20
REGION_ORDER = ("python", "heap", "stack", "file", "other")
"""Display order of the region keys documented in docs/CONTRACTS.md; unknown keys follow, sorted."""


def fmt_bytes(n: float | None) -> str:
    """Human-readable binary size: ``"0 B"``, ``"12.0 KiB"``, ``"3.4 MiB"``, ``"1.20 GiB"``."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)):
        if n < scale * 1024 or unit == "TiB":
            value = n / scale
            digits = 2 if unit in ("GiB", "TiB") else 1
            return f"{sign}{value:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def fmt_size(n: float | None) -> str:
    """Compact binary size for table cells, at most 5 characters: ``"0"``, ``"512B"``, ``"9.87K"``,
    ``"36.7M"``, ``"400M"``, ``"1.20G"`` (K/M/G/T are KiB/MiB/GiB/TiB)."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    if n == 0:
        return "0"
    if n < 1000:
        return f"{sign}{n:.0f}B"
    for unit, scale in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        value = n / scale
        if value < 999.5 or unit == "T":
            if value < 9.995:
                return f"{sign}{value:.2f}{unit}"
            if value < 99.95:
                return f"{sign}{value:.1f}{unit}"
            return f"{sign}{value:.0f}{unit}"
    raise AssertionError("unreachable")


def fmt_mib(n: float | None, digits: int = 1) -> str:
    """Bytes as a plain MiB number (for columns whose header carries the unit)."""
    if n is None:
        return "-"
    return f"{n / MiB:.{digits}f}"


def shared_fraction(worker: WorkerPages) -> float | None:
    """Share of a worker's classified pages still shared with the master: shared / (shared+copied+new)."""
    total = worker.shared_bytes + worker.copied_bytes + worker.new_bytes
    return worker.shared_bytes / total if total else None


def ordered_regions(keys: Iterable[str]) -> list[str]:
    """Region keys in display order: the documented ones first, then any other key sorted."""
    keys = set(keys)
    return [k for k in REGION_ORDER if k in keys] + sorted(keys - set(REGION_ORDER))


class WorkerSeries(Mutable):
    """One worker's values over a recording, one entry per report it appears in."""

    __slots__ = ("pid", "started_at", "label", "times", "copied_bytes", "shared_bytes", "new_bytes",
                 "pss_bytes", "shared_pct")
    _fields = __slots__

    def __init__(self, pid: int, started_at: float, label: str) -> None:
        self.pid = pid
        self.started_at = started_at
        self.label = label
        self.times: list[float] = []
        """Unix seconds (``PageReport.taken_at``)."""
        self.copied_bytes: list[int] = []
        self.shared_bytes: list[int] = []
        self.new_bytes: list[int] = []
        self.pss_bytes: list[int] = []
        self.shared_pct: list[float | None] = []


def worker_series(reports: Iterable[PageReport]) -> list[WorkerSeries]:
    """Group the workers of consecutive reports into per-worker series, in order of first appearance.

    A worker is identified by (pid, started_at), so a PID reused by a recycled worker becomes a new
    series (labelled ``"1234 #2"``) instead of a jump in the old one.
    """
    by_key: dict[tuple[int, float], WorkerSeries] = {}
    seen_pids: dict[int, int] = {}
    for report in reports:
        for w in report.workers:
            key = (w.pid, w.started_at)
            series = by_key.get(key)
            if series is None:
                seen_pids[w.pid] = seen_pids.get(w.pid, 0) + 1
                nth = seen_pids[w.pid]
                label = str(w.pid) if nth == 1 else f"{w.pid} #{nth}"
                series = by_key[key] = WorkerSeries(pid=w.pid, started_at=w.started_at, label=label)
            series.times.append(report.taken_at)
            series.copied_bytes.append(w.copied_bytes)
            series.shared_bytes.append(w.shared_bytes)
            series.new_bytes.append(w.new_bytes)
            series.pss_bytes.append(w.pss_bytes)
            frac = shared_fraction(w)
            series.shared_pct.append(None if frac is None else 100.0 * frac)
    return list(by_key.values())


OTHER_TYPES = "(other types)"
"""The series of all types beyond the top ones (and of the types each sample's top-N cut off)."""


class AttributionSeries(Mutable):
    """A recording's attributed samples, all workers together: copied bytes by type and by cause
    over time, and the functions whose code objects were copied most in the last sample.

    ``times``: unix seconds (``PageReport.taken_at``) of each attributed sample. ``types``: the
    ``top`` types with the most copied bytes at any time (largest first), then
    :data:`OTHER_TYPES`, ``"no object"`` and ``"unknown"`` when not all zero; the values of each
    sample add up to its ``copied_bytes``. ``causes``: bytes per cause (all of
    :data:`cowprof.attribution.CAUSES` that are ever non-zero); None in a sample without the
    by-cause view; None altogether when no sample has it. ``causes_error``: why the last attributed
    sample has no by-cause view (when ``record --by cause`` was asked). ``functions``: (function,
    copied bytes in the last sample with functions, most at any time), largest first.
    ``function_series``: the shown functions' copied bytes at each of ``function_times``.
    ``missing``: samples with a report but no attribution (the reason of the last one is
    ``last_error``).
    """

    __slots__ = ("times", "copied_bytes", "types", "causes", "causes_error", "functions", "function_code_bytes",
                 "function_copied_bytes", "function_times", "function_series", "missing", "last_error")
    _fields = __slots__

    def __init__(self, *, times: list[float], copied_bytes: list[int], types: list[tuple[str, list[int]]],
                 causes: list[tuple[str, list[int | None]]] | None, causes_error: str | None,
                 functions: list[tuple[Function, int, int]], function_code_bytes: int, function_copied_bytes: int,
                 function_times: list[float], function_series: list[tuple[str, list[int]]], missing: int,
                 last_error: str | None) -> None:
        self.times = times
        self.copied_bytes = copied_bytes
        self.types = types
        self.causes = causes
        self.causes_error = causes_error
        self.functions = functions
        self.function_code_bytes = function_code_bytes
        self.function_copied_bytes = function_copied_bytes
        self.function_times = function_times
        self.function_series = function_series
        self.missing = missing
        self.last_error = last_error


def attribution_series(recording: Recording, *, top: int = 8, top_functions: int = 10) -> AttributionSeries | None:
    """The attribution of a recording over time, or None when it holds none (``record`` without
    ``--by``, or every attribution failed)."""
    from cowprof.attribution import CAUSES, NO_OBJECT, UNKNOWN_MEMORY

    attributed = [s for s in recording.samples if s.attribution is not None and s.report is not None]
    with_functions = [s for s in recording.samples if s.functions is not None]
    missing = [s for s in recording.samples if s.report is not None and s.attribution is None]
    if not attributed and not with_functions:
        return None
    totals = [dict(s.attribution.total_types()) for s in attributed if s.attribution is not None]
    special = {NO_OBJECT, UNKNOWN_MEMORY, OTHER_TYPES}
    peak: dict[str, int] = {}
    for t in totals:
        for name, b in t.items():
            if name not in special:
                peak[name] = max(peak.get(name, 0), b)
    shown = sorted(peak, key=lambda n: (-peak[n], n))[:top]
    copied = [sum(w.copied_bytes for w in s.attribution.workers) for s in attributed if s.attribution is not None]
    types = [(name, [t.get(name, 0) for t in totals]) for name in shown]
    no_object = [t.get(NO_OBJECT, 0) for t in totals]
    unknown = [t.get(UNKNOWN_MEMORY, 0) for t in totals]
    other = [c - sum(v[i] for _n, v in types) - no_object[i] - unknown[i] for i, c in enumerate(copied)]
    for name, values in ((OTHER_TYPES, other), (NO_OBJECT, no_object), (UNKNOWN_MEMORY, unknown)):
        if any(values):
            types.append((name, values))
    causes = None
    if any(s.attribution.has_causes for s in attributed):  # type: ignore[union-attr]
        per = [dict(s.attribution.total_causes() or []) if s.attribution.has_causes else None  # type: ignore[union-attr]
               for s in attributed]
        causes = [(c, [None if p is None else p.get(c, 0) for p in per]) for c in CAUSES
                  if any(p and p.get(c) for p in per)]
    causes_error = attributed[-1].attribution.causes_error if attributed else None  # type: ignore[union-attr]
    functions: list[tuple[Function, int, int]] = []
    function_series: list[tuple[str, list[int]]] = []
    code_bytes = fn_copied = 0
    if with_functions:
        last = with_functions[-1].functions
        assert last is not None
        code_bytes, fn_copied = last.code_bytes, last.copied_bytes
        per_sample = [{f.name + "@" + f.where: b for f, b in s.functions.functions} for s in with_functions]  # type: ignore[union-attr]
        for f, b in last.functions[:top_functions]:
            key = f.name + "@" + f.where
            values = [p.get(key, 0) for p in per_sample]
            functions.append((f, b, max(values)))
            function_series.append((f.name, values))
    return AttributionSeries(
        times=[s.report.taken_at for s in attributed], copied_bytes=copied, types=types,  # type: ignore[union-attr]
        causes=causes, causes_error=causes_error, functions=functions, function_code_bytes=code_bytes,
        function_copied_bytes=fn_copied,
        function_times=[s.report.taken_at if s.report is not None else s.time for s in with_functions],
        function_series=function_series, missing=len(missing),
        last_error=missing[-1].attribution_error if missing else None)
