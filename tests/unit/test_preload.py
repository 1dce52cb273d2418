"""cowprof.preload in this process: the profiler's read of the records, the directory checks and
the switches. The worker-side record and the next master's learning: tests/integration/test_preload.py."""
from __future__ import annotations

import os
import stat

import pytest

from cowprof import preload


def test_profiler_ignores_symlinks_and_foreign_names(preload_dir, tmp_path):
    preload_dir.mkdir(mode=0o700)
    secret = tmp_path / "secret.txt"
    secret.write_text("os\n")
    master = os.getpid()
    os.symlink(secret, preload_dir / f"imports-{master}-1.txt")
    (preload_dir / f"imports-{master}-2.txt").write_text("good.module\n; rm -rf /\n../etc\n")
    late = preload.late_imports(master)
    assert late.workers == {2: ["good.module"]}


def test_unusable_directory_is_reported_not_raised(tmp_path, monkeypatch):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    learned = preload.learn("k")
    assert learned.modules == () and "writable by other users" in learned.error
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
