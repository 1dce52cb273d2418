"""Gunicorn config of the server fixtures: the app preloaded in the master, nothing of cowprof.

The test or benchmark passes the app, bind address, worker count and class on the command line.
``SERVERAPPS_PROC_NAME`` names the server (gunicorn keys per-server files such as the dirty
arbiter's PID file by it, so parallel servers need different names).
"""
import os

preload_app = True
workers = 2
timeout = 60
graceful_timeout = 5
loglevel = "info"
accesslog = None
proc_name = os.environ.get("SERVERAPPS_PROC_NAME", "serverapps")
# gunicorn >= 25.1 opens a control socket at one fixed per-user path: parallel servers would share it
control_socket_disable = True
