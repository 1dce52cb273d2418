"""cowprof.preload end to end: a prepared master forks a worker that imports modules late (in a
child interpreter: prepare_fork freezes the heap), the profiler reads what the worker recorded,
and the next master learns and imports them."""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from cowprof import preload
from pyrun import run_json


CHILD = """
import json, os, sys
import cowprof
from cowprof import preload
r = cowprof.prepare_fork(heapmap=False)
pid = os.fork()
if pid == 0:
    cowprof.after_fork()
    import colorsys, xml.dom.minidom   # late imports
    try:
        import no_such_module_cowprof  # a failed import is never recorded
    except ImportError:
        pass
    sys.exit(0)                         # atexit writes what the last import left pending
os.waitpid(pid, 0)
late = preload.late_imports(os.getpid())
print(json.dumps({"master": os.getpid(), "child": pid, "late": late.to_dict(), "report_late": list(r.late_imports),
                  "imports_error": r.imports_error, "key": preload.app_key()}))
"""


def _env(d) -> dict:
    return {preload.ENV_DIR: str(d), preload.ENV_KEY: "test-app"}


def test_worker_records_its_late_imports_privately(preload_dir):
    out = run_json(CHILD, env=_env(preload_dir))
    assert out["imports_error"] is None
    mods = out["late"]["workers"][str(out["child"])]
    assert "colorsys" in mods and "xml.dom.minidom" in mods and "xml" in mods
    assert "no_such_module_cowprof" not in mods
    path = preload_dir / f"imports-{out['master']}-{out['child']}.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(preload_dir.stat().st_mode) == 0o700


def test_next_master_learns_and_can_import_them(preload_dir):
    first = run_json(CHILD, env=_env(preload_dir))
    second = run_json("""
        import json, sys
        import cowprof
        from cowprof import preload
        imported, failed = preload.import_learned()
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps({"imported": imported, "report_late": list(r.late_imports),
                          "preloaded": list(r.preloaded), "in_modules": "colorsys" in sys.modules}))
    """, env=_env(preload_dir))
    assert "colorsys" in second["report_late"] and "xml.dom.minidom" in second["report_late"]
    assert "colorsys" in second["imported"] and second["in_modules"]
    assert set(second["preloaded"]) == set(second["imported"])
    # the gone master's files were merged into the learned list and removed
    names = os.listdir(preload_dir)
    assert not any(n.startswith(f"imports-{first['master']}-") for n in names)
    learned = json.loads((preload_dir / "learned-test-app.json").read_text())
    assert "colorsys" in learned["modules"]


def test_other_apps_do_not_learn_from_each_other(preload_dir):
    run_json(CHILD, env=_env(preload_dir))
    other = run_json("""
        import json, cowprof
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps(list(r.late_imports)))
    """, env={**_env(preload_dir), preload.ENV_KEY: "another-app"})
    assert other == []
    assert any(n.startswith("imports-") for n in os.listdir(preload_dir))  # kept for their own app


HOT_CHILD = """
import json, os, sys
import cowprof
from cowprof import preload

def worker_only(x):
    return x + 1.5          # int + float: never specialized, every call writes the code object

def master_only(x):
    return x + 1.5

for i in range(100):
    master_only(i)
r = cowprof.prepare_fork(heapmap=False)
pid = os.fork()
if pid == 0:
    cowprof.after_fork()
    for i in range(100):
        worker_only(i)
    sys.exit(0)                         # atexit writes the code objects it wrote
os.waitpid(pid, 0)
print(json.dumps({"master": os.getpid(), "child": pid, "imports_error": r.imports_error}))
"""


needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="hot code relocation is for CPython 3.12+")


@needs_312
def test_worker_records_the_code_objects_it_wrote(preload_dir):
    out = run_json(HOT_CHILD, env=_env(preload_dir))
    assert out["imports_error"] is None
    path = preload_dir / f"hotcode-{out['master']}-{out['child']}.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    names = {line.split("\t")[2] for line in lines}
    assert "worker_only" in names          # run only in the worker: written there
    assert "master_only" not in names      # run in the master only: the worker never wrote it
    # nor cowprof's own code, which prepare_fork ran in the master after the fingerprint
    own = [line for line in lines if "/cowprof/" in line.split("\t")[0]]
    assert not own, own[:5]


@needs_312
def test_next_master_relocates_the_learned_hot_code(preload_dir):
    first = run_json(HOT_CHILD, env=_env(preload_dir))
    second = run_json("""
        import json
        from cowprof import hotcode, preload
        # the same file name, first line and qualname as in HOT_CHILD: the same code object's key

        def worker_only(x):
            return x + 1.5          # int + float: never specialized, every call writes the code object

        before = id(worker_only.__code__)
        learned = preload.learn()
        r = hotcode.relocate(lambda: None, learned=learned.hot_code)
        print(json.dumps({"hot": [list(k) for k in learned.hot_code], "result": r.to_dict(),
                          "moved": id(worker_only.__code__) != before}))
    """, env=_env(preload_dir))
    assert any(k[2] == "worker_only" for k in second["hot"])
    assert second["result"]["skipped"] is None and second["result"]["learned"] >= 1 and second["moved"]
    names = os.listdir(preload_dir)
    assert not any(n.startswith(f"hotcode-{first['master']}-") for n in names)
    learned = json.loads((preload_dir / "learned-test-app.json").read_text())
    assert any(k[2] == "worker_only" for k in learned["hot_code"])
