"""The shipped Grafana dashboard (cowprof/dashboards/grafana.json) queries only what the exporter serves.

Every PromQL expression of the dashboard (panel targets and the template variable's query) is
parsed with a real PromQL parser (promql-parser, the Rust parser's Python binding: a syntax error
fails), its metric names are taken from the syntax tree, and they must all be among the sample
names a real exporter serves for a real fork tree (scraped over HTTP). The checker is shown to
catch a dashboard that names a metric the exporter does not serve.
"""
from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import promql_parser
import pytest
from exporter_proc import ExporterProc
from forktree import ForkTree

#: Grafana's own variables, replaced by a value of the right kind before parsing
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def load_dashboard() -> dict[str, Any]:
    """The dashboard as installed with the package."""
    return json.loads(resources.files("cowprof").joinpath("dashboards/grafana.json").read_text())


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panel targets (rows' nested panels too) and
    query variables (``label_values(EXPR, label)`` gives EXPR)."""
    out = []

    def panels(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            for t in p.get("targets", []):
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            panels(p.get("panels", []))

    panels(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = LABEL_VALUES.match(q)
            assert m and m.group(1), f"variable {v['name']}: not label_values(metric, label): {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects, from its syntax tree (ValueError on a syntax error)."""
    text = expr
    for var, value in GRAFANA_VARIABLES.items():
        text = text.replace(var, value)
    text = re.sub(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?", ".+", text)  # dashboard variables: in label regexes
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    assert str(m.op).endswith("Equal") and "Not" not in str(m.op), f"{expr}: name regex"
                    names.add(m.value)

    promql_parser.walk(promql_parser.parse(text), visit)
    return names


def unknown_metrics(dashboard: dict[str, Any], served: set[str]) -> dict[str, set[str]]:
    """Per query, the metric names it selects that are not served."""
    out = {}
    for where, expr in expressions(dashboard):
        missing = metric_names(expr) - served
        if missing:
            out[where] = missing
    return out


def test_metric_names_come_from_the_syntax_tree():
    expr = ('sum by (instance) (deriv(a_bytes{instance=~"$instance",pid!="1"}[$__rate_interval])) '
            '+ on (instance) group_left b_total offset 5m / {__name__="c_seconds"} - time() '
            '* max_over_time(d[5m:1m]) > bool 0 and label_replace(e, "x", "$1", "y", "(.*)")')
    assert metric_names(expr) == {"a_bytes", "b_total", "c_seconds", "d", "e"}
    with pytest.raises(ValueError):
        metric_names("sum(cowprof_up")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> set[str]:
    """Sample names of a real exporter's scrape of a real fork tree (every series it can serve:
    the tree has workers and its scans succeed)."""
    with ForkTree(workers=2, master_mb=4, write_pages=10) as tree:
        exp = ExporterProc(tmp_path_factory.mktemp("grafana") / "exporter.log", tree.master_pid)
        try:
            fams = exp.scrape_until(lambda f: "cowprof_worker_copied_bytes" in f
                                    and len(f["cowprof_worker_copied_bytes"].samples) == 2
                                    and "cowprof_scan_duration_seconds" in f, what="workers scanned")
        finally:
            assert exp.stop() == 0
    return {s.name for f in fams.values() for s in f.samples}


def test_every_dashboard_query_names_only_served_metrics(served):
    dashboard = load_dashboard()
    queries = expressions(dashboard)
    assert len(queries) >= 15
    assert unknown_metrics(dashboard, served) == {}
    used = set().union(*(metric_names(e) for _w, e in queries))
    # what the dashboard is for: per-worker copied/shared/new, tree PSS, copy rate, scan health, up
    assert {"cowprof_worker_copied_bytes", "cowprof_worker_shared_bytes", "cowprof_worker_new_bytes",
            "cowprof_worker_pss_bytes", "cowprof_master_pss_bytes", "cowprof_worker_start_time_seconds",
            "cowprof_scans_total", "cowprof_scrape_errors_total", "cowprof_scan_duration_seconds",
            "cowprof_last_scan_timestamp_seconds", "cowprof_up"} <= used
    assert any(e.startswith("deriv(cowprof_worker_copied_bytes") for _w, e in queries)  # the copy rate


def test_the_check_fails_for_a_metric_the_exporter_does_not_serve(served):
    """Baseline: the same check on a dashboard with one panel naming a metric that does not exist
    (a typo, or a metric renamed in the exporter) reports it."""
    dashboard = copy.deepcopy(load_dashboard())
    target = next(p for p in dashboard["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = 'sum(cowprof_worker_copyed_bytes{instance=~"$instance"})'
    assert list(unknown_metrics(dashboard, served).values()) == [{"cowprof_worker_copyed_bytes"}]
    dashboard["templating"]["list"][1]["query"]["query"] = "label_values(cowprof_upp, instance)"
    assert {"cowprof_upp"} in unknown_metrics(dashboard, served).values()


def test_dashboard_is_importable_json():
    """What Grafana's import needs: a title and uid, panels with unique ids and grid positions,
    every query on the dashboard's Prometheus data source variable."""
    d = load_dashboard()
    assert d["title"] and d["uid"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "instance"}
    for p in d["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p["targets"]
            assert p["description"]
