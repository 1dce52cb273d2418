"""The page report's JSON and its errors, against output of the hand-written ``to_dict``/``from_dict``
it replaced (fixtures/pagereport_golden.json, written by that code before the field-driven one).

Reports built with the shared factories (tests/conftest.py) and with the constructors must dump to
the very same bytes (``json.dumps`` of ``to_dict()``) and repr; every one-fault variant of a full
report (each key missing, null, negative, a bool, a float, a string, too big...) must be refused
with the same message, or accepted with the same JSON; and an input with two faults must name the
same one of them (the keys are checked in the same order).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import pytest
from conftest import MiB, master_dict, region_dict, report_dict, worker_dict

from cowprof.errors import BadInput
from cowprof.pagereport import MasterPages, PageReport, RegionPages, WorkerPages

with open(os.path.join(os.path.dirname(__file__), "fixtures", "pagereport_golden.json")) as _f:
    GOLDEN = json.load(_f)


def _full_worker(pid: int) -> dict[str, Any]:
    w = worker_dict(pid, 5 * MiB, regions={"stack": region_dict(1, 2, 3), "python": region_dict(4096, 8192, 0),
                                          "bogus": region_dict(7, 7, 7), "file": region_dict(0, 0, 4096)})
    w.update(ambiguous_bytes=4096, shared_with_master_bytes=12288, sharers={"9": 4096, "2": 8192, "64": 4096},
             swap_bytes=8192)
    return w


def _error(call: Any, *args: Any) -> str | None:
    try:
        call(*args)
    except Exception as e:  # noqa: BLE001 - the type is part of what is compared
        return f"{type(e).__name__}: {e}"
    return None


def test_the_fixture_was_built_from_the_shared_factories():
    assert GOLDEN["to_dict"]["default"]["input"] == report_dict()
    assert GOLDEN["base"] == report_dict([_full_worker(11)],
                                         master=master_dict(regions={"python": region_dict(1, 2, 3)}))


@pytest.mark.parametrize("name", sorted(GOLDEN["to_dict"]))
def test_json_is_byte_identical(name):
    case = GOLDEN["to_dict"][name]
    report = PageReport.from_dict(copy.deepcopy(case["input"]))
    assert json.dumps(report.to_dict()) == case["json"]
    assert repr(report) == case["repr"]
    again = PageReport.from_dict(json.loads(case["json"]))  # it round-trips (unknown regions dropped)
    assert json.dumps(again.to_dict()) == case["json"]


def test_a_report_built_with_the_constructors_dumps_the_same():
    built = PageReport(
        version=1, taken_at=3.5, privileged=True, mode="pfn", page_size=4096, scan_seconds=0.25,
        master=MasterPages(10, 1.0, 5, 4, 3, 0, 4096, {"file": RegionPages(1, 2, 3), "python": RegionPages()}),
        workers=[WorkerPages(11, 2.0, 9, 8, 7, 0, 1, 2, 3, {"other": RegionPages(0, 0, 1), "heap": RegionPages(2, 0, 0)},
                             4096, 0, {3: 4096, 1: 8192})],
        gone=(5, 6))  # type: ignore[arg-type] - a tuple dumps as a list
    assert json.dumps(built.to_dict()) == GOLDEN["built"]["json"]
    assert repr(built) == GOLDEN["built"]["repr"]


def _variant(op: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(GOLDEN["base"])
    o = d
    for p in op["path"][:-1]:
        o = o[p]
    if op["delete"]:
        o.pop(op["path"][-1], None)
    else:
        o[op["path"][-1]] = op["value"]
    return d


@pytest.mark.parametrize("name", list(GOLDEN["errors"]))
def test_one_fault_inputs_keep_their_message(name):
    case = GOLDEN["errors"][name]
    d = _variant(case)
    assert _error(PageReport.from_dict, d) == case["error"]
    if case["error"] is None:
        out = json.dumps(PageReport.from_dict(d).to_dict()).encode()
        assert hashlib.sha256(out).hexdigest() == case["json_sha256"]


def test_other_refusals_keep_their_message():
    assert _error(PageReport.from_dict, [1, 2]) == GOLDEN["not_object_error"]
    d = _variant({"path": ["workers", 0, "sharers"], "value": {1: 4096}, "delete": False})
    assert _error(PageReport.from_dict, d) == GOLDEN["int_sharers_error"]
    classes = {"RegionPages": RegionPages, "MasterPages": MasterPages, "WorkerPages": WorkerPages}
    for key, case in GOLDEN["class_errors"].items():
        assert _error(classes[key.split("/")[0]].from_dict, copy.deepcopy(case["input"])) == case["error"], key
    with pytest.raises(BadInput):
        PageReport.from_dict({"version": 2})


@pytest.mark.parametrize("name", list(GOLDEN["multi_errors"]))
def test_two_fault_inputs_name_the_same_fault(name):
    case = GOLDEN["multi_errors"][name]
    d = copy.deepcopy(GOLDEN["base"])
    for op in case["ops"]:
        o = d
        for p in op["path"][:-1]:
            o = o[p]
        o[op["path"][-1]] = copy.deepcopy(op["value"])
    assert _error(PageReport.from_dict, d) == case["error"]
