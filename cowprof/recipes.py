"""Fork recipe helpers: warm-up, and prepare/restore for servers other than gunicorn.

See docs/servers.md (gunicorn has its own hooks: :mod:`cowprof.gunicorn`).

The rule is the same everywhere: :func:`cowprof.prepare_fork` in the parent once everything the
children will share is loaded, right before the first fork; :func:`cowprof.after_fork` in each child
right after it. What differs is where a server lets you run code at those two moments:

- plain ``os.fork()``, ``multiprocessing`` with the ``fork`` start method, Celery's prefork pool
  (billiard forks with ``os.fork``): :func:`prepare_parent` prepares and registers ``after_fork``
  with :func:`os.register_at_fork`, which runs in every child forked from Python code;
- ``multiprocessing`` with the ``forkserver`` start method (the Linux default since 3.14): the fork
  server forks the children, so it must be the process prepared: :func:`forkserver_context`;
- :func:`warm_up` calls a WSGI app in-process for a few paths before preparing, so that what the
  first requests import, cache or specialize happens once in the parent (:mod:`cowprof.warmup`;
  gunicorn's hook runs the whole framework-aware :func:`cowprof.warmup.warm_up_app`);
- uWSGI forks from C, where ``os.register_at_fork`` callbacks do not run by default: use
  :func:`uwsgi_postfork` (its ``postfork`` hook) instead, or :func:`prepare_uwsgi`, the whole
  recipe in one call (framework-aware warm-up, prepare, ``postfork`` hook).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cowprof.prepare import PrepareReport, after_fork, prepare_fork
from cowprof.warmup import WarmupResult, _environ_for, warm_up  # noqa: F401 (re-exported)

__all__ = ["WarmupResult", "forkserver_context", "prepare_parent", "prepare_uwsgi", "register_after_fork",
           "uwsgi_postfork", "warm_up"]

_registered = False


def register_after_fork() -> bool:
    """Registers :func:`cowprof.after_fork` to run in every child of ``os.fork()``, once per process
    (and its children). Returns False when it was already registered."""
    global _registered
    if _registered:
        return False
    os.register_at_fork(after_in_child=after_fork)
    _registered = True
    return True


def prepare_parent(*, register_child_hook: bool = True, **prepare_kwargs: Any) -> PrepareReport:
    """Prepares this (parent) process's heap for forking and, by default, registers ``after_fork``
    for the children. ``prepare_kwargs`` go to :func:`cowprof.prepare_fork`. Call it after the data
    the children share is loaded and before the first fork (before creating a fork ``Pool``)."""
    report = prepare_fork(**prepare_kwargs)
    if register_child_hook:
        register_after_fork()
    return report


def forkserver_context(preload: Sequence[str]) -> Any:
    """A ``multiprocessing`` ``forkserver`` context whose fork server imports ``preload`` (the
    modules holding what the children share) and then :mod:`cowprof.forkserver`, which prepares the
    server before it forks any child. Create pools and processes from the returned context."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([m for m in preload if m != "cowprof.forkserver"] + ["cowprof.forkserver"])
    return ctx


def uwsgi_postfork() -> bool:
    """Runs ``after_fork`` in each uWSGI worker through ``uwsgidecorators.postfork``.

    Call it at import of the WSGI module (which uWSGI imports in the master unless ``lazy-apps``
    is on). Returns False outside uWSGI (``uwsgidecorators`` is only importable inside it).
    """
    try:
        import uwsgidecorators
    except ImportError:
        return False
    uwsgidecorators.postfork(after_fork)
    return True


def prepare_uwsgi(application: Any, *, warmup: bool = True, log: Any = None,
                  **prepare_kwargs: Any) -> PrepareReport:
    """The uWSGI recipe in one call, at the end of the WSGI module (which uWSGI imports in its
    master unless ``lazy-apps`` is on): the framework-aware warm-up of ``application`` that
    gunicorn's hook runs (:func:`cowprof.warmup.warm_up_app`: framework steps and requests, hot
    code relocation, learned hot code), :func:`cowprof.prepare_fork`, and ``after_fork`` in each
    worker through uWSGI's ``postfork`` hook. ``COWPROF_WARMUP=0`` (or ``warmup=False``) skips the
    warm-up. Raises RuntimeError outside uWSGI, where the hook cannot be registered."""
    from cowprof.warmup import warm_up_app

    if warmup and os.environ.get("COWPROF_WARMUP", "").strip() not in ("0", "off", "false"):
        warm_up_app(application, log=log)
    report = prepare_fork(**prepare_kwargs)
    if not uwsgi_postfork():
        raise RuntimeError("cowprof.recipes.prepare_uwsgi: not running inside uWSGI (uwsgidecorators is missing)")
    return report
