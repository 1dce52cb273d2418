"""Rich tables for one page report (``cowprof snapshot``) and for a recording (``cowprof report``).

Only rendering: the data comes from :mod:`cowprof.pages` / :mod:`cowprof.record`. :func:`render`
takes either, and the file to print to (default stdout), like every reporter's ``render``.
"""
from __future__ import annotations

import datetime as _dt
from typing import IO, TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cowprof.reporters import attribution_series, fmt_size, ordered_regions, shared_fraction, worker_series

if TYPE_CHECKING:
    from cowprof.pages import PageReport
    from cowprof.record import Recording

__all__ = ["BY_CHOICES", "recording_summary", "region_table", "render", "report_caption", "worker_table"]

BY_CHOICES = ("worker", "region")
"""Groupings :func:`render` knows. Attribution adds more (``type``, ``cause``) by extending this and
the dispatch in :func:`render`."""


def _console(file: IO[str] | None) -> Console:
    # highlight=False: numbers keep one colour; soft_wrap off so tables keep their layout in pipes
    return Console(file=file, highlight=False)


def _pct(frac: float | None) -> str:
    return "-" if frac is None else f"{100.0 * frac:.1f}%"


def report_caption(report: PageReport) -> str:
    """One line: when, how (mode), how long the scan took, and which workers vanished mid-scan."""
    when = _dt.datetime.fromtimestamp(report.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    caption = f"{when}  mode {report.mode}  scan {report.scan_seconds:.3f}s"
    if report.gone:
        caption += "  gone during scan: " + " ".join(str(p) for p in report.gone)
    return caption


def worker_table(report: PageReport, *, title: str | None = None) -> Table:
    """Master row, workers sorted by copied bytes (largest first), and a totals row.

    Totals: RSS/PSS/USS/swap include the master (the PSS total is the tree's real footprint);
    shared, copied and new are the workers' sums. The master's own post-fork writes show as its
    ``diverged`` bytes, in brackets in the Copied column. Sizes are binary (K = KiB, M = MiB).
    """
    m = report.master
    workers = sorted(report.workers, key=lambda w: (-w.copied_bytes, w.pid))
    show_swap = m.swap_bytes > 0 or any(w.swap_bytes for w in workers)
    table = Table(title=title, title_justify="left",
                  caption=Text(report_caption(report), style="dim"), caption_justify="left",
                  show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    n = len(workers)
    tot = {
        "rss": m.rss_bytes + sum(w.rss_bytes for w in workers),
        "pss": m.pss_bytes + sum(w.pss_bytes for w in workers),
        "uss": m.uss_bytes + sum(w.uss_bytes for w in workers),
        "swap": m.swap_bytes + sum(w.swap_bytes for w in workers),
        "shared": sum(w.shared_bytes for w in workers),
        "copied": sum(w.copied_bytes for w in workers),
        "new": sum(w.new_bytes for w in workers),
    }
    classified = tot["shared"] + tot["copied"] + tot["new"]
    columns = [
        ("PID", f"total ({n} worker{'s' if n != 1 else ''})"),
        ("RSS", fmt_size(tot["rss"])),
        ("PSS", fmt_size(tot["pss"])),
        ("USS", fmt_size(tot["uss"])),
        ("Swap", fmt_size(tot["swap"])),
        ("Shared", fmt_size(tot["shared"])),
        ("Copied", fmt_size(tot["copied"])),
        ("New", fmt_size(tot["new"])),
        ("Shared%", _pct(tot["shared"] / classified if classified else None)),
    ]
    for header, footer in columns:
        if header == "Swap" and not show_swap:
            continue
        table.add_column(header, footer=footer, justify="left" if header == "PID" else "right",
                         style="bold" if header == "Copied" else None, no_wrap=True,
                         min_width=len(footer) if header == "PID" else None)

    def row(*cells: str | Text, swap: str, end_section: bool = False) -> None:
        values = list(cells)
        if show_swap:
            values.insert(4, swap)
        table.add_row(*values, end_section=end_section)

    row(Text(f"{m.pid} master", style="cyan"), fmt_size(m.rss_bytes), fmt_size(m.pss_bytes),
        fmt_size(m.uss_bytes), fmt_size(getattr(m, "shared_bytes", None)),
        Text(f"({fmt_size(m.diverged_bytes)})", style="dim"), fmt_size(getattr(m, "new_bytes", None)),
        "", swap=fmt_size(m.swap_bytes), end_section=True)
    for w in workers:
        row(str(w.pid), fmt_size(w.rss_bytes), fmt_size(w.pss_bytes), fmt_size(w.uss_bytes),
            fmt_size(w.shared_bytes), fmt_size(w.copied_bytes), fmt_size(w.new_bytes),
            _pct(shared_fraction(w)), swap=fmt_size(w.swap_bytes))
    return table


def region_table(report: PageReport, *, title: str | None = None) -> Table:
    """One row per region (python, heap, stack, file, other): the workers' summed pages.

    ``Of copied`` is the region's share of all copied bytes: where copy-on-write happens.
    """
    keys = ordered_regions(
        set(report.master.regions) | {k for w in report.workers for k in w.regions})
    sums = {k: [0, 0, 0] for k in keys}
    for w in report.workers:
        for k, r in w.regions.items():
            s = sums[k]
            s[0] += r.shared_bytes
            s[1] += r.copied_bytes
            s[2] += r.new_bytes
    total_copied = sum(s[1] for s in sums.values())
    table = Table(title=title, title_justify="left",
                  caption=Text(report_caption(report), style="dim"), caption_justify="left",
                  show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Region", footer=f"total ({len(report.workers)} workers)")
    table.add_column("Shared", footer=fmt_size(sum(s[0] for s in sums.values())), justify="right")
    table.add_column("Copied", footer=fmt_size(total_copied), justify="right", style="bold")
    table.add_column("New", footer=fmt_size(sum(s[2] for s in sums.values())), justify="right")
    table.add_column("Of copied", footer="100.0%" if total_copied else "-", justify="right")
    for k in sorted(keys, key=lambda k: -sums[k][1]):
        shared, copied, new = sums[k]
        table.add_row(Text(k), fmt_size(shared), fmt_size(copied), fmt_size(new),
                      _pct(copied / total_copied if total_copied else None))
    return table


def render(data: PageReport | Recording, file: IO[str] | None = None, *, by: str = "worker") -> None:
    """Print a page report as a table grouped ``by`` one of :data:`BY_CHOICES`, or a recording as
    its summary (:func:`recording_summary`; ``by`` stays ``worker``), to ``file`` (default stdout)."""
    from cowprof.pagereport import PageReport

    if by not in BY_CHOICES:
        raise ValueError(f"unknown grouping {by!r}; expected one of {', '.join(BY_CHOICES)}")
    if not isinstance(data, PageReport):
        if by != "worker":
            raise ValueError("a recording has one summary; by must be 'worker'")
        _console(file).print(recording_summary(data))
        return
    title = f"cowprof: master {data.master.pid}, {len(data.workers)} workers"
    if by == "worker":
        table: RenderableType = worker_table(data, title=title)
    else:
        table = region_table(data, title=title + ", by region")
    _console(file).print(table)


def recording_summary(recording: Recording) -> RenderableType:
    """The terminal summary of a recording: what was recorded, each worker's copied growth, and
    the last report by worker and by region."""
    h = recording.header
    target = h.get("target", {})
    reports = recording.reports
    errors = [s for s in recording.samples if s.error is not None]
    # user data (paths, command lines, error messages) goes in as plain text, never as markup
    head = Text()
    head.append(recording.path, style="bold")
    lines = [f": cowprof record v{h.get('version')}.{h.get('minor', 0)}, target master {target.get('pid', '?')}"]
    cmd = target.get("cmdline")
    if cmd:
        lines.append("command: " + " ".join(str(c) for c in cmd)[:200])
    if recording.samples:
        span = recording.samples[-1].elapsed - recording.samples[0].elapsed
        lines.append(f"{len(recording.samples)} samples over {span:.1f}s "
                     f"({len(errors)} failed), interval {target.get('interval', '?')}s")
    else:
        lines.append("no samples")
    if recording.end is not None:
        lines.append(f"ended: {recording.end.get('reason', '?')}")
    else:
        lines.append("ended: no end line (the recorder was killed or is still running)")
    if errors:
        lines.append(f"last error: {errors[-1].error}")
    head.append("\n".join(lines))
    parts: list[RenderableType] = [head]
    for w in recording.warnings:
        parts.append(Text(f"warning: {w}", style="yellow"))
    series = worker_series(reports)
    if series:
        t = Table(title="Workers over the recording (sorted by last copied)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("Worker", "Seen", "Samples", "Copied first", "last", "max", "Copied/s",
                    "Shared%"):
            t.add_column(col, justify="left" if col == "Worker" else "right", no_wrap=True)
        for s in sorted(series, key=lambda s: (-s.copied_bytes[-1], s.pid)):
            span = s.times[-1] - s.times[0]
            rate = (s.copied_bytes[-1] - s.copied_bytes[0]) / span if span > 0 else None
            last_pct = s.shared_pct[-1]
            t.add_row(s.label, f"{span:.0f}s", str(len(s.times)), fmt_size(s.copied_bytes[0]),
                      fmt_size(s.copied_bytes[-1]), fmt_size(max(s.copied_bytes)),
                      "-" if rate is None else fmt_size(rate),
                      "-" if last_pct is None else f"{last_pct:.1f}%")
        parts.append(t)
    if reports:
        last = reports[-1]
        parts.append(worker_table(last, title="Last sample, by worker"))
        parts.append(region_table(last, title="Last sample, by region"))
    attributed = attribution_series(recording)
    if attributed is not None:
        from cowprof.reporters.attribution import over_time_tables

        parts.extend(over_time_tables(attributed))
    elif recording.attributed_by:
        last_error = next((s.attribution_error for s in reversed(recording.samples) if s.attribution_error), None)
        parts.append(Text(f"recorded --by {','.join(recording.attributed_by)}, but no sample has an attribution"
                          + (f": {last_error}" if last_error else ""), style="yellow"))
    return Group(*parts)
