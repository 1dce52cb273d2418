"""The ``cowprof top`` view: per-worker memory and copy-on-write rate, refreshed from samples.

:class:`TopView` is fed :class:`~cowprof.sampler.Sample` objects and builds a Rich renderable; it
keeps just enough state to compute each worker's copied MiB/s since the previous refresh and to say
which workers appeared or disappeared (``max_requests`` recycling, HUP reloads). The refresh loop
(Rich ``Live`` on a terminal, one table per sample otherwise) is :func:`render`.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from cowprof.reporters import MiB, fmt_size

if TYPE_CHECKING:
    from cowprof.pages import PageReport
    from cowprof.sampler import Sample

__all__ = ["TopView", "render"]


class TopView:
    """State of the live view: the last report, per-worker copied rates, workers that came and went."""

    def __init__(self, *, interval: float, max_cpu: float | None = None) -> None:
        self.interval = interval
        self.max_cpu = max_cpu
        self.gap: float | None = None
        """Seconds between the last two samples (more than ``interval`` when the CPU cap stretched it)."""
        self.report: PageReport | None = None
        self.sample: Sample | None = None
        self.error: str | None = None
        self.rates: dict[int, float | None] = {}
        """Copied bytes per second since the previous report holding the same worker (None: new)."""
        self.appeared: list[int] = []
        self.disappeared: list[int] = []
        self.samples = 0
        self.failed = 0
        self._prev: dict[int, tuple[float, float, int]] = {}  # pid -> (started_at, taken_at, copied)

    def update(self, sample: Sample) -> None:
        """Take one sample: a new report updates rates and worker changes; an error is shown as such."""
        self.samples += 1
        if self.sample is not None:
            self.gap = sample.elapsed - self.sample.elapsed
        self.sample = sample
        if sample.report is None:
            self.failed += 1
            self.error = str(sample.error) if sample.error is not None else "sample failed"
            return
        self.error = None
        report = sample.report
        now: dict[int, tuple[float, float, int]] = {}
        rates: dict[int, float | None] = {}
        for w in report.workers:
            prev = self._prev.get(w.pid)
            rate = None
            now[w.pid] = (w.started_at, report.taken_at, w.copied_bytes)
            # same PID and start time: the same worker (a reused PID is a new worker)
            if prev is not None and prev[0] == w.started_at:
                if report.taken_at > prev[1]:
                    rate = (w.copied_bytes - prev[2]) / (report.taken_at - prev[1])
                else:  # the same page data again (top's scanner reused it): the same rate
                    rate = self.rates.get(w.pid)
                    now[w.pid] = prev
            rates[w.pid] = rate
        if self.report is not None:
            self.appeared = sorted(p for p, v in now.items()
                                   if p not in self._prev or self._prev[p][0] != v[0])
            self.disappeared = sorted(p for p, v in self._prev.items()
                                      if p not in now or now[p][0] != v[0])
        self._prev = now
        self.rates = rates
        self.report = report

    def _header(self) -> Text:
        text = Text()
        r = self.report
        if r is None:
            text.append("cowprof top: waiting for a first sample", style="bold")
        else:
            when = _dt.datetime.fromtimestamp(r.taken_at).strftime("%H:%M:%S")
            text.append(f"cowprof top  master {r.master.pid}  {len(r.workers)} workers  ", style="bold")
            text.append(f"every {self.interval:g}s  {when}  scan {r.scan_seconds:.3f}s  {r.mode}")
            if self.gap is not None and self.gap > 1.2 * self.interval:
                why = f" (CPU cap {100 * self.max_cpu:g}%)" if self.max_cpu else ""
                text.append(f"\nrefreshing every {self.gap:.1f}s{why}", style="yellow")
            if self.sample is not None and self.sample.lateness > 0.05:
                text.append(f"  late {self.sample.lateness:.2f}s", style="yellow")
            if self.sample is not None and self.sample.drift_pages:
                age = max(0.0, self.sample.time - r.taken_at)
                text.append(f"\npages read {age:.0f}s ago; at most {fmt_size(self.sample.drift_pages * r.page_size)}"
                            " can have changed since", style="dim")
        if self.appeared:
            text.append("\nnew workers: " + " ".join(map(str, self.appeared)), style="green")
        if self.disappeared:
            text.append("\nworkers gone: " + " ".join(map(str, self.disappeared)), style="dim")
        if self.error is not None:
            text.append(f"\nlast sample failed ({self.failed} of {self.samples}): {self.error}",
                        style="yellow")
        return text

    def renderable(self) -> RenderableType:
        """Header plus the table of the last good report.

        The table is laid out here as fixed-width text rather than with a Rich ``Table``: it is
        redrawn every refresh, and Rich's table layout costs ~10 ms a time, as much as a whole
        refresh of an unchanged tree."""
        r = self.report
        if r is None:
            return self._header()
        workers = sorted(r.workers, key=lambda w: (-w.copied_bytes, w.pid))
        rates = [v for v in self.rates.values() if v is not None]
        total_rate = sum(rates) if rates else None
        head = ("PID", "RSS", "PSS", "USS", "Shared", "Copied", "New", "Copy MiB/s")
        m = r.master
        rows: list[tuple[str, ...]] = [(f"{m.pid} master", fmt_size(m.rss_bytes), fmt_size(m.pss_bytes),
                                        fmt_size(m.uss_bytes), "", "", "", "")]
        rows += [(str(w.pid), fmt_size(w.rss_bytes), fmt_size(w.pss_bytes), fmt_size(w.uss_bytes),
                  fmt_size(w.shared_bytes), fmt_size(w.copied_bytes), fmt_size(w.new_bytes),
                  _rate(self.rates.get(w.pid))) for w in workers]
        foot = (f"{len(workers)} workers",
                fmt_size(m.rss_bytes + sum(w.rss_bytes for w in workers)),
                fmt_size(m.pss_bytes + sum(w.pss_bytes for w in workers)),
                fmt_size(m.uss_bytes + sum(w.uss_bytes for w in workers)),
                fmt_size(sum(w.shared_bytes for w in workers)),
                fmt_size(sum(w.copied_bytes for w in workers)),
                fmt_size(sum(w.new_bytes for w in workers)), _rate(total_rate))
        widths = [max(len(row[i]) for row in (head, foot, *rows)) for i in range(len(head))]

        def line(cells: tuple[str, ...], style: str | None = None, first: str | None = None) -> Text:
            text = Text(style=style or "")
            for i, (cell, w) in enumerate(zip(cells, widths)):
                text.append("  " if i else "")
                cell_text = cell.ljust(w) if i == 0 else cell.rjust(w)
                if i == 0 and first:
                    text.append(cell_text, style=first)
                elif i == len(cells) - 1 and style is None:
                    text.append(cell_text, style="bold")
                else:
                    text.append(cell_text)
            return text

        rule = Text("  ".join("─" * w for w in widths), style="dim")
        lines = [line(head, "bold"), rule, line(rows[0], first="cyan"), rule]
        lines += [line(row) for row in rows[1:]]
        lines += [rule, line(foot, "bold")]
        return Group(self._header(), Text(""), *lines)


def _rate(bytes_per_s: float | None) -> str:
    return "new" if bytes_per_s is None else f"{bytes_per_s / MiB:.2f}"


def render(samples: Iterable[Sample], file: IO[str] | None = None, *, interval: float,
           live: bool | None = None, max_cpu: float | None = None) -> TopView:
    """Show ``samples`` on ``file`` (default stdout) until the iterable ends; returns the final
    view state.

    ``live=None`` picks Rich ``Live`` (refresh in place) when ``file`` is a terminal; otherwise
    each sample prints one complete table (pipes, logs, tests). KeyboardInterrupt propagates: the
    caller decides that Ctrl-C is a normal exit.
    """
    console = Console(file=file, highlight=False)
    view = TopView(interval=interval, max_cpu=max_cpu)
    if live is None:
        live = console.is_terminal
    if not live:
        for sample in samples:
            view.update(sample)
            console.print(view.renderable())
            console.print()
            console.file.flush()
        return view
    with Live(view.renderable(), console=console, auto_refresh=False, transient=False,
              redirect_stdout=False, redirect_stderr=False) as display:
        for sample in samples:
            view.update(sample)
            display.update(view.renderable(), refresh=True)
    return view
