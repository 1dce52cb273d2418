"""Gunicorn hooks: prepare the master's heap before the first fork, restore each worker after it.

With ``preload_app`` the app is imported once in the master and the workers share its memory
copy-on-write, until reference counting, the cyclic GC and lazy caches write to that memory and the
kernel copies the pages, in every worker. The hooks here fix that at the right moments:

- ``when_ready(server)`` — runs in the master after the app is loaded and before any worker is
  forked: the user's own ``when_ready`` first, then the warm-up (:func:`cowprof.warmup.warm_up_app`:
  the detected framework's lazy structures are built, its own safe endpoints and the configured
  paths are called in-process, the code they keep writing is relocated, so that lazy imports,
  caches and bytecode specialization happen once, in the master), then
  :func:`cowprof.prepare_fork`. The :class:`~cowprof.PrepareReport` is logged through gunicorn's
  logger. With ``preload_app`` off it warns instead: nothing would be shared.
- ``post_fork(server, worker)`` — runs in each new worker: :func:`cowprof.after_fork`, then the
  user's own ``post_fork``.
- ``post_request(worker, req, environ, resp)`` — runs in a worker after each request: with learned
  warm-up on (``COWPROF_WARMUP=learned``) counts a GET answered with a 2xx status, then the user's
  own ``post_request``.
- gunicorn 25+'s dirty arbiter (``dirty_workers`` > 0 and ``dirty_apps``): the master forks it in
  ``Arbiter.start()`` after ``on_starting`` and *before* ``when_ready``, so ``on_starting(server)``
  (the user's own first) prepares instead of ``when_ready`` when one is configured: the dirty
  arbiter and the dirty workers it forks then share the prepared heap too. ``on_dirty_starting``
  (in the dirty arbiter, right after its fork) and ``dirty_worker_init`` (in each dirty worker,
  after it loaded its dirty apps: gunicorn's ``dirty_post_fork`` runs in the dirty arbiter, not in
  the new worker) run :func:`cowprof.after_fork` before the user's own.

Two ways to use it (docs/servers.md has the details):

1. As the config module: ``gunicorn -c python:cowprof.gunicorn app:app``. To keep your own config
   file, name it in ``COWPROF_GUNICORN_CONFIG`` (a path, or ``python:module``): it is executed the way
   gunicorn executes a config file, all its settings are taken over and its hooks are composed with
   these (``cowprof run`` sets this up from ``-c``).
2. From your own ``gunicorn.conf.py``: ``from cowprof.gunicorn import install; install(globals())``
   at the end of the file wraps the hooks defined above it; or, with no hooks of your own,
   ``from cowprof.gunicorn import when_ready, post_fork``.

Environment (read when the hook runs, and stronger than arguments and config names):
``COWPROF_PREPARE=0`` keeps the hooks but skips ``prepare_fork`` (a baseline);
``COWPROF_WARMUP="/a,/b?x=1"`` warm-up paths on top of the framework's (unset or ``auto``: the
framework's only; empty or ``0``: no warm-up at all; ``learned`` among them, opt-in because it
sends requests the app's own clients sent: also the GET paths earlier workers of this app answered
with a 2xx status, which the workers count through ``post_request``, see :mod:`cowprof.preload`);
``COWPROF_WARMUP_ROUNDS`` (default 2);
``COWPROF_WARMUP_FRAMEWORK=0`` only the configured paths; ``COWPROF_RELOCATE_CODE=0`` keeps the code
objects where they are; ``COWPROF_WARMUP_SERVER=0`` calls the app directly instead of through a
sync or gthread worker's request code or a uvicorn server;
``COWPROF_HEAPMAP=0`` skips the heap map (on by default), a directory saves it there;
``COWPROF_PREPARE_REPORT=path`` writes what the hook did as JSON. In a config file loaded through
``COWPROF_GUNICORN_CONFIG`` the names ``cowprof_prepare``, ``cowprof_warmup`` and
``cowprof_warmup_rounds`` set the same things.

Every module-level name here that gunicorn knows as a setting is applied by ``-c python:`` — so
the module defines only its hooks (plus the user's settings, when loaded).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cowprof import preload
from cowprof.errors import BadInput
from cowprof.gunicorn_requests import worker_transport
from cowprof.prepare import PrepareReport, after_fork, prepare_fork
from cowprof.recipes import WarmupResult, warm_up
from cowprof.warmup import WarmupOptions, warm_up_app

__all__ = [
    "ENV_CONFIG", "HookOptions", "WarmupResult", "apply_user_config", "dirty_worker_init", "install",
    "load_user_config", "make_dirty_worker_init", "make_on_dirty_starting", "make_on_starting",
    "make_post_fork", "make_post_request", "make_when_ready", "on_dirty_starting", "on_starting",
    "options_from_env", "post_fork", "post_request", "prepare_master", "warm_up", "when_ready",
]

Hook = Callable[..., Any]  # a gunicorn server hook: arguments per hook, result ignored

ENV_CONFIG = "COWPROF_GUNICORN_CONFIG"
ENV_PREPARE = "COWPROF_PREPARE"
ENV_WARMUP = "COWPROF_WARMUP"
ENV_WARMUP_ROUNDS = "COWPROF_WARMUP_ROUNDS"
ENV_WARMUP_FRAMEWORK = "COWPROF_WARMUP_FRAMEWORK"
ENV_RELOCATE_CODE = "COWPROF_RELOCATE_CODE"
ENV_WARMUP_SERVER = "COWPROF_WARMUP_SERVER"
ENV_HEAPMAP = "COWPROF_HEAPMAP"
ENV_REPORT = "COWPROF_PREPARE_REPORT"
_HOOK_MARK = "_cowprof_hook"
_PREPARED_MARK = "_cowprof_prepared"  # set on the Arbiter once a hook prepared it
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")
PRELOAD_OFF_WARNING = (
    "cowprof: preload_app is off: every worker imports the app after the fork, so the workers share "
    "none of the app's memory with the master and there is nothing to prepare. Set "
    "'preload_app = True' in the config (or pass --preload) to share it."
)


@dataclass(frozen=True)
class HookOptions:
    """What the ``when_ready`` hook does. ``prepare_kwargs`` go to :func:`cowprof.prepare_fork`."""

    prepare: bool = True
    warmup: tuple[str, ...] = ()
    """The user's warm-up paths, requested on top of the framework's own."""
    warmup_enabled: bool = True
    warmup_learned: bool = False
    """``learned`` among the warm-up paths: also request the GET paths earlier workers of this app
    answered with a 2xx status, and have the workers count theirs (cowprof.preload)."""
    warmup_framework: bool = True
    warmup_rounds: int = 2
    relocate_code: bool = True
    warmup_server: bool = True
    """Send the warm-up requests through a worker object of the server's (sync) worker class."""
    report_path: str | None = None
    prepare_kwargs: Mapping[str, Any] = field(default_factory=dict)


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise BadInput(f"{name} must be 0 or 1, got {raw!r}")


_OFF = ("0", "off", "false", "no", "none")
_AUTO, _LEARNED = "auto", "learned"


def _parse_paths(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    paths = tuple(p.strip() for p in items if p and p.strip() and p.strip().lower() not in (_AUTO, _LEARNED))
    for p in paths:
        if not (p.startswith("/") or "://" in p):
            raise BadInput(f"warm-up paths must start with '/' (or be http:// URLs), got {p!r}")
    return paths


def _parse_warmup(raw: str | Iterable[str] | bool | None) -> tuple[bool, tuple[str, ...], bool]:
    """(warm-up on, user paths, learned paths too) of a COWPROF_WARMUP value or ``cowprof_warmup``
    setting: None and ``auto`` are the framework's warm-up only; empty, ``0``, ``off`` and False
    turn it off; ``learned`` among the items adds the learned paths."""
    if raw is None or raw is True:
        return True, (), False
    if raw is False:
        return False, (), False
    if isinstance(raw, str) and raw.strip().lower() in _OFF + ("",):
        return False, (), False
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    learned = any(isinstance(p, str) and p.strip().lower() == _LEARNED for p in items)
    return True, _parse_paths(items), learned


def options_from_env(base: HookOptions = HookOptions(), environ: Mapping[str, str] | None = None) -> HookOptions:
    """``base`` with the ``COWPROF_*`` environment variables applied on top (see the module doc)."""
    env = os.environ if environ is None else environ
    opts = base
    if ENV_PREPARE in env:
        opts = replace(opts, prepare=_parse_bool(ENV_PREPARE, env[ENV_PREPARE]))
    if ENV_WARMUP in env:
        enabled, paths, learned = _parse_warmup(env[ENV_WARMUP])
        opts = replace(opts, warmup_enabled=enabled, warmup=paths, warmup_learned=learned)
    if env.get(ENV_WARMUP_FRAMEWORK, "").strip():
        opts = replace(opts, warmup_framework=_parse_bool(ENV_WARMUP_FRAMEWORK, env[ENV_WARMUP_FRAMEWORK]))
    if env.get(ENV_RELOCATE_CODE, "").strip():
        opts = replace(opts, relocate_code=_parse_bool(ENV_RELOCATE_CODE, env[ENV_RELOCATE_CODE]))
    if env.get(ENV_WARMUP_SERVER, "").strip():
        opts = replace(opts, warmup_server=_parse_bool(ENV_WARMUP_SERVER, env[ENV_WARMUP_SERVER]))
    if env.get(ENV_WARMUP_ROUNDS, "").strip():
        raw = env[ENV_WARMUP_ROUNDS]
        try:
            rounds = int(raw)
        except ValueError:
            raise BadInput(f"{ENV_WARMUP_ROUNDS} must be a whole number, got {raw!r}") from None
        opts = replace(opts, warmup_rounds=max(0, rounds))
    if env.get(ENV_HEAPMAP, "").strip():
        raw = env[ENV_HEAPMAP].strip()
        heapmap: bool | str = raw if raw.lower() not in _FALSE + _TRUE else raw.lower() in _TRUE
        opts = replace(opts, prepare_kwargs={**opts.prepare_kwargs, "heapmap": heapmap})
    if env.get(ENV_REPORT, "").strip():
        opts = replace(opts, report_path=env[ENV_REPORT].strip())
    return opts


def _write_report(path: str | None, payload: dict[str, Any], log: Any) -> None:
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    except OSError as err:
        log.warning("cowprof: cannot write %s=%s: %s", ENV_REPORT, path, err)


def prepare_master(server: Any, options: HookOptions = HookOptions()) -> PrepareReport | None:
    """The body of the ``when_ready`` hook: warn, warm up, prepare, log (see the module doc).

    ``server`` is gunicorn's Arbiter (``server.cfg``, ``server.log``, ``server.app``). Returns the
    report, or ``None`` when nothing was prepared. Never raises: a failing preparation is logged and
    the server starts as it would have without cowprof.
    """
    log = server.log
    try:
        opts = options_from_env(options)
    except BadInput as err:
        log.error("cowprof: %s; ignoring the COWPROF_* environment", err)
        opts = options
    payload: dict[str, Any] = {"pid": os.getpid(), "preload": bool(server.cfg.preload_app),
                               "prepare": None, "warmup": None, "skipped": None}
    if not server.cfg.preload_app:
        log.warning(PRELOAD_OFF_WARNING)
        payload["skipped"] = "preload_app is off"
        _write_report(opts.report_path, payload, log)
        return None
    _preload_learned(server, log, payload)
    paths = opts.warmup + _learned_paths(opts, log, payload)
    if opts.warmup_enabled and (opts.warmup_framework or (paths and opts.warmup_rounds > 0)):
        try:
            app = server.app.wsgi()
        except Exception as exc:  # noqa: BLE001
            log.warning("cowprof: warm-up skipped, cannot get the app: %s", exc)
        else:
            wopts = WarmupOptions(paths=paths, framework=opts.warmup_framework, rounds=opts.warmup_rounds,
                                  relocate_code=opts.relocate_code)
            try:
                with worker_transport(server) if opts.warmup_server else contextlib.nullcontext() as transport:
                    result = warm_up_app(app, wopts, log=log, transport=transport)
            except Exception:  # a warm-up must never keep the server from starting
                log.exception("cowprof: warm-up failed; preparing without it")
            else:
                log.info("cowprof: %s", result.summary())
                payload["warmup"] = result.to_dict()
    report = None
    if not opts.prepare:
        log.info("cowprof: prepare_fork skipped (%s=0 or cowprof_prepare = False): workers fork from the "
                 "unprepared heap", ENV_PREPARE)
        payload["skipped"] = "prepare off"
    else:
        try:
            report = prepare_fork(**dict(opts.prepare_kwargs))
        except Exception:  # an optimisation must not keep the server from starting
            log.exception("cowprof: prepare_fork failed; workers fork from the unprepared heap")
            payload["skipped"] = "prepare_fork failed"
        else:
            log.info("cowprof: %s", report.summary())
            payload["prepare"] = report.to_dict()
    _write_report(opts.report_path, payload, log)
    return report


def _learned_paths(opts: HookOptions, log: Any, payload: dict[str, Any]) -> tuple[str, ...]:
    """With ``learned`` among the warm-up paths: the GET paths earlier workers of this app answered
    with a 2xx status (the most frequent first, those already configured left out), and arming the
    workers forked next to count theirs. () otherwise."""
    if not (opts.warmup_enabled and opts.warmup_learned):
        return ()
    try:
        learned = preload.learn()
        preload.arm_path_learning()
    except Exception as exc:  # noqa: BLE001
        log.warning("cowprof: learned warm-up failed: %s: %s", type(exc).__name__, exc)
        return ()
    paths = tuple(p for p in learned.paths if p not in opts.warmup)
    log.info("cowprof: learned warm-up: %d paths from earlier workers%s", len(paths),
             f" ({learned.error})" if learned.error else "")
    payload["learned_paths"] = list(paths)
    return paths


def make_post_request(user_hook: Hook | None = None) -> Hook:
    """A ``post_request(worker, req, environ, resp)`` hook: counts the request for learned warm-up
    (:func:`cowprof.preload.record_served`: only in workers of a master that armed it), then
    ``user_hook``."""
    if _is_ours(user_hook):
        return user_hook  # type: ignore[return-value]

    def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
        try:
            preload.record_served(req.method, req.path, getattr(resp, "status_code", None))
        except Exception:  # noqa: BLE001 - a record must never fail a request
            pass
        if user_hook is not None:
            user_hook(worker, req, environ, resp)

    return _mark(post_request, user_hook)


def _preload_learned(server: Any, log: Any, payload: dict[str, Any]) -> None:
    """Names the app for cowprof.preload and, with COWPROF_PRELOAD=learned, imports the modules
    earlier workers of this app imported after the fork."""
    try:
        preload.set_app_identity(getattr(server.app, "app_uri", None) or getattr(server.cfg, "wsgi_app", None))
        if not preload.preload_requested():
            return
        imported, failed = preload.import_learned(log=log)
    except Exception as exc:  # noqa: BLE001
        log.warning("cowprof: learned preload failed: %s: %s", type(exc).__name__, exc)
        return
    log.info("cowprof: learned preload: %d modules imported%s", len(imported),
             f", {len(failed)} failed" if failed else "")
    payload["preload"] = {"imported": list(imported), "failed": list(failed)}


def _mark(fn: Hook, user_hook: Hook | None) -> Hook:
    setattr(fn, _HOOK_MARK, True)
    fn.__wrapped_user_hook__ = user_hook  # type: ignore[attr-defined]
    return fn


def _is_ours(hook: Any) -> bool:
    return bool(getattr(hook, _HOOK_MARK, False))


def _resolve_hook(hook: object) -> Hook | None:
    """A hook as gunicorn accepts it: a callable, or a 'module.name' string."""
    if hook is None or callable(hook):
        return hook
    if isinstance(hook, str) and "." in hook:
        mod_name, obj_name = hook.rsplit(".", 1)
        found: Hook = getattr(importlib.import_module(mod_name), obj_name)
        return found
    raise BadInput(f"a gunicorn hook must be callable or a 'module.name' string, got {hook!r}")


def _forks_dirty_arbiter(server: Any) -> bool:
    """Whether gunicorn (25+) forks a dirty arbiter from this master (before ``when_ready``)."""
    return bool(getattr(server.cfg, "dirty_workers", 0) and getattr(server.cfg, "dirty_apps", None))


def _prepare_once(server: Any, options: HookOptions) -> None:
    if getattr(server, _PREPARED_MARK, False):
        return
    setattr(server, _PREPARED_MARK, True)
    prepare_master(server, options)


def make_on_starting(user_hook: Hook | None = None, options: HookOptions = HookOptions()) -> Hook:
    """An ``on_starting(server)`` hook: ``user_hook(server)`` first; then, when gunicorn will fork a
    dirty arbiter (it does so after ``on_starting``, before ``when_ready``), :func:`prepare_master`."""
    if _is_ours(user_hook):
        return user_hook  # type: ignore[return-value]

    def on_starting(server: Any) -> None:
        if user_hook is not None:
            user_hook(server)
        if _forks_dirty_arbiter(server):
            _prepare_once(server, options)

    return _mark(on_starting, user_hook)


def make_when_ready(user_hook: Hook | None = None, options: HookOptions = HookOptions()) -> Hook:
    """A ``when_ready(server)`` hook: ``user_hook(server)`` first, then :func:`prepare_master`
    (unless ``on_starting`` already prepared, for a dirty arbiter)."""
    if _is_ours(user_hook):
        return user_hook  # type: ignore[return-value]

    def when_ready(server: Any) -> None:
        if user_hook is not None:
            user_hook(server)
        _prepare_once(server, options)

    return _mark(when_ready, user_hook)


def make_post_fork(user_hook: Hook | None = None) -> Hook:
    """A ``post_fork(server, worker)`` hook: :func:`cowprof.after_fork` first, then ``user_hook``."""
    if _is_ours(user_hook):
        return user_hook  # type: ignore[return-value]

    def post_fork(server: Any, worker: Any) -> None:
        after_fork()
        if user_hook is not None:
            user_hook(server, worker)

    return _mark(post_fork, user_hook)


def _after_fork_then(user_hook: Hook | None, name: str) -> Hook:
    """A one-argument hook named ``name``: :func:`cowprof.after_fork`, then ``user_hook(arg)``."""
    if _is_ours(user_hook):
        return user_hook  # type: ignore[return-value]

    def hook(arg: Any) -> None:
        after_fork()
        if user_hook is not None:
            user_hook(arg)

    hook.__name__ = hook.__qualname__ = name
    return _mark(hook, user_hook)


def make_on_dirty_starting(user_hook: Hook | None = None) -> Hook:
    """An ``on_dirty_starting(arbiter)`` hook (in the dirty arbiter, right after the master forked
    it): :func:`cowprof.after_fork` first, then ``user_hook``."""
    return _after_fork_then(user_hook, "on_dirty_starting")


def make_dirty_worker_init(user_hook: Hook | None = None) -> Hook:
    """A ``dirty_worker_init(worker)`` hook (in each dirty worker, once its dirty apps are loaded):
    :func:`cowprof.after_fork` first, then ``user_hook``."""
    return _after_fork_then(user_hook, "dirty_worker_init")


def install(namespace: MutableMapping[str, Any], *, warmup: Sequence[str] | str | bool | None = None,
            warmup_rounds: int | None = None, prepare: bool | None = None,
            **prepare_kwargs: Any) -> None:
    """Installs cowprof's hooks into a gunicorn config namespace (call with ``globals()``).

    Wraps the ``on_starting``, ``when_ready``, ``post_fork``, ``post_request``, ``on_dirty_starting``
    and ``dirty_worker_init`` already in ``namespace`` (so call it at the end of the config file); other
    hooks are left alone. Arguments left ``None`` fall back to the names
    ``cowprof_warmup``, ``cowprof_warmup_rounds``, ``cowprof_prepare`` in the namespace;
    ``warmup`` lists paths requested on top of the framework's warm-up (``False`` or ``""``: no
    warm-up at all); ``prepare_kwargs`` go to :func:`cowprof.prepare_fork`. Installing twice keeps
    the first hooks.
    """
    if warmup is None:
        warmup = namespace.get("cowprof_warmup")
    if warmup_rounds is None:
        warmup_rounds = namespace.get("cowprof_warmup_rounds", HookOptions.warmup_rounds)
    if prepare is None:
        prepare = bool(namespace.get("cowprof_prepare", True))
    enabled, paths, learned = _parse_warmup(warmup)
    options = HookOptions(prepare=prepare, warmup=paths, warmup_enabled=enabled, warmup_learned=learned,
                          warmup_rounds=int(warmup_rounds), prepare_kwargs=dict(prepare_kwargs))
    namespace["on_starting"] = make_on_starting(_resolve_hook(namespace.get("on_starting")), options)
    namespace["when_ready"] = make_when_ready(_resolve_hook(namespace.get("when_ready")), options)
    namespace["post_fork"] = make_post_fork(_resolve_hook(namespace.get("post_fork")))
    namespace["post_request"] = make_post_request(_resolve_hook(namespace.get("post_request")))
    namespace["on_dirty_starting"] = make_on_dirty_starting(_resolve_hook(namespace.get("on_dirty_starting")))
    namespace["dirty_worker_init"] = make_dirty_worker_init(_resolve_hook(namespace.get("dirty_worker_init")))


def _gunicorn_settings() -> frozenset[str]:
    from gunicorn.config import KNOWN_SETTINGS

    return frozenset(s.name for s in KNOWN_SETTINGS)


def load_user_config(location: str) -> dict[str, Any]:
    """Executes a gunicorn config the way gunicorn does and returns its namespace.

    ``location`` is a file path (optionally ``file:``-prefixed) or ``python:module``. Raises
    :class:`BadInput` for a missing file or module; an exception raised by the file itself
    propagates (it is the user's code).
    """
    if location.startswith("python:"):
        name = location[len("python:"):]
        if name == __name__:
            raise BadInput(f"{ENV_CONFIG} names cowprof's own config module; name your config instead")
        try:
            return dict(vars(importlib.import_module(name)))
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                raise BadInput(f"{ENV_CONFIG}: no module named {name!r}") from None
            raise
    path = location[len("file:"):] if location.startswith("file:") else location
    if not os.path.isfile(path):
        raise BadInput(f"{ENV_CONFIG}: no such config file: {path!r}")
    spec = importlib.util.spec_from_file_location("__config__", path,
                                                  loader=importlib.machinery.SourceFileLoader("__config__", path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["__config__"] = module
    spec.loader.exec_module(module)
    return dict(vars(module))


def apply_user_config(location: str, namespace: MutableMapping[str, Any]) -> None:
    """Copies the gunicorn settings of the config at ``location`` into ``namespace`` and composes
    its hooks with cowprof's (see :func:`install`)."""
    user = load_user_config(location)
    known = _gunicorn_settings()
    settings = {k: v for k, v in user.items() if k in known}
    for key in ("cowprof_warmup", "cowprof_warmup_rounds", "cowprof_prepare"):
        if key in user:
            settings[key] = user[key]
    install(settings)
    for key in ("cowprof_warmup", "cowprof_warmup_rounds", "cowprof_prepare"):
        settings.pop(key, None)
    namespace.update(settings)


def _load_from_env() -> None:
    """Module-import time: take over the user's config named by ``COWPROF_GUNICORN_CONFIG``."""
    location = os.environ.get(ENV_CONFIG, "").strip()
    if not location:
        return
    try:
        apply_user_config(location, globals())
    except BadInput as err:
        print(f"cowprof: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except Exception:  # noqa: BLE001 - the user's config file: its traceback, then exit 1
        print(f"cowprof: failed to read the gunicorn config {location!r} ({ENV_CONFIG}):", file=sys.stderr)
        traceback.print_exc()
        raise SystemExit(1) from None


# The hooks gunicorn picks up from this module (and ``from cowprof.gunicorn import when_ready``).
# Gunicorn before 25 ignores the names it does not know (on_dirty_starting, dirty_worker_init).
on_starting = make_on_starting()
when_ready = make_when_ready()
post_fork = make_post_fork()
post_request = make_post_request()
on_dirty_starting = make_on_dirty_starting()
dirty_worker_init = make_dirty_worker_init()
_load_from_env()
