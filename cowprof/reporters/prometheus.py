"""Prometheus reporter: turns the latest page report into Prometheus metric families.

Render only: this module never reads /proc or scans anything. The exporter process
(:mod:`cowprof.exporter`) keeps the latest :class:`~cowprof.pages.PageReport` and an
:class:`ExporterStatus`, and :class:`ReportCollector` builds every series afresh from them at each
collection. Nothing is cached between collections, so the series of a worker that is gone from the
latest report simply stop being exposed: no label set ever leaks, whatever the worker churn.

Conventions (https://prometheus.io/docs/practices/naming/): base units (bytes, seconds), ``_bytes``
/ ``_seconds`` / ``_total`` suffixes, one label only (``pid``) on per-worker series so the
cardinality is the number of live workers; the worker's start time is a gauge of its own, never a
label. The metric names and meanings are documented in ``docs/fleet.md``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

if TYPE_CHECKING:
    from cowprof.pages import PageReport

__all__ = [
    "ExporterStatus",
    "MASTER_GAUGES",
    "ReportCollector",
    "WORKER_GAUGES",
    "exposition",
    "metric_families",
    "render",
]

# (metric name, attribute of WorkerPages, help text)
WORKER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("cowprof_worker_shared_bytes", "shared_bytes",
     "Resident bytes of the worker still shared with the master (never copied)."),
    ("cowprof_worker_copied_bytes", "copied_bytes",
     "Bytes the worker inherited from the master and then copied on write."),
    ("cowprof_worker_new_bytes", "new_bytes",
     "Private bytes the worker allocated after the fork (not inherited from the master)."),
    ("cowprof_worker_rss_bytes", "rss_bytes", "Resident set size of the worker."),
    ("cowprof_worker_pss_bytes", "pss_bytes",
     "Proportional set size of the worker (shared pages divided among their sharers)."),
    ("cowprof_worker_uss_bytes", "uss_bytes",
     "Unique set size of the worker (memory freed if it exited)."),
    ("cowprof_worker_swap_bytes", "swap_bytes", "Swapped-out bytes of the worker."),
    ("cowprof_worker_start_time_seconds", "started_at",
     "Start time of the worker since the Unix epoch in seconds."),
)

# (metric name, attribute of MasterPages, help text)
MASTER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("cowprof_master_rss_bytes", "rss_bytes", "Resident set size of the master."),
    ("cowprof_master_pss_bytes", "pss_bytes", "Proportional set size of the master."),
    ("cowprof_master_uss_bytes", "uss_bytes", "Unique set size of the master."),
    ("cowprof_master_swap_bytes", "swap_bytes", "Swapped-out bytes of the master."),
    ("cowprof_master_diverged_bytes", "diverged_bytes",
     "Bytes the master itself wrote after forking its workers (its own copy-on-write copies)."),
    ("cowprof_master_start_time_seconds", "started_at",
     "Start time of the master since the Unix epoch in seconds."),
)


@dataclass(frozen=True, slots=True)
class ExporterStatus:
    """What the exporter knows about itself, next to the latest report.

    ``up`` is true while attached to a live pre-fork tree whose latest scan succeeded;
    ``scans_total`` / ``scrape_errors_total`` only ever grow; ``scan_seconds`` and ``last_scan_at``
    describe the latest successful scan (``None`` before the first one); ``drift_bytes`` and
    ``pages_read_at`` the report it holds (the exporter's, when it keeps a report within its
    tolerance: ``cowprof_pages_drift_bytes``, ``cowprof_pages_read_timestamp_seconds``).
    """

    up: bool = False
    master_pid: int | None = None
    scans_total: int = 0
    scrape_errors_total: int = 0
    scan_seconds: float | None = None
    last_scan_at: float | None = None
    drift_bytes: float | None = None
    """Bytes that can have changed since the report's page tables were read (None: not known)."""
    pages_read_at: float | None = None
    """When the report's page tables were read (None: not known)."""


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def metric_families(report: PageReport | Any | None, status: ExporterStatus) -> list[Metric]:
    """Every metric family for one collection.

    ``report`` is the latest :class:`~cowprof.pages.PageReport` (anything with the same attributes
    works) or ``None`` when there is no current data: then only the exporter's own series are
    produced (``cowprof_up`` 0, the counters, the last scan time), no master or worker series.
    """
    out: list[Metric] = [
        _gauge("cowprof_up", "1 when attached to a live pre-fork tree and its latest scan succeeded.",
               1.0 if status.up and report is not None else 0.0),
        CounterMetricFamily("cowprof_scans", "Scans of the tree that succeeded.",
                            value=float(status.scans_total)),
        CounterMetricFamily("cowprof_scrape_errors",
                            "Scans of the tree that failed (unreadable /proc file, process gone "
                            "mid-read, unexpected error).",
                            value=float(status.scrape_errors_total)),
    ]
    if status.scan_seconds is not None:
        out.append(_gauge("cowprof_scan_duration_seconds",
                          "Wall time the latest successful scan took (tree discovery included).",
                          status.scan_seconds))
    if status.last_scan_at is not None:
        out.append(_gauge("cowprof_last_scan_timestamp_seconds",
                          "When the latest successful scan was taken, since the Unix epoch.",
                          status.last_scan_at))
    if report is None:
        return out
    if status.pages_read_at is not None:
        out.append(_gauge("cowprof_pages_read_timestamp_seconds",
                          "When the page tables behind the latest report were read, since the Unix "
                          "epoch (earlier than the last scan while the report is kept within the "
                          "tolerance).", status.pages_read_at))
    if status.drift_bytes is not None:
        out.append(_gauge("cowprof_pages_drift_bytes",
                          "Bound on the bytes that can have changed class since the page tables were "
                          "read (page faults of the tree since then, in bytes); 0 when exact.",
                          status.drift_bytes))

    master = report.master
    out.append(_gauge("cowprof_master_pid", "PID of the master process being watched.", master.pid))
    for name, attr, doc in MASTER_GAUGES:
        out.append(_gauge(name, doc, getattr(master, attr)))
    out.append(_gauge("cowprof_workers", "Number of live workers of the master.",
                      len(report.workers)))
    out.append(_gauge("cowprof_scan_privileged",
                      "1 when the latest scan compared physical frames (root), 0 when it used the "
                      "exclusive-mapping bit.", 1.0 if report.privileged else 0.0))
    # Sort by PID so the exposition is stable from one scrape to the next.
    workers = sorted(report.workers, key=lambda w: w.pid)
    for name, attr, doc in WORKER_GAUGES:
        fam = GaugeMetricFamily(name, doc, labels=["pid"])
        for w in workers:
            fam.add_metric([str(w.pid)], float(getattr(w, attr)))
        out.append(fam)
    return out


class ReportCollector:
    """A custom collector (``prometheus_client.registry.Collector``) over a snapshot supplier.

    ``snapshot()`` returns ``(report or None, ExporterStatus)``; it is called once per collection,
    from the HTTP server's thread, so it must return an immutable, consistent pair (the exporter
    swaps one tuple reference, which is atomic).
    """

    def __init__(self, snapshot: Callable[[], tuple[PageReport | Any | None, ExporterStatus]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of the current snapshot."""
        report, status = self._snapshot()
        yield from metric_families(report, status)


def render(report: PageReport | Any | None, file: IO[bytes] | None = None, *,
           status: ExporterStatus | None = None) -> None:
    """Write :func:`exposition` of ``report`` to the binary ``file`` (default stdout's buffer)."""
    out = file if file is not None else sys.stdout.buffer
    out.write(exposition(report, status))
    out.flush()


def exposition(report: PageReport | Any | None, status: ExporterStatus | None = None) -> bytes:
    """The Prometheus text exposition of one report (e.g. for node_exporter's textfile collector),
    with ``status`` (default: that of one successful scan, or of none without a report); the
    exporter serves the same families live (:class:`ReportCollector`)."""
    if status is None:
        status = ExporterStatus(
            up=report is not None,
            master_pid=report.master.pid if report is not None else None,
            scans_total=1 if report is not None else 0,
            scan_seconds=getattr(report, "scan_seconds", None),
            last_scan_at=getattr(report, "taken_at", None),
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(lambda: (report, status)))
    text: bytes = generate_latest(registry)
    return text
