"""``gunicorn_conf.py`` plus the ``gc`` module documentation's fork recipe (the gc-freeze mode):
``gc.disable()`` when gunicorn reads this file (before the preloaded app is imported),
``gc.freeze()`` in ``when_ready`` (app loaded, no worker forked yet), ``gc.enable()`` in
``post_fork``. No cowprof code."""
import gc
import os
import runpy

globals().update({k: v for k, v in runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_conf.py")).items()
    if not k.startswith("__")})

gc.disable()


def when_ready(server):
    gc.freeze()
    server.log.info("gc recipe: froze %d objects", gc.get_freeze_count())


def post_fork(server, worker):
    gc.enable()
