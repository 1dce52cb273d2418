"""cowprof.preload: the worker-side record of late imports, the profiler's read, the next master's
learning and opt-in import. Forks happen in child interpreters (prepare_fork freezes the heap)."""
from __future__ import annotations

import json
import os
import stat

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


@pytest.fixture
def pdir(tmp_path, monkeypatch):
    d = tmp_path / "preload"
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    monkeypatch.setenv(preload.ENV_KEY, "test-app")
    return d


def _env(d) -> dict:
    return {preload.ENV_DIR: str(d), preload.ENV_KEY: "test-app"}


def test_worker_records_its_late_imports_privately(pdir):
    out = run_json(CHILD, env=_env(pdir))
    assert out["imports_error"] is None
    mods = out["late"]["workers"][str(out["child"])]
    assert "colorsys" in mods and "xml.dom.minidom" in mods and "xml" in mods
    assert "no_such_module_cowprof" not in mods
    path = pdir / f"imports-{out['master']}-{out['child']}.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pdir.stat().st_mode) == 0o700


def test_next_master_learns_and_can_import_them(pdir):
    first = run_json(CHILD, env=_env(pdir))
    second = run_json("""
        import json, sys
        import cowprof
        from cowprof import preload
        imported, failed = preload.import_learned()
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps({"imported": imported, "report_late": list(r.late_imports),
                          "preloaded": list(r.preloaded), "in_modules": "colorsys" in sys.modules}))
    """, env=_env(pdir))
    assert "colorsys" in second["report_late"] and "xml.dom.minidom" in second["report_late"]
    assert "colorsys" in second["imported"] and second["in_modules"]
    assert set(second["preloaded"]) == set(second["imported"])
    # the gone master's files were merged into the learned list and removed
    names = os.listdir(pdir)
    assert not any(n.startswith(f"imports-{first['master']}-") for n in names)
    learned = json.loads((pdir / "learned-test-app.json").read_text())
    assert "colorsys" in learned["modules"]


def test_other_apps_do_not_learn_from_each_other(pdir):
    run_json(CHILD, env=_env(pdir))
    other = run_json("""
        import json, cowprof
        r = cowprof.prepare_fork(heapmap=False)
        print(json.dumps(list(r.late_imports)))
    """, env={**_env(pdir), preload.ENV_KEY: "another-app"})
    assert other == []
    assert any(n.startswith("imports-") for n in os.listdir(pdir))  # kept for their own app


def test_profiler_ignores_symlinks_and_foreign_names(pdir, tmp_path):
    pdir.mkdir(mode=0o700)
    secret = tmp_path / "secret.txt"
    secret.write_text("os\n")
    master = os.getpid()
    os.symlink(secret, pdir / f"imports-{master}-1.txt")
    (pdir / f"imports-{master}-2.txt").write_text("good.module\n; rm -rf /\n../etc\n")
    late = preload.late_imports(master)
    assert late.workers == {2: ["good.module"]}


def test_unusable_directory_is_reported_not_raised(tmp_path, monkeypatch):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    learned = preload.learn("k")
    assert learned.modules == () and "writable by others" in learned.error
    assert stat.S_IMODE(d.stat().st_mode) == 0o777  # never changed: not ours


@pytest.mark.parametrize("value, on", [("learned", True), ("1", True), ("", False), ("0", False), ("off", False)])
def test_preload_switch(value, on):
    assert preload.preload_requested({preload.ENV_PRELOAD: value}) is on


def test_app_key_depends_on_identity(monkeypatch):
    monkeypatch.delenv(preload.ENV_KEY, raising=False)
    preload.set_app_identity("a.wsgi:app")
    a = preload.app_key()
    preload.set_app_identity("b.wsgi:app")
    b = preload.app_key()
    preload.set_app_identity(None)
    assert a != b and len(a) == 16
    monkeypatch.setenv(preload.ENV_KEY, "my key/../x")
    assert preload.app_key() == "my_key_.._x"
