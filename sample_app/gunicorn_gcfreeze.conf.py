"""The sample app under the ``gc`` module documentation's fork recipe (the demo's ``gc-freeze`` mode).

The recipe, as the docs state it: call ``gc.disable()`` early in the parent, ``gc.freeze()`` right
before ``fork()``, and ``gc.enable()`` early in the children. Here: ``gc.disable()`` when gunicorn
reads this file (before the preloaded app is imported), ``gc.freeze()`` in ``when_ready`` (after the
app is loaded, before the first worker is forked), ``gc.enable()`` in ``post_fork``. Everything else
comes from ``gunicorn.conf.py`` next to this file. No cowprof code runs in this mode, except,
when ``SAMPLE_APP_RECORD_HEAPMAP=1``, the measurement-only ``cowprof.heapmap.record()``.

If the env ``COWPROF_PREPARE_REPORT`` names a file, the time ``gc.freeze()`` took is written there as
JSON (the demo shows it as the mode's prepare time).
"""
import gc
import json
import os
import runpy
import time

globals().update({k: v for k, v in runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")).items()
    if not k.startswith("__")})

gc.disable()


def when_ready(server):
    if os.environ.get("SAMPLE_APP_RECORD_HEAPMAP") == "1":
        # measurement only: a heap map for the demo's "top types" column; prepares nothing
        from cowprof.heapmap import record

        server.log.info("heap map (measurement only): %s", record())
    started = time.perf_counter()
    gc.freeze()
    seconds = time.perf_counter() - started
    server.log.info("gc recipe: froze %d objects in %.3f s", gc.get_freeze_count(), seconds)
    path = os.environ.get("COWPROF_PREPARE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"recipe": "gc.freeze", "frozen": gc.get_freeze_count(), "seconds": seconds}, f)


def post_fork(server, worker):
    gc.enable()
