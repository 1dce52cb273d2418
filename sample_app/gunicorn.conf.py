"""Gunicorn configuration of the sample app: ``gunicorn -c sample_app/gunicorn.conf.py``.

Loopback only, 4 sync workers, the app preloaded in the master (that is what makes the workers share
its heap through copy-on-write). Environment overrides: ``SAMPLE_APP_BIND`` (default
127.0.0.1:8000), ``SAMPLE_APP_WORKERS`` (4); ``SAMPLE_APP_MB`` sizes the heap (see sample_app.data).

This file has no cowprof in it. To run it with cowprof's hook:
``COWPROF_GUNICORN_CONFIG=sample_app/gunicorn.conf.py gunicorn -c python:cowprof.gunicorn``.
"""
import os

wsgi_app = "sample_app.app:app"
bind = os.environ.get("SAMPLE_APP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SAMPLE_APP_WORKERS", "4"))
worker_class = "sync"
preload_app = True
timeout = 60
graceful_timeout = 10
loglevel = "info"
accesslog = None
# gunicorn >= 25.1 opens a control socket at one fixed per-user path; several sample servers at once
# (demo modes, tests) would fight over it. Older gunicorn ignores this unknown name.
control_socket_disable = True


if os.environ.get("SAMPLE_APP_RECORD_HEAPMAP") == "1":
    # Measurement only (the demo's baseline): save a heap map for `cowprof snapshot --by type` without
    # preparing anything (no immortalization, hashing, tagging, collecting or freezing).
    def when_ready(server):
        from cowprof.heapmap import record

        server.log.info("heap map (measurement only): %s", record())
