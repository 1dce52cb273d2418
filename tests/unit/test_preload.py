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


def test_served_paths_are_counted_only_for_2xx_gets_in_an_armed_worker(monkeypatch):
    preload.record_served("GET", "/a", 200)  # not armed: nothing, no error
    served: dict[str, int] = {}
    monkeypatch.setitem(preload._state, "served", served)
    for method, path, status in [("GET", "/a", 200), ("GET", "/a", 204), ("GET", "/b", 200), ("GET", "/c", 404),
                                 ("POST", "/d", 200), ("GET", "/e", 302), ("GET", "/f", None),
                                 ("GET", "no-slash", 200), ("GET", "/sp ace", 200), ("HEAD", "/g", 200)]:
        preload.record_served(method, path, status)
    assert served == {"/a": 2, "/b": 1}


def test_next_master_learns_the_most_frequent_paths_of_gone_masters(tmp_path, monkeypatch):
    d = tmp_path / "preload"
    d.mkdir(mode=0o700)
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    gone = 4_194_304 + 17  # above any pid_max: that master is gone
    (d / f"master-{gone}.json").write_text(f'{{"pid": {gone}, "start_ticks": 1, "boot_id": "x", "key": "k"}}')
    (d / f"paths-{gone}-1.txt").write_text("5\t/a\n2\t/b\nx\t/bad\n3\t/a b\n1\t/c\n")
    (d / f"paths-{gone}-2.txt").write_text("4\t/b\n")
    learned = preload.learn("k")
    assert learned.error is None and learned.paths == ("/b", "/a", "/c")  # 6, 5, 1
    assert sorted(os.listdir(d)) == ["learned-k.json"]
    later = gone + 1  # another gone master of the app, seen after this process's merge
    (d / f"master-{later}.json").write_text(f'{{"pid": {later}, "start_ticks": 1, "boot_id": "x", "key": "k"}}')
    (d / f"paths-{later}-1.txt").write_text("9\t/late\n")
    assert preload.learn("k") is learned  # merged once per process: the later calls of a start read nothing
    assert (d / f"paths-{later}-1.txt").exists()
    monkeypatch.setitem(preload._state, "learned", None)  # as the next master
    again = preload.learn("k")
    assert again.paths == ("/late", "/b", "/a", "/c")  # the learned list was kept, the new record merged


def test_learned_paths_keep_three_of_a_shape(tmp_path, monkeypatch):
    d = tmp_path / "preload"
    d.mkdir(mode=0o700)
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    gone = 4_194_304 + 18
    (d / f"master-{gone}.json").write_text(f'{{"pid": {gone}, "start_ticks": 1, "boot_id": "x", "key": "k"}}')
    lines = [f"{100 - i}\t/products/{i}/" for i in range(10)] + ["1\t/categories/oak/", "1\t/"]
    (d / f"paths-{gone}-1.txt").write_text("\n".join(lines) + "\n")
    assert preload.learn("k").paths == ("/products/0/", "/products/1/", "/products/2/", "/", "/categories/oak/")
