"""cowprof.gunicorn: hook composition, options, warm-up and the config-module mechanism.

``prepare_fork``/``after_fork`` are replaced by recorders here (the real ones are exercised by
tests/integration/test_gunicorn.py against a real gunicorn); the server is a small stand-in with the
attributes gunicorn's Arbiter gives hooks (``cfg.preload_app``, ``log``, ``app.wsgi()``).
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from types import SimpleNamespace

import pytest

import cowprof.gunicorn as cg
from cowprof.recipes import _environ_for
from cowprof.errors import BadInput


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level: str, msg: str, *args: object) -> None:
        self.lines.append((level, msg % args if args else msg))

    def info(self, msg, *args, **kw):
        self._add("info", msg, *args)

    def warning(self, msg, *args, **kw):
        self._add("warning", msg, *args)

    def error(self, msg, *args, **kw):
        self._add("error", msg, *args)

    def debug(self, msg, *args, **kw):
        self._add("debug", msg, *args)

    def exception(self, msg, *args, **kw):
        self._add("exception", msg, *args)

    def text(self, level: str | None = None) -> str:
        return "\n".join(m for lv, m in self.lines if level in (None, lv))


def tiny_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("kaboom")
    if path == "/500":
        start_response("500 Internal Server Error", [])
        return [b"no"]
    tiny_app.seen.append(path + ("?" + environ["QUERY_STRING"] if environ["QUERY_STRING"] else ""))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


tiny_app.seen = []


def make_server(preload: bool = True, app=tiny_app, dirty_workers: int = 0):
    cfg = SimpleNamespace(preload_app=preload, dirty_workers=dirty_workers,
                          dirty_apps=["dirtyshop:CatalogIndex"] if dirty_workers else [])
    return SimpleNamespace(cfg=cfg, log=FakeLog(), app=SimpleNamespace(wsgi=lambda: app))


class FakeReport:
    def __init__(self, kwargs):
        self.kwargs = kwargs

    def summary(self) -> str:
        return "prepared 123 objects (1.0 MB) in 0.01 s"

    def to_dict(self) -> dict:
        return {"objects": 123, "kwargs": self.kwargs}


@pytest.fixture
def calls(monkeypatch):
    """Records prepare_fork/after_fork calls in order, and clears the COWPROF_* environment."""
    log: list[str] = []

    def fake_prepare(**kwargs):
        log.append("prepare")
        return FakeReport(kwargs)

    monkeypatch.setattr(cg, "prepare_fork", fake_prepare)
    monkeypatch.setattr(cg, "after_fork", lambda: log.append("after_fork"))
    for name in list(os.environ):
        if name.startswith("COWPROF_"):
            monkeypatch.delenv(name)
    tiny_app.seen.clear()
    return log


def test_module_hooks_prepare_and_restore(calls):
    server = make_server()
    cg.when_ready(server)
    cg.post_fork(server, object())
    assert calls == ["prepare", "after_fork"]
    assert "cowprof: prepared 123 objects" in server.log.text("info")


def test_preload_off_warns_and_skips_prepare(calls):
    server = make_server(preload=False)
    cg.when_ready(server)
    assert calls == []
    warning = server.log.text("warning")
    assert "preload_app is off" in warning and "--preload" in warning


def test_install_composes_with_user_hooks_in_order(calls):
    ns = {"workers": 3,
          "when_ready": lambda server: calls.append("user_ready"),
          "post_fork": lambda server, worker: calls.append("user_post_fork"),
          "pre_fork": lambda server, worker: calls.append("user_pre_fork")}
    pre_fork = ns["pre_fork"]
    cg.install(ns)
    server = make_server()
    ns["when_ready"](server)
    ns["pre_fork"](server, None)
    ns["post_fork"](server, None)
    # the user's when_ready runs before prepare (what it allocates is prepared too); after_fork
    # runs before the user's post_fork; other hooks and settings are untouched
    assert calls == ["user_ready", "prepare", "user_pre_fork", "after_fork", "user_post_fork"]
    assert ns["pre_fork"] is pre_fork and ns["workers"] == 3


def test_install_twice_does_not_prepare_twice(calls):
    ns = {"when_ready": lambda server: calls.append("user_ready")}
    cg.install(ns)
    first = ns["when_ready"]
    cg.install(ns)
    assert ns["when_ready"] is first
    ns["when_ready"](make_server())
    assert calls == ["user_ready", "prepare"]


def test_install_keeps_gunicorn_arity(calls):
    from gunicorn.config import Config

    ns = {"when_ready": lambda server: None, "post_fork": lambda server, worker: None}
    cg.install(ns)
    cfg = Config()
    cfg.set("when_ready", ns["when_ready"])  # gunicorn validates the arity of hooks
    cfg.set("post_fork", ns["post_fork"])
    cfg.set("when_ready", cg.when_ready)
    cfg.set("post_fork", cg.post_fork)


def _user_hooks(calls: list[str]) -> dict:
    return {"on_starting": lambda server: calls.append("user_on_starting"),
            "when_ready": lambda server: calls.append("user_ready"),
            "on_dirty_starting": lambda arbiter: calls.append("user_on_dirty_starting"),
            "dirty_worker_init": lambda worker: calls.append("user_dirty_worker_init")}


def test_dirty_arbiter_is_forked_from_the_prepared_heap(calls):
    # gunicorn forks the dirty arbiter between on_starting and when_ready: prepare in on_starting
    ns = _user_hooks(calls)
    cg.install(ns)
    server = make_server(dirty_workers=1)
    ns["on_starting"](server)
    ns["when_ready"](server)
    ns["on_dirty_starting"](object())
    ns["dirty_worker_init"](object())
    assert calls == ["user_on_starting", "prepare", "user_ready", "after_fork", "user_on_dirty_starting",
                     "after_fork", "user_dirty_worker_init"]


def test_without_dirty_arbiter_when_ready_prepares(calls):
    ns = _user_hooks(calls)
    cg.install(ns)
    server = make_server()
    ns["on_starting"](server)
    ns["when_ready"](server)
    assert calls == ["user_on_starting", "user_ready", "prepare"]


def test_dirty_hooks_keep_gunicorn_arity(calls):
    from gunicorn.config import Config

    cfg = Config()
    if "dirty_worker_init" not in cfg.settings:
        pytest.skip("gunicorn < 25 has no dirty arbiter hooks")
    ns = _user_hooks(calls)
    cg.install(ns)
    for name in ("on_starting", "on_dirty_starting", "dirty_worker_init"):
        cfg.set(name, ns[name])
        cfg.set(name, getattr(cg, name))


def test_install_resolves_string_hooks(calls):
    string_hook.calls.clear()
    ns = {"post_fork": f"{__name__}.string_hook"}
    cg.install(ns)
    ns["post_fork"](None, None)
    assert calls == ["after_fork"] and string_hook.calls == ["string_hook"]


def string_hook(server, worker):
    string_hook.calls.append("string_hook")


def test_env_prepare_zero_skips_prepare_but_keeps_warmup(calls, monkeypatch, tmp_path):
    report = tmp_path / "r.json"
    monkeypatch.setenv("COWPROF_PREPARE", "0")
    monkeypatch.setenv("COWPROF_WARMUP", "/a?x=1, /b")
    monkeypatch.setenv("COWPROF_WARMUP_ROUNDS", "3")
    monkeypatch.setenv("COWPROF_RELOCATE_CODE", "0")  # relocation adds rounds: test_warmup_rounds_with_relocation
    monkeypatch.setenv("COWPROF_PREPARE_REPORT", str(report))
    server = make_server()
    cg.when_ready(server)
    assert calls == []
    assert tiny_app.seen == ["/a?x=1", "/b"] * 3
    data = json.loads(report.read_text())
    assert data["prepare"] is None and data["skipped"] == "prepare off"
    assert data["warmup"]["requests"] == 6 and data["warmup"]["ok"] == 6


def test_report_file_holds_prepare_report(calls, monkeypatch, tmp_path):
    report = tmp_path / "r.json"
    monkeypatch.setenv("COWPROF_PREPARE_REPORT", str(report))
    monkeypatch.setenv("COWPROF_HEAPMAP", "1")
    cg.when_ready(make_server())
    data = json.loads(report.read_text())
    assert data["prepare"] == {"objects": 123, "kwargs": {"heapmap": True}}
    assert data["preload"] is True and data["pid"] == os.getpid()


def test_bad_env_is_logged_not_raised(calls, monkeypatch):
    monkeypatch.setenv("COWPROF_PREPARE", "maybe")
    server = make_server()
    cg.when_ready(server)
    assert "COWPROF_PREPARE must be 0 or 1" in server.log.text("error")
    assert calls == ["prepare"]


def test_options_from_env_precedence():
    base = cg.HookOptions(prepare=True, warmup=("/x",), warmup_rounds=5)
    assert cg.options_from_env(base, {}) == base
    opts = cg.options_from_env(base, {"COWPROF_WARMUP": "", "COWPROF_PREPARE": "off"})
    assert opts.warmup == () and opts.prepare is False and opts.warmup_rounds == 5
    opts = cg.options_from_env(base, {"COWPROF_HEAPMAP": "/tmp/maps"})
    assert opts.prepare_kwargs == {"heapmap": "/tmp/maps"}
    with pytest.raises(BadInput):
        cg.options_from_env(base, {"COWPROF_WARMUP": "relative/path"})
    with pytest.raises(BadInput):
        cg.options_from_env(base, {"COWPROF_WARMUP_ROUNDS": "two"})


def test_warmup_failures_are_logged_never_raised(calls):
    server = make_server()
    result = cg.warm_up(tiny_app, ["/ok", "/boom", "/500"], rounds=2, log=server.log)
    assert (result.requests, result.ok, result.failed) == (6, 2, 4)
    assert result.failures == ("/boom: RuntimeError: kaboom", "/500: status 500 Internal Server Error")
    warnings = server.log.text("warning")
    assert warnings.count("kaboom") == 1  # each distinct failure is logged once


def test_warmup_environ_is_valid_wsgi(calls):
    from wsgiref.validate import validator

    result = cg.warm_up(validator(tiny_app), ["/p%20q?a=1", "https://example.com:8443/x"], rounds=1)
    assert result.ok == 2, result.failures
    env = _environ_for("https://example.com:8443/x?y=2")
    assert (env["HTTP_HOST"], env["SERVER_PORT"], env["wsgi.url_scheme"], env["QUERY_STRING"]) == (
        "example.com:8443", "8443", "https", "y=2")


def test_hook_survives_failing_prepare(calls, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("walk failed")

    monkeypatch.setattr(cg, "prepare_fork", broken)
    server = make_server()
    assert cg.prepare_master(server) is None
    assert "prepare_fork failed" in server.log.text("exception")


def test_apply_user_config_takes_settings_and_composes(calls, tmp_path):
    conf = tmp_path / "user.conf.py"
    conf.write_text(textwrap.dedent("""
        import os
        workers = 7
        bind = "127.0.0.1:9999"
        not_a_setting = 1
        cowprof_warmup = ["/warm"]
        EVENTS = []
        def when_ready(server):
            EVENTS.append("user_ready")
        def post_fork(server, worker):
            EVENTS.append("user_post_fork")
    """))
    ns: dict = {}
    cg.apply_user_config(str(conf), ns)
    assert ns["workers"] == 7 and ns["bind"] == "127.0.0.1:9999"
    assert "not_a_setting" not in ns and "os" not in ns and "cowprof_warmup" not in ns
    server = make_server()
    ns["when_ready"](server)
    ns["post_fork"](server, None)
    events = sys.modules["__config__"].EVENTS
    assert events == ["user_ready", "user_post_fork"]
    assert calls == ["prepare", "after_fork"]
    assert set(tiny_app.seen) == {"/warm"} and len(tiny_app.seen) >= 2


@pytest.mark.skipif(sys.version_info < (3, 12), reason="hot code relocation runs on CPython 3.12+")
def test_warmup_rounds_with_relocation(calls, monkeypatch, tmp_path):
    """Relocation adds a probe round, then settle rounds (60 at most) for the copies."""
    report = tmp_path / "r.json"
    monkeypatch.setenv("COWPROF_WARMUP", "/w")
    monkeypatch.setenv("COWPROF_WARMUP_ROUNDS", "2")
    monkeypatch.setenv("COWPROF_PREPARE_REPORT", str(report))
    server = make_server()
    cg.when_ready(server)
    warm = json.loads(report.read_text())["warmup"]
    assert warm["relocation"]["skipped"] is None, warm["relocation"]
    assert warm["relocation"]["hot"] >= 1 and warm["relocation"]["functions"] >= 1
    assert tiny_app.seen == ["/w"] * (2 + 1 + 60)
    assert "cowprof: hot code:" in server.log.text("info")


@pytest.mark.parametrize("value, enabled, paths, learned", [
    (None, True, (), False), ("auto", True, (), False), ("", False, (), False), ("0", False, (), False),
    ("off", False, (), False), ("/a, auto,/b", True, ("/a", "/b"), False), (False, False, (), False),
    (["/x"], True, ("/x",), False), ("learned", True, (), True), ("/a, Learned", True, ("/a",), True),
    (["learned", "/x"], True, ("/x",), True),
])
def test_warmup_setting_values(value, enabled, paths, learned):
    assert cg._parse_warmup(value) == (enabled, paths, learned)


def test_warmup_off_runs_nothing(calls, monkeypatch, tmp_path):
    report = tmp_path / "r.json"
    monkeypatch.setenv("COWPROF_WARMUP", "")
    monkeypatch.setenv("COWPROF_PREPARE_REPORT", str(report))
    cg.when_ready(make_server())
    assert tiny_app.seen == [] and json.loads(report.read_text())["warmup"] is None


def test_load_user_config_errors():
    with pytest.raises(BadInput, match="no such config file"):
        cg.load_user_config("/nonexistent/gunicorn.conf.py")
    with pytest.raises(BadInput, match="no module named"):
        cg.load_user_config("python:no_such_module_for_cowprof")
    with pytest.raises(BadInput, match="cowprof's own config module"):
        cg.load_user_config("python:cowprof.gunicorn")


def test_module_globals_set_no_other_gunicorn_setting():
    from gunicorn.config import KNOWN_SETTINGS

    names = {s.name for s in KNOWN_SETTINGS}
    hooks = ["on_starting", "when_ready", "post_fork", "post_request", "on_dirty_starting", "dirty_worker_init"]
    assert [k for k in vars(cg) if k in names] == [h for h in hooks if h in names]


string_hook.calls = []


def test_apply_user_config_from_python_module(calls, tmp_path, monkeypatch):
    (tmp_path / "cowprof_test_settings.py").write_text("workers = 3\ndef post_fork(server, worker):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns: dict = {}
    cg.apply_user_config("python:cowprof_test_settings", ns)
    assert ns["workers"] == 3
    assert ns["post_fork"].__wrapped_user_hook__.__module__ == "cowprof_test_settings"
    assert ns["when_ready"].__wrapped_user_hook__ is None


def test_post_request_counts_for_learned_warmup_then_runs_the_users(monkeypatch):
    from gunicorn.config import Config

    from cowprof import preload

    seen: list[str] = []
    ns = {"post_request": lambda worker, req, environ, resp: seen.append(req.path)}
    cg.install(ns)
    Config().set("post_request", ns["post_request"])  # gunicorn accepts its arity
    served: dict[str, int] = {}
    monkeypatch.setitem(preload._state, "served", served)  # an armed worker

    class Req:
        method, path = "GET", "/items/1"

    class Resp:
        status_code = 200

    ns["post_request"](object(), Req(), {}, Resp())
    ns["post_request"](object(), Req(), {}, object())  # a response without a status: not counted, no error
    assert served == {"/items/1": 1} and seen == ["/items/1", "/items/1"]
