"""Unit tests of the Prometheus reporter and of the exporter's options and PID files.

The reporter is fed documented-JSON-shaped reports (``PageReport.from_dict``). The exporter's
scan/reattach state machine, which needs real processes as masters, is in
tests/integration/test_exporter_reattach.py.
"""
from __future__ import annotations

import copy
import os
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cowprof.errors import BadInput
from cowprof.exporter import _bind, read_pidfile, serve
from cowprof.reporters.prometheus import (
    MASTER_GAUGES,
    WORKER_GAUGES,
    ExporterStatus,
    ReportCollector,
    exposition,
    metric_families,
    render,
)
from conftest import MiB, master_dict, region_dict, report_dict, worker_dict


def _worker(pid: int, k: int) -> dict:
    # distinct values per worker and per field, so a swapped attribute or label is caught
    return worker_dict(pid, 2 * MiB + 7 * k, started_at=1763779001.0 + k, rss=40 * MiB + k * 4096,
                       pss=21 * MiB + k * 4096, uss=3 * MiB + k * 4096, swap=k * 8192, shared=35 * MiB + k,
                       new=1 * MiB + 11 * k)


def _report_dict(pids: list[int], master: int = 100) -> dict:
    return report_dict([_worker(pid, k) for k, pid in enumerate(pids, 1)], taken_at=1763780000.5, scan_seconds=0.05,
                       master=master_dict(master, started_at=1763779000.0, rss=50 * MiB, pss=30 * MiB,
                                          diverged=12288, regions={"python": region_dict()}))


def _as_report(d: dict):
    """A report object from the documented JSON (cowprof.pages.PageReport.from_dict)."""
    from cowprof.pages import PageReport

    return PageReport.from_dict(copy.deepcopy(d))


def _parse(text: bytes | str) -> dict[str, object]:
    """Family name -> family, from the text exposition (the way Prometheus reads it)."""
    if isinstance(text, bytes):
        text = text.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _by_pid(fam) -> dict[int, float]:
    return {int(s.labels["pid"]): s.value for s in fam.samples}


def _single(fams: dict, name: str) -> float:
    fam = fams[name]
    assert len(fam.samples) == 1, fam.samples
    return fam.samples[0].value


# ---------------------------------------------------------------------------------------------
# Reporter
# ---------------------------------------------------------------------------------------------

# Written out here (not taken from the module's tables) so a swapped field fails the test.
EXPECTED_WORKER = {
    "cowprof_worker_shared_bytes": "shared_bytes", "cowprof_worker_copied_bytes": "copied_bytes",
    "cowprof_worker_new_bytes": "new_bytes", "cowprof_worker_rss_bytes": "rss_bytes",
    "cowprof_worker_pss_bytes": "pss_bytes", "cowprof_worker_uss_bytes": "uss_bytes",
    "cowprof_worker_swap_bytes": "swap_bytes", "cowprof_worker_start_time_seconds": "started_at",
}
EXPECTED_MASTER = {
    "cowprof_master_rss_bytes": "rss_bytes", "cowprof_master_pss_bytes": "pss_bytes",
    "cowprof_master_uss_bytes": "uss_bytes", "cowprof_master_swap_bytes": "swap_bytes",
    "cowprof_master_diverged_bytes": "diverged_bytes",
    "cowprof_master_start_time_seconds": "started_at",
}


def test_every_worker_field_is_exported_with_its_value():
    d = _report_dict([11, 12, 13])
    fams = _parse(exposition(_as_report(d)))
    assert {n for n in fams if n.startswith("cowprof_worker_")} == set(EXPECTED_WORKER)
    for name, key in EXPECTED_WORKER.items():
        assert fams[name].type == "gauge"
        assert _by_pid(fams[name]) == {w["pid"]: float(w[key]) for w in d["workers"]}, name
    assert {n for n in fams if n.startswith("cowprof_master_")} == set(EXPECTED_MASTER) | {
        "cowprof_master_pid"}
    for name, key in EXPECTED_MASTER.items():
        assert _single(fams, name) == float(d["master"][key]), name
    assert _single(fams, "cowprof_workers") == 3
    assert _single(fams, "cowprof_master_pid") == 100
    assert _single(fams, "cowprof_up") == 1
    assert _single(fams, "cowprof_last_scan_timestamp_seconds") == 1763780000.5
    assert _single(fams, "cowprof_scan_privileged") == 0


def test_render_writes_the_exposition_to_a_binary_file():
    import io

    rep = _as_report(_report_dict([11, 12]))
    buf = io.BytesIO()
    assert render(rep, buf) is None
    assert buf.getvalue() == exposition(rep)
    assert _single(_parse(buf.getvalue()), "cowprof_workers") == 2


def test_values_follow_the_report_not_constants():
    # baseline for the test above: a different report must give different numbers
    a, b = _report_dict([11, 12]), _report_dict([11, 12])
    b["workers"][0]["copied_bytes"] += 4096
    b["master"]["rss_bytes"] += 4096
    fa, fb = _parse(exposition(_as_report(a))), _parse(exposition(_as_report(b)))
    assert _by_pid(fb["cowprof_worker_copied_bytes"])[11] == _by_pid(fa["cowprof_worker_copied_bytes"])[11] + 4096
    assert _single(fb, "cowprof_master_rss_bytes") == _single(fa, "cowprof_master_rss_bytes") + 4096


def test_worker_series_carry_the_pid_label_only():
    fams = _parse(exposition(_as_report(_report_dict([11, 12]))))
    for name, _attr, _doc in WORKER_GAUGES:
        assert all(set(s.labels) == {"pid"} for s in fams[name].samples), name
    for name, fam in fams.items():
        if not name.startswith("cowprof_worker_"):
            assert all(s.labels == {} for s in fam.samples), name


def test_naming_conventions():
    fams = _parse(exposition(_as_report(_report_dict([11]))))
    assert fams, "nothing exported"
    for name, fam in fams.items():
        assert name.startswith("cowprof_")
        assert fam.documentation, f"{name} has no HELP"
        if fam.type == "counter":
            assert all(s.name == name + "_total" for s in fam.samples), name
        else:
            assert not name.endswith("_total"), name
        if "bytes" in name:
            assert name.endswith("_bytes"), name
        if "time" in name or "duration" in name:
            assert name.endswith("_seconds"), name
    assert {"cowprof_worker_copied_bytes", "cowprof_worker_start_time_seconds",
            "cowprof_scrape_errors", "cowprof_scan_duration_seconds",
            "cowprof_up"} <= set(fams)


def test_departed_workers_vanish_from_the_next_collection():
    state = {"snap": (_as_report(_report_dict([11, 12, 13])), ExporterStatus(up=True))}
    collector = ReportCollector(lambda: state["snap"])
    first = {m.name: m for m in collector.collect()}
    assert set(_by_pid(first["cowprof_worker_rss_bytes"])) == {11, 12, 13}
    state["snap"] = (_as_report(_report_dict([11, 13, 14])), ExporterStatus(up=True))
    second = list(collector.collect())
    pids = {s.labels.get("pid") for m in second for s in m.samples}
    assert "12" not in pids
    assert pids - {None} == {"11", "13", "14"}


def test_many_scans_with_churn_keep_only_live_series():
    # 200 generations of 4 workers each, as under gunicorn max_requests churn: the exposition
    # never holds more series than live workers (a label-based Gauge would keep all 800).
    state: dict = {}
    collector = ReportCollector(lambda: state["snap"])
    for gen in range(200):
        pids = [1000 + 4 * gen + i for i in range(4)]
        state["snap"] = (_as_report(_report_dict(pids)), ExporterStatus(up=True))
        fams = {m.name: m for m in collector.collect()}
    assert len(fams["cowprof_worker_copied_bytes"].samples) == 4
    total = sum(len(m.samples) for m in fams.values())
    assert total == 4 * len(WORKER_GAUGES) + len(MASTER_GAUGES) + 3 + 3


def test_without_a_report_only_exporter_series_remain():
    status = ExporterStatus(up=False, master_pid=None, scans_total=7, scrape_errors_total=3,
                            scan_seconds=0.25, last_scan_at=1763780000.0)
    fams = {m.name: m for m in metric_families(None, status)}
    assert fams["cowprof_up"].samples[0].value == 0
    assert fams["cowprof_scrape_errors"].samples[0].value == 3
    assert fams["cowprof_scans"].samples[0].value == 7
    assert fams["cowprof_scan_duration_seconds"].samples[0].value == 0.25
    assert not [n for n in fams if n.startswith(("cowprof_worker_", "cowprof_master_"))]
    assert "cowprof_workers" not in fams


def test_up_needs_both_attachment_and_a_report():
    report = _as_report(_report_dict([11]))
    up = {m.name: m for m in metric_families(report, ExporterStatus(up=True))}["cowprof_up"]
    down = {m.name: m for m in metric_families(None, ExporterStatus(up=True))}["cowprof_up"]
    assert (up.samples[0].value, down.samples[0].value) == (1, 0)


# ---------------------------------------------------------------------------------------------
# Exporter: PID files, options, binding
# ---------------------------------------------------------------------------------------------

def test_read_pidfile_errors(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        read_pidfile(str(tmp_path / "nope.pid"))
    bad = tmp_path / "bad.pid"
    bad.write_text("gunicorn\n")
    with pytest.raises(BadInput, match="does not hold a PID"):
        read_pidfile(str(bad))
    good = tmp_path / "good.pid"
    good.write_text(" 1234\n")
    assert read_pidfile(str(good)) == 1234


def test_port_in_use_is_a_one_line_bad_input():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BadInput) as err:
            _bind("127.0.0.1", port, lambda env, start: [])
    assert str(err.value) == f"port {port} on 127.0.0.1 is already in use"
    assert err.value.exit_code == 2


def test_bind_to_a_bad_address_is_bad_input():
    with pytest.raises(BadInput, match="cannot bind|not an address"):
        _bind("no-such-host.invalid", 0, lambda env, start: [])


@pytest.mark.parametrize("kwargs, message", [
    ({"interval": 0}, "--interval"),
    ({"interval": float("nan")}, "--interval"),
    ({"port": 70000}, "--port"),
    ({"port": -1}, "--port"),
])
def test_serve_rejects_bad_options(kwargs, message):
    with pytest.raises(BadInput, match=message):
        serve(os.getpid(), **kwargs)


def test_serve_needs_a_target():
    with pytest.raises(BadInput, match="PID"):
        serve(None)


def test_serve_with_a_missing_pidfile(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        serve(None, pidfile=str(tmp_path / "gone.pid"))
