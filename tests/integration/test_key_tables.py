"""Key tables prepared in the master (cowprof.key_tables): a worker materializing instances'
dicts or specializing code that reads module globals must not write the master's key tables.
Each is paired with the same fork with the step turned off, where the worker does write them."""
from __future__ import annotations

import sys

import pytest

from pyrun import run_json

HAS_IMMORTAL = sys.version_info >= (3, 12)
NEEDS_312 = pytest.mark.skipif(not HAS_IMMORTAL, reason="immortal objects (and key tables) need CPython 3.12+")

FORK = """
import json, types, cowprof
from cowprof import _native
from forkjson import in_child
N = 300
classes = [type(f"C{i}", (), {"__init__": lambda self: setattr(self, "a", 1)}) for i in range(N)]
instances = [cls() for cls in classes]
modules = []
for i in range(N):
    module = types.ModuleType(f"generated_{i}")
    exec(compile(f"value = {i}\\ndef read():\\n    return value\\n", f"<generated_{i}>", "exec"), module.__dict__)
    modules.append(module)
report = cowprof.prepare_fork()

def state():
    return {"counts": [_native.keys_refcount(c) for c in classes],
            "versions": [_native.keys_version(m.__dict__) for m in modules]}

def worker():
    dicts = [vars(obj) for obj in instances]  # each materialized dict counts its class's table
    for module in modules:
        for _ in range(8):  # until its LOAD_GLOBAL is specialized, which versions the globals table
            module.read()
    return state()

master = state()
worker_state = in_child(worker)
print(json.dumps({"immortal": _native.keys_refcount({}), "shared": report.shared_keys_immortalized,
                  "versioned": report.keys_versioned, "skipped": report.key_tables_skipped,
                  "master": master, "worker": worker_state}))
"""


@NEEDS_312
def test_worker_writes_no_key_table_after_prepare():
    out = run_json(FORK)
    assert out["skipped"] is None and out["shared"] >= 300 and out["versioned"] >= 300
    master, worker = out["master"], out["worker"]
    assert set(master["counts"]) == {out["immortal"]}
    assert all(v >= 1 for v in master["versions"]) and len(set(master["versions"])) == 300  # distinct, as given
    assert worker == master  # neither the counts nor the versions of the 600 tables written in the worker


@NEEDS_312
def test_baseline_worker_writes_counts_and_versions_itself():
    out = run_json(FORK, env={"COWPROF_IMMORTAL_SHARED_KEYS": "0", "COWPROF_VERSION_KEYS": "0"})
    assert out["shared"] == 0 and out["versioned"] == 0
    assert out["skipped"] == "shared counts: not requested; versions: not requested"
    master, worker = out["master"], out["worker"]
    counted = sum(w == m + 1 for w, m in zip(worker["counts"], master["counts"]))
    assert counted == 300, counted  # each materialized dict counted its class's table in the worker
    assert set(master["versions"]) == {0}
    versioned = sum(w != 0 for w in worker["versions"])
    assert versioned >= 290, versioned  # each specialized LOAD_GLOBAL versioned its table in the worker


def test_key_table_checks_on_this_version():
    """3.12+: both run-time checks pass; 3.11: no immortal objects, the steps say why."""
    out = run_json("""
        import json, cowprof
        from cowprof import key_tables
        report = cowprof.prepare_fork()
        print(json.dumps({"counts": key_tables.check_counts(), "versions": key_tables.check_versions(),
                          "skipped": report.key_tables_skipped, "no_walk": report.immortalize_skipped,
                          "summary": report.summary()}))
    """)
    summary = out.pop("summary")
    if HAS_IMMORTAL:
        assert out == {"counts": None, "versions": None, "skipped": None, "no_walk": None}
        assert "shared key tables made immortal" in summary and "key tables versioned" in summary
    else:
        assert "key tables" not in summary
        assert out["counts"] == out["versions"] == "immortal objects need CPython 3.12+"
        assert out["skipped"] == out["no_walk"]
