"""Rich tables for attribution (``cowprof snapshot PID --by type|cause|function``, and
``cowprof report`` of a recording made with ``record --by``); its JSON is
:mod:`cowprof.reporters.jsonout`'s.

Only rendering: the data comes from :func:`cowprof.attribution.attribute` /
:func:`cowprof.attribution.snapshot` / :func:`cowprof.functions.snapshot`. :func:`render` takes
either kind and the file to print to (default stdout), like every reporter's ``render``.
"""
from __future__ import annotations

from typing import IO, TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cowprof.reporters import fmt_size

if TYPE_CHECKING:
    from cowprof.attribution import Attribution, WorkerAttribution
    from cowprof.functions import FunctionAttribution
    from cowprof.reporters import AttributionSeries

__all__ = ["MAX_WORKER_COLUMNS", "cause_table", "function_tables", "over_time_tables", "render", "type_table"]

#: at most this many per-worker columns (the workers with the most copied bytes); JSON has all
MAX_WORKER_COLUMNS = 6


def _console(file: IO[str] | None) -> Console:
    return Console(file=file, highlight=False)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _shown_workers(attr: Attribution) -> list[WorkerAttribution]:
    return sorted(attr.workers, key=lambda w: (-w.copied_bytes, w.pid))[:MAX_WORKER_COLUMNS]


def _caption(attr: Attribution, extra: str = "") -> str:
    hidden = len(attr.workers) - min(len(attr.workers), MAX_WORKER_COLUMNS)
    origin = (f"heap map: {attr.heapmap_records:,} records" if attr.source == "heapmap"
              else f"objects from the master's {attr.source}: {attr.heapmap_records:,} allocations")
    parts = [origin, f"mode {attr.mode}",
             f"attribution {attr.seconds:.2f}s"]
    if hidden:
        parts.append(f"{hidden} more worker{'s' if hidden != 1 else ''} in --json")
    if extra:
        parts.append(extra)
    return "  ".join(parts)


def type_table(attr: Attribution, *, top: int = 10, title: str | None = None) -> Table:
    """Top-``top`` types by copied bytes over all workers, then the other types and "no object";
    one column per worker (the largest :data:`MAX_WORKER_COLUMNS`)."""
    from cowprof.attribution import NO_OBJECT, UNKNOWN_MEMORY

    total_copied = sum(w.copied_bytes for w in attr.workers)
    totals = [(t, b) for t, b in attr.total_types() if t not in (NO_OBJECT, UNKNOWN_MEMORY)]
    shown = totals[:top]
    rest = totals[top:]
    workers = _shown_workers(attr)
    per_worker = [dict(w.types) for w in workers]
    table = Table(title=title, title_justify="left", caption=_caption(attr), caption_justify="left",
                  show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Type", footer=f"copied ({len(attr.workers)} workers)", no_wrap=True)
    table.add_column("Copied", footer=fmt_size(total_copied), justify="right", style="bold")
    table.add_column("Of copied", footer="100.0%" if total_copied else "-", justify="right")
    for w in workers:
        table.add_column(str(w.pid), footer=fmt_size(w.copied_bytes), justify="right")

    def row(name: str, total: int, cells: list[int], style: str | None = None) -> None:
        table.add_row(Text(name, style=style or ""), fmt_size(total), _pct(total, total_copied),
                      *(fmt_size(c) for c in cells))

    for name, b in shown:
        row(name, b, [pw.get(name, 0) for pw in per_worker])
    if rest:
        names = {t for t, _b in rest}
        row(f"(other types: {len(rest)})", sum(b for _t, b in rest),
            [sum(v for k, v in pw.items() if k in names) for pw in per_worker], style="dim")
    row(NO_OBJECT, sum(w.no_object_bytes for w in attr.workers), [w.no_object_bytes for w in workers],
        style="dim")
    if any(w.unknown_bytes for w in attr.workers):
        row(f"{UNKNOWN_MEMORY} (no verifiable object)", sum(w.unknown_bytes for w in attr.workers),
            [w.unknown_bytes for w in workers], style="dim")
    return table


def cause_table(attr: Attribution, *, title: str | None = None) -> Table:
    """Copied bytes per cause over all workers (largest first) with the changed 64-bit words, one
    column per worker; the caption says where the originals were read from."""
    from cowprof.attribution import CAUSES, ORIGINALS
    from cowprof.reporters import CAUSE_LABELS

    total_copied = sum(w.copied_bytes for w in attr.workers)
    workers = _shown_workers(attr)
    sums = dict.fromkeys(CAUSES, 0)
    words = dict.fromkeys(CAUSES, 0)
    origins = dict.fromkeys(ORIGINALS, 0)
    for w in attr.workers:
        for c in CAUSES:
            sums[c] += (w.causes or {}).get(c, 0)
            words[c] += (w.changed_words or {}).get(c, 0)
        for o in ORIGINALS:
            origins[o] += (w.originals or {}).get(o, 0)
    labels = {"master": "master (still shared)", "sibling": "sibling worker",
              "master_assumed": "master (assumed unchanged)", "none": "none"}
    src = ", ".join(f"{labels[o]} {fmt_size(b)}" for o, b in origins.items() if b)
    table = Table(title=title, title_justify="left", caption=_caption(attr, f"originals: {src or '-'}"),
                  caption_justify="left", show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Cause", footer=f"copied ({len(attr.workers)} workers)", no_wrap=True)
    table.add_column("Copied", footer=fmt_size(total_copied), justify="right", style="bold")
    table.add_column("Of copied", footer="100.0%" if total_copied else "-", justify="right")
    table.add_column("Words", footer=f"{sum(words.values()):,}", justify="right")
    for w in workers:
        table.add_column(str(w.pid), footer=fmt_size(w.copied_bytes), justify="right")
    for c in sorted(CAUSES, key=lambda c: (-sums[c], CAUSES.index(c))):
        if not sums[c]:
            continue
        table.add_row(CAUSE_LABELS[c], fmt_size(sums[c]), _pct(sums[c], total_copied),
                      f"{words[c]:,}" if words[c] else "-",
                      *(fmt_size((w.causes or {}).get(c, 0)) for w in workers))
    return table


def render(data: Attribution | FunctionAttribution, file: IO[str] | None = None, *, by: str | None = None,
           top: int = 10) -> None:
    """Print an attribution to ``file`` (default stdout): by ``type`` (its default) or by ``cause``
    (without the rights to read process memory: what is needed, then the by-type table), or a
    function attribution (``by`` ``function``, its default): the by-function and by-module tables.
    ``top`` rows of types, functions and modules. The JSON of either is :mod:`cowprof.reporters.jsonout`'s."""
    from cowprof.attribution import Attribution

    if not isinstance(data, Attribution):
        if by not in (None, "function"):
            raise ValueError(f"unknown grouping {by!r} of a function attribution; expected 'function'")
        _console(file).print(Group(*function_tables(data, top=top)))
        return
    by = by or "type"
    title = f"cowprof: master {data.master}, {len(data.workers)} workers"
    parts: list[RenderableType] = []
    if by == "cause" and data.has_causes:
        parts.append(cause_table(data, title=title + ", copied bytes by cause"))
    elif by in ("cause", "type"):
        if by == "cause":
            parts.append(Text(f"by cause unavailable: {data.causes_error}; showing copied bytes by type",
                              style="yellow"))
        parts.append(type_table(data, top=top, title=title + ", copied bytes by type"))
    else:
        raise ValueError(f"unknown grouping {by!r}; expected 'type' or 'cause'")
    _console(file).print(Group(*parts))


def function_tables(fa: FunctionAttribution, *, top: int = 10) -> list[Table]:
    """Top-``top`` functions by copied bytes of their code objects, and top modules by copied bytes
    of the objects whose type they define (all workers)."""
    src = "heap map" if fa.source == "heapmap" else fa.source
    fn = Table(title=f"cowprof: master {fa.master}, copied bytes of code objects by function",
               title_justify="left", show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False,
               caption=f"code objects {fmt_size(fa.code_bytes)} of {fmt_size(fa.copied_bytes)} copied "
                       f"({_pct(fa.code_bytes, fa.copied_bytes)}); objects from the {src}; "
                       f"{fa.seconds:.2f}s", caption_justify="left")
    fn.add_column("Function", footer="code objects", no_wrap=True)
    fn.add_column("File:line", footer="", overflow="fold")
    fn.add_column("Copied", footer=fmt_size(fa.code_bytes), justify="right", style="bold")
    fn.add_column("Of copied", footer=_pct(fa.code_bytes, fa.copied_bytes), justify="right")
    for f, b in fa.functions[:top]:
        fn.add_row(f.name, f.where, fmt_size(b), _pct(b, fa.copied_bytes))
    rest = fa.functions[top:]
    if rest:
        b = sum(x for _f, x in rest)
        fn.add_row(Text(f"(other functions: {len(rest)})", style="dim"), "", fmt_size(b), _pct(b, fa.copied_bytes))
    if fa.unnamed_code_bytes:
        fn.add_row(Text("(code objects not readable)", style="dim"), "", fmt_size(fa.unnamed_code_bytes),
                   _pct(fa.unnamed_code_bytes, fa.copied_bytes))
    mod = Table(title="copied bytes of objects by the module of their type", title_justify="left",
                box=box.SIMPLE_HEAD, pad_edge=False)
    mod.add_column("Module", no_wrap=True)
    mod.add_column("Copied", justify="right", style="bold")
    mod.add_column("Of copied", justify="right")
    for m, b in fa.modules[:top]:
        mod.add_row(m, fmt_size(b), _pct(b, fa.copied_bytes))
    return [fn, mod]


def over_time_tables(series: AttributionSeries) -> list[RenderableType]:
    """``cowprof report`` of a recording made with ``--by``: copied bytes by type and by cause
    (first, last and largest value over the recording, share of the last sample) and the top
    functions of the last sample."""
    from cowprof.reporters import CAUSE_LABELS

    out: list[RenderableType] = []
    span = series.times[-1] - series.times[0] if series.times else 0.0
    last_copied = series.copied_bytes[-1] if series.copied_bytes else 0

    def table(title: str, first_col: str, rows: list[tuple[str, list[int | None]]]) -> Table:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption=f"{len(series.times)} attributed samples over {span:.0f}s"
                          + (f"; {series.missing} without attribution (last: {series.last_error})"
                             if series.missing else ""), caption_justify="left")
        for col in (first_col, "First", "Last", "Max", "Of copied (last)"):
            t.add_column(col, justify="left" if col == first_col else "right", no_wrap=col == first_col)
        for name, values in rows:
            known = [v for v in values if v is not None]
            if not known:
                continue
            t.add_row(name, fmt_size(known[0]), fmt_size(known[-1]), fmt_size(max(known)),
                      _pct(values[-1] or 0, last_copied) if values[-1] is not None else "-")
        return t

    if series.times:
        out.append(table("Copied bytes by type over the recording (all workers)", "Type",
                         list(series.types)))  # type: ignore[arg-type]
    if series.causes is not None:
        out.append(table("Copied bytes by cause over the recording (all workers)", "Cause",
                         [(CAUSE_LABELS.get(c, c), v) for c, v in series.causes]))
    elif series.causes_error and series.causes_error != "not requested":
        out.append(Text(f"by cause unavailable: {series.causes_error}", style="yellow"))
    if series.functions:
        t = Table(title="Top functions by copied bytes of their code objects (last sample)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False,
                  caption=f"code objects {fmt_size(series.function_code_bytes)} of "
                          f"{fmt_size(series.function_copied_bytes)} copied", caption_justify="left")
        for col in ("Copied", "Max", "Of copied", "Function", "File:line"):
            t.add_column(col, justify="left" if col in ("Function", "File:line") else "right",
                         no_wrap=col != "File:line", overflow="fold")
        for f, b, m in series.functions:
            t.add_row(fmt_size(b), fmt_size(m), _pct(b, series.function_copied_bytes), f.name, f.where)
        out.append(t)
    return out
