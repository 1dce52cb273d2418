"""Reporters: render page reports and recordings they are given (table, JSON, live view, HTML).

Nothing here reads /proc or decides policy. This module holds the small helpers the reporters share:
byte formatting, the region order, and :func:`worker_series` (per-worker time series of a recording).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cowprof._values import Mutable

if TYPE_CHECKING:
    from cowprof.pages import PageReport, WorkerPages

__all__ = ["MiB", "REGION_ORDER", "WorkerSeries", "fmt_bytes", "fmt_mib", "fmt_size", "ordered_regions",
           "shared_fraction", "worker_series"]

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
