"""cowprof.gunicorn as gunicorn loads it: ``-c python:cowprof.gunicorn`` through gunicorn's own
config loader, in a child interpreter, with and without the user's config file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_LOAD_AS_GUNICORN = """
import json, sys
from gunicorn.app.base import Application


class Probe(Application):
    def load_config(self): pass
    def init(self, parser, opts, args): pass
    def load(self): pass
app = Probe()
app.load_config_from_module_name_or_filename("python:cowprof.gunicorn")
c = app.cfg
print(json.dumps({"workers": c.workers, "preload": c.preload_app, "bind": c.bind,
                  "when_ready": getattr(c.when_ready, "_cowprof_hook", False),
                  "post_fork": getattr(c.post_fork, "_cowprof_hook", False),
                  "user_on_starting": getattr(getattr(c.on_starting, "__wrapped_user_hook__", None), "__module__", None),
                  "wraps_user_hook": c.when_ready.__wrapped_user_hook__ is not None}))
"""


def _gunicorn_load(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COWPROF_") or k.endswith("_DIR")}  # the suite's dirs
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", _LOAD_AS_GUNICORN], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_gunicorn_loads_module_with_user_config(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("workers = 5\npreload_app = True\nbind = '127.0.0.1:0'\n"
                    "def on_starting(server):\n    pass\n"
                    "def when_ready(server):\n    pass\n")
    proc = _gunicorn_load({"COWPROF_GUNICORN_CONFIG": str(conf)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == {"workers": 5, "preload": True, "bind": ["127.0.0.1:0"], "when_ready": True,
                   "post_fork": True, "user_on_starting": "__config__", "wraps_user_hook": True}


def test_gunicorn_loads_module_without_user_config():
    proc = _gunicorn_load({})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["when_ready"] and got["post_fork"] and got["workers"] == 1


def test_missing_user_config_is_one_line_error(tmp_path):
    proc = _gunicorn_load({"COWPROF_GUNICORN_CONFIG": str(tmp_path / "missing.py")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"cowprof: COWPROF_GUNICORN_CONFIG: no such config file: '{tmp_path / 'missing.py'}'"]


def test_user_config_can_install_itself(tmp_path):
    # a config that calls install() is loaded through COWPROF_GUNICORN_CONFIG: no double wrapping
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from cowprof.gunicorn import install\nworkers = 2\ninstall(globals())\n")
    proc = _gunicorn_load({"COWPROF_GUNICORN_CONFIG": str(conf)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["when_ready"] is True and got["wraps_user_hook"] is False and got["workers"] == 2
