"""Self-contained HTML report of a recording, with plotly charts.

Three charts: copied MiB per worker over time, shared % over time, and the region breakdown of the
last sample. A recording made with ``record --by`` adds stacked area charts of the copied bytes by
type and by cause over time and a bar chart and table of the top functions (last sample).
plotly.js is inlined once (``include_plotlyjs=True``) so the file works offline and has no
external script (tests/integration/test_html_browser.py loads it in headless Chromium with the
network off). plotly is the optional extra ``cowprof[html]``; without it :func:`render` raises a
one-line :class:`~cowprof.errors.CowprofError`.
"""
from __future__ import annotations

import datetime as _dt
import html as _html
import sys
from typing import IO, TYPE_CHECKING, Any

from cowprof import __version__
from cowprof.errors import CowprofError
from cowprof.reporters import AttributionSeries, MiB, attribution_series, fmt_bytes, ordered_regions, worker_series

if TYPE_CHECKING:
    from cowprof.record import Recording

__all__ = ["CHART_IDS", "PAGE_CHARTS", "render"]

CHART_IDS = {
    "copied": "cowprof-copied",
    "shared": "cowprof-shared",
    "regions": "cowprof-regions",
    "types": "cowprof-types",
    "causes": "cowprof-causes",
    "functions": "cowprof-functions",
}
"""The div ids of the charts (stable: tests and users' scripts may look for them). The last three
are there only for a recording made with ``record --by`` (``causes``: ``--by cause``;
``functions``: ``--by function``)."""
PAGE_CHARTS = ("copied", "shared", "regions")
"""The charts of every report (the others need ``record --by``)."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.meta { color: #555; } .warn { color: #a60; }
"""


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ModuleNotFoundError:
        raise CowprofError("the HTML report needs plotly: pip install 'cowprof[html]'") from None
    return go


def _figures(recording: Recording) -> dict[str, Any]:
    go = _plotly()
    reports = recording.reports
    t0 = reports[0].taken_at if reports else 0.0
    series = worker_series(reports)
    layout = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=60, b=50),
                  xaxis_title="seconds since the first sample", legend_title_text="worker")

    copied = go.Figure(layout=dict(layout, title="Copied MiB per worker over time",
                                   yaxis_title="copied (MiB)"))
    shared = go.Figure(layout=dict(layout, title="Shared % over time",
                                   yaxis_title="shared / (shared + copied + new), %",
                                   yaxis_range=[0, 100]))
    for s in series:
        xs = [t - t0 for t in s.times]
        copied.add_trace(go.Scatter(x=xs, y=[b / MiB for b in s.copied_bytes], name=s.label,
                                    mode="lines+markers"))
        shared.add_trace(go.Scatter(x=xs, y=s.shared_pct, name=s.label, mode="lines+markers"))
    if reports:
        # all workers together: the tree-wide shared share
        xs, ys = [], []
        for r in reports:
            sh = sum(w.shared_bytes for w in r.workers)
            tot = sh + sum(w.copied_bytes + w.new_bytes for w in r.workers)
            xs.append(r.taken_at - t0)
            ys.append(100.0 * sh / tot if tot else None)
        shared.add_trace(go.Scatter(x=xs, y=ys, name="all workers", mode="lines",
                                    line=dict(dash="dash", width=3, color="black")))

    regions = go.Figure(layout=dict(layout, title="Region breakdown (last sample, all workers)",
                                    xaxis_title="region", yaxis_title="MiB", barmode="group",
                                    legend_title_text="pages"))
    if reports:
        last = reports[-1]
        keys = ordered_regions({k for w in last.workers for k in w.regions})
        for kind, colour in (("shared", "#4c9f70"), ("copied", "#d1495b"), ("new", "#edae49")):
            ys = [sum(getattr(w.regions[k], f"{kind}_bytes") for w in last.workers if k in w.regions)
                  / MiB for k in keys]
            regions.add_trace(go.Bar(x=keys, y=ys, name=kind, marker_color=colour))
    figures = {"copied": copied, "shared": shared, "regions": regions}
    attributed = attribution_series(recording)
    if attributed is not None:
        figures.update(_attribution_figures(go, attributed, t0, layout))
    return figures


def _attribution_figures(go: Any, series: AttributionSeries, t0: float, layout: dict[str, Any]) -> dict[str, Any]:
    from cowprof.reporters import CAUSE_LABELS

    out: dict[str, Any] = {}
    xs = [t - t0 for t in series.times]
    if series.times:
        types = go.Figure(layout=dict(layout, title="Copied MiB by type over time (all workers, stacked)",
                                      yaxis_title="copied (MiB)", legend_title_text="type"))
        for name, values in series.types:
            types.add_trace(go.Scatter(x=xs, y=[v / MiB for v in values], name=name, mode="lines",
                                       stackgroup="types"))
        out["types"] = types
    if series.causes is not None:
        causes = go.Figure(layout=dict(layout, title="Copied MiB by cause over time (all workers, stacked)",
                                       yaxis_title="copied (MiB)", legend_title_text="cause"))
        for cause, per_sample in series.causes:
            pts = [(x, v / MiB) for x, v in zip(xs, per_sample) if v is not None]
            causes.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts],
                                        name=CAUSE_LABELS.get(cause, cause), mode="lines", stackgroup="causes"))
        out["causes"] = causes
    if series.functions:
        names = [f.name for f, _b, _m in series.functions][::-1]  # largest at the top
        fig = go.Figure(layout=dict(layout, title="Top functions by copied KiB of their code objects (last sample)",
                                    xaxis_title="copied (KiB)", yaxis_title="", showlegend=False,
                                    height=max(300, 60 + 28 * len(names)), margin=dict(l=320, r=20, t=60, b=50)))
        fig.add_trace(go.Bar(x=[b / 1024 for _f, b, _m in series.functions][::-1], y=names, orientation="h",
                             hovertext=[f.where for f, _b, _m in series.functions][::-1], marker_color="#5b7bd5"))
        out["functions"] = fig
    return out


def _functions_html(series: AttributionSeries | None) -> str:
    if series is None or not series.functions:
        return ""
    esc = _html.escape
    rows = ["<tr><th>function</th><th>file:line</th><th>copied (last)</th><th>max</th></tr>"]
    for f, b, m in series.functions:
        rows.append(f"<tr><td>{esc(f.name)}</td><td>{esc(f.where)}</td><td>{fmt_bytes(b)}</td>"
                    f"<td>{fmt_bytes(m)}</td></tr>")
    return ("<h2>Top functions (last sample)</h2><p class='meta'>code objects "
            f"{fmt_bytes(series.function_code_bytes)} of {fmt_bytes(series.function_copied_bytes)} copied</p>"
            "<table>" + "".join(rows) + "</table>")


def _summary_html(recording: Recording) -> str:
    h = recording.header
    target = h.get("target", {})
    esc = _html.escape
    created = h.get("created_at")
    created_s = (_dt.datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S")
                 if isinstance(created, (int, float)) else "?")
    samples = recording.samples
    failed = sum(1 for s in samples if s.error is not None)
    span = samples[-1].elapsed - samples[0].elapsed if samples else 0.0
    end = recording.end.get("reason", "?") if recording.end else "no end line (recorder killed?)"
    parts = [
        (f"<p class='meta'>Recorded {esc(created_s)} by cowprof {esc(str(h.get('cowprof_version')))}"
         f" &middot; target master {esc(str(target.get('pid', '?')))} &middot; {len(samples)} samples"
         f" ({failed} failed) over {span:.1f}s &middot; ended: {esc(str(end))}</p>")]
    if target.get("cmdline"):
        parts.append(f"<p class='meta'>command: <code>{esc(' '.join(map(str, target['cmdline'])))}"
                     "</code></p>")
    for warning in recording.warnings:
        parts.append(f"<p class='warn'>warning: {esc(warning)}</p>")
    if recording.attributed_by:
        missing = [s for s in samples if s.report is not None and s.attribution is None]
        parts.append(f"<p class='meta'>attribution recorded by {esc(', '.join(recording.attributed_by))}"
                     + (f"; <span class='warn'>{len(missing)} samples without it (last: "
                        f"{esc(str(missing[-1].attribution_error))})</span>" if missing else "") + "</p>")
    reports = recording.reports
    if reports:
        last = reports[-1]
        rows = ["<tr><th>worker</th><th>PSS</th><th>shared</th><th>copied</th><th>new</th></tr>"]
        for w in sorted(last.workers, key=lambda w: (-w.copied_bytes, w.pid)):
            rows.append(f"<tr><td>{w.pid}</td><td>{fmt_bytes(w.pss_bytes)}</td>"
                        f"<td>{fmt_bytes(w.shared_bytes)}</td><td>{fmt_bytes(w.copied_bytes)}</td>"
                        f"<td>{fmt_bytes(w.new_bytes)}</td></tr>")
        parts.append("<h2>Last sample</h2><table>" + "".join(rows) + "</table>")
    else:
        parts.append("<p class='warn'>The recording holds no successful sample.</p>")
    return "\n".join(parts)


def render(recording: Recording, file: IO[str] | None = None) -> None:
    """Write the whole HTML document for ``recording`` to ``file`` (default stdout)."""
    figures = _figures(recording)
    title = f"cowprof report: {recording.path}"
    out = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
        _summary_html(recording),
    ]
    first = True
    for name, fig in figures.items():
        out.append(f"<h2>{_html.escape(fig.layout.title.text)}</h2>")
        out.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=CHART_IDS[name],
                               config={"displaylogo": False, "responsive": True}))
        first = False
    out.append(_functions_html(attribution_series(recording)))
    out.append(f"<p class='meta'>Generated by cowprof {__version__}.</p></body></html>")
    (file if file is not None else sys.stdout).write("\n".join(out) + "\n")
