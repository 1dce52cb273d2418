"""Framework-aware warm-up: what Django, Flask, Starlette/FastAPI build lazily, built in the master.

Much of a web app's memory is created by its first requests, not by its import: URL resolvers,
compiled templates, translation catalogs, ORM metadata, the middleware stack, the OpenAPI schema.
Built after the fork, each worker builds (and keeps) its own copy. :func:`plan` looks at the app
the server is about to serve (and at ``sys.modules``) and returns, per detected framework, the
steps that build those things through the framework's own APIs, plus the framework-owned requests
that are safe to make in-process.

Safe requests: only endpoints the framework itself implements and that read nothing but the
request (an unmatched path answered 404, Django admin's login page for an anonymous user,
FastAPI's ``/openapi.json``), and only when every middleware or request hook of the app comes
from the framework itself: a user middleware runs on every request, and cowprof cannot know that
it does not write (a request log, a visit counter). Otherwise the plan says why it makes no
request, and the user's own ``COWPROF_WARMUP`` paths are the way to warm up through the app.

Every step is run by :mod:`cowprof.warmup`, which logs and ignores its failure.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MISSING_PATH", "Plan", "find_app_object", "generic_steps", "plan"]

#: the unmatched path requested to warm up routing and the not-found handler
MISSING_PATH = "/cowprof-warmup-not-found/"
#: at most this many templates are compiled per template engine (big sites have thousands)
MAX_TEMPLATES = 2000
#: template files larger than this are not compiled ahead
MAX_TEMPLATE_BYTES = 256 * 1024
_TEMPLATE_SUFFIXES = (".html", ".htm", ".txt", ".xml", ".j2", ".jinja", ".jinja2", ".json", ".svg")

Step = tuple[str, Callable[[], str]]
"""(name, function returning a one-line detail)"""


@dataclass
class Plan:
    """What to warm up for one framework."""

    framework: str
    steps: list[Step] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    """Framework-owned, read-only paths (or absolute URLs, for the host the app accepts)."""
    requests_skipped: str | None = None
    """Why the plan makes no request, or None."""
    cleanup: list[Step] = field(default_factory=list)
    """Run after the requests (e.g. closing database connections opened by them)."""
    quiet_loggers: tuple[str, ...] = ()
    """Loggers that would report the warm-up's own 404s: raised to ERROR while it runs."""


def _module_of(obj: Any) -> str:
    return getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "") or ""


def _from_packages(obj: Any, packages: tuple[str, ...]) -> bool:
    mod = _module_of(obj)
    return any(mod == p or mod.startswith(p + ".") for p in packages)


def find_app_object(app: Any, kind: type, depth: int = 4) -> Any | None:
    """``app`` itself if it is a ``kind``, else the first ``kind`` found by following the attributes
    WSGI/ASGI wrappers keep their app in (``app``, ``wsgi_app``, ``application``), ``depth`` levels."""
    seen: set[int] = set()
    frontier = [app]
    for _ in range(depth + 1):
        nxt = []
        for obj in frontier:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, kind):
                return obj
            for name in ("app", "wsgi_app", "application"):
                try:
                    inner = inspect.getattr_static(obj, name)
                except AttributeError:
                    continue
                if not callable(inner) or inspect.isfunction(inner) or isinstance(inner, (staticmethod, classmethod)):
                    continue
                nxt.append(getattr(obj, name, None))
        frontier = nxt
    return None


def _files_under(directories: Iterable[str], limit: int) -> list[tuple[str, str]]:
    """(directory, relative path) of the template-like files under ``directories``, at most ``limit``."""
    out: list[tuple[str, str]] = []
    for top in directories:
        top = os.fspath(top)
        if not os.path.isdir(top):
            continue
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(_TEMPLATE_SUFFIXES):
                    continue
                path = os.path.join(root, name)
                try:
                    if os.path.getsize(path) > MAX_TEMPLATE_BYTES:
                        continue
                except OSError:
                    continue
                out.append((top, os.path.relpath(path, top).replace(os.sep, "/")))
                if len(out) >= limit:
                    return out
    return out


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}"


# ------------------------------------------------------------------------------ Django


def _django_ready() -> bool:
    if "django" not in sys.modules:
        return False
    try:
        from django.apps import apps
        from django.conf import settings

        return bool(settings.configured and apps.ready)
    except Exception:  # noqa: BLE001
        return False


_DJANGO_SUBMODULES = ("models", "admin", "apps", "views", "urls", "forms", "signals", "serializers",
                      "api", "managers", "querysets", "validators", "widgets", "context_processors",
                      "middleware", "backends", "utils", "tasks")


def _django_import_app_modules() -> str:
    from django.apps import apps

    imported = failed = 0
    for config in apps.get_app_configs():
        for sub in _DJANGO_SUBMODULES:
            name = f"{config.name}.{sub}"
            if name in sys.modules:
                continue
            try:
                if importlib.util.find_spec(name) is None:
                    continue
                importlib.import_module(name)
                imported += 1
            except Exception:  # noqa: BLE001 - an optional module that does not import
                failed += 1
    return _count(imported, "app modules imported") + (f", {failed} failed" if failed else "")


def _walk_resolvers(resolver: Any) -> Iterator[Any]:
    """Every URL pattern and resolver under ``resolver`` (iteratively)."""
    stack = [resolver]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(getattr(node, "url_patterns", ()) if hasattr(node, "urlconf_name") else ())


def _django_urls() -> str:
    from django.urls import NoReverseMatch, get_resolver, reverse

    root = get_resolver()
    patterns = 0
    resolvers = []
    for node in _walk_resolvers(root):
        try:
            node.pattern.regex  # compiles the pattern (per active language)  # noqa: B018
        except Exception:  # noqa: BLE001
            pass
        patterns += 1
        if hasattr(node, "urlconf_name"):
            resolvers.append(node)
    for r in resolvers:
        populate = getattr(r, "_populate", None)
        if populate is not None:
            populate()
    names = 0
    # named URLs without arguments, in every namespace: reverse() fills the reverse caches
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, r = stack.pop()
        for key in list(getattr(r, "reverse_dict", {}).keys()):
            if not isinstance(key, str):
                continue
            try:
                reverse(prefix + key)
                names += 1
            except (NoReverseMatch, Exception):  # noqa: BLE001 - needs arguments, or broken
                pass
        for ns, (_pattern, sub) in list(getattr(r, "namespace_dict", {}).items()):
            stack.append((f"{prefix}{ns}:", sub))
    return f"{patterns:,} URL patterns compiled, {names:,} names reversed"


def _django_template_sources() -> Iterator[tuple[Any, list[str], str]]:
    """(template engine, its template directories, prefix of the names to compile) for every
    configured engine, and for the form renderer's own engine (only its form templates: it also
    sees every app's templates, which the configured engines compile already)."""
    from django.template import engines

    for backend in engines.all():
        yield backend, list(getattr(backend, "template_dirs", ()) or ()), ""
    try:
        from django.forms.renderers import get_default_renderer

        engine = getattr(get_default_renderer(), "engine", None)
        if engine is not None and engine not in engines.all():
            yield engine, list(getattr(engine, "template_dirs", ()) or ()), "django/forms/"
    except Exception:  # noqa: BLE001
        pass


def _django_templates() -> str:
    compiled = failed = 0
    for backend, dirs, prefix in _django_template_sources():
        for _top, rel in _files_under(dirs, MAX_TEMPLATES):
            if not rel.startswith(prefix):
                continue
            try:
                backend.get_template(rel)
                compiled += 1
            except Exception:  # noqa: BLE001 - not a template of this engine, or a syntax error
                failed += 1
    return _count(compiled, "templates compiled") + (f", {failed:,} not loadable" if failed else "")


def _django_models() -> str:
    from django.apps import apps

    n = 0
    for model in apps.get_models(include_auto_created=True):
        opts = model._meta
        opts.get_fields()
        for name in ("concrete_fields", "local_concrete_fields", "related_objects", "fields_map",
                     "_forward_fields_map", "db_returning_fields", "managers"):
            try:
                getattr(opts, name)
            except Exception:  # noqa: BLE001
                pass
        n += 1
    return _count(n, "models' metadata built")


def _django_translations() -> str:
    from django.conf import settings
    from django.utils import translation

    if not settings.USE_I18N:
        return "USE_I18N is off"
    with translation.override(settings.LANGUAGE_CODE):
        translation.gettext("cowprof warm-up")
    return f"catalogs of {settings.LANGUAGE_CODE} loaded"


def _django_checks() -> str:
    from django.core import checks

    found = checks.run_checks(include_deployment_checks=False)
    return _count(len(found), "check messages (not shown)")


def _django_misc() -> str:
    done = []
    try:
        from django.contrib.staticfiles.storage import staticfiles_storage

        getattr(staticfiles_storage, "base_url", None)  # a lazy object: the first attribute sets it up
        done.append("static files storage")
    except Exception:  # noqa: BLE001
        pass
    try:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.hashers import get_hashers

        get_user_model()
        get_hashers()
        done.append("auth")
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(done) or "nothing"


def _django_close_connections() -> str:
    from django.db import connections

    connections.close_all()
    return "database connections closed"


def _django_host() -> tuple[str | None, str]:
    """A host name the project accepts (ALLOWED_HOSTS), and the scheme; None if none can be named."""
    from django.conf import settings

    hosts = list(settings.ALLOWED_HOSTS)
    if not hosts and settings.DEBUG:
        hosts = ["localhost"]
    scheme = "https" if getattr(settings, "SECURE_SSL_REDIRECT", False) else "http"
    for h in hosts:
        if h == "*":
            return "localhost", scheme
        h = h.lstrip(".")
        if h and "*" not in h and h not in ("localhost.", "."):
            return h, scheme
    return None, scheme


def _django_plan() -> Plan:
    from django.conf import settings

    p = Plan("django", steps=[
        ("import installed apps' modules", _django_import_app_modules),
        ("URL resolvers", _django_urls),
        ("templates", _django_templates),
        ("model metadata", _django_models),
        ("translations", _django_translations),
        ("system checks", _django_checks),
        ("static files, auth", _django_misc),
    ], cleanup=[("close database connections", _django_close_connections)], quiet_loggers=("django.request",))
    foreign = [m for m in settings.MIDDLEWARE if not str(m).startswith("django.")]
    host, scheme = _django_host()
    if foreign:
        p.requests_skipped = (f"middleware not from Django ({', '.join(map(str, foreign[:3]))}) runs on every "
                              "request; name read-only paths in COWPROF_WARMUP to warm up through it")
        return p
    if host is None:
        p.requests_skipped = "no literal host in ALLOWED_HOSTS to send requests with"
        return p
    base = f"{scheme}://{host}"
    p.requests.append(base + MISSING_PATH)
    if getattr(settings, "CSRF_USE_SESSIONS", False):
        return p  # the login form would store its CSRF token in a new session: a database write
    try:
        from django.apps import apps
        from django.urls import reverse

        if apps.is_installed("django.contrib.admin"):
            p.requests += [base + reverse("admin:login"), base + reverse("admin:index")]
    except Exception:  # noqa: BLE001 - no admin URLs, or a custom site
        pass
    return p


# ------------------------------------------------------------------------------ Flask


def _flask_plan(app: Any) -> Plan:
    def urls() -> str:
        url_map = app.url_map
        update = getattr(url_map, "update", None)
        if update is not None:
            update()
        adapter = url_map.bind(app.config.get("SERVER_NAME") or "localhost")
        built = 0
        for rule in url_map.iter_rules():
            if rule.arguments:
                continue
            try:
                adapter.build(rule.endpoint, {})
                built += 1
            except Exception:  # noqa: BLE001
                pass
        return f"{len(list(url_map.iter_rules())):,} rules, {built:,} URLs built"

    def templates() -> str:
        env = app.jinja_env  # created on first access
        return _jinja_compile(env)

    p = Plan("flask", steps=[("URL map", urls), ("Jinja2 templates", templates)])
    hooks = [f for funcs in (app.before_request_funcs, app.after_request_funcs) for fs in funcs.values() for f in fs]
    foreign = [f for f in hooks if not _from_packages(f, ("flask", "werkzeug"))]
    if foreign:
        names = ", ".join(getattr(f, "__qualname__", "?") for f in foreign[:3])
        p.requests_skipped = (f"request hooks not from Flask ({names}) "
                              "run on every request; name read-only paths in COWPROF_WARMUP to warm up through them")
    else:
        p.requests.append(MISSING_PATH)
    return p


# ------------------------------------------------------------------------------ Starlette / FastAPI

_STARLETTE_PACKAGES = ("starlette", "fastapi")


def _foreign_middleware(m: Any) -> bool:
    """Whether a Starlette ``Middleware`` entry runs code that is not Starlette's or FastAPI's: its
    class, or a callable it was given (``@app.middleware("http")`` wraps a user function)."""
    if not _from_packages(getattr(m, "cls", m), _STARLETTE_PACKAGES):
        return True
    options = getattr(m, "kwargs", None) or getattr(m, "options", None) or {}
    given = list(getattr(m, "args", ()) or ()) + list(options.values())
    return any(callable(v) and not isinstance(v, type) and not _from_packages(v, _STARLETTE_PACKAGES) for v in given)


def _middleware_name(m: Any) -> str:
    given = (getattr(m, "kwargs", None) or getattr(m, "options", None) or {}).get("dispatch")
    target = given if given is not None else getattr(m, "cls", m)
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", "?"))


def _starlette_plan(app: Any, framework: str) -> Plan:
    user_middleware = list(getattr(app, "user_middleware", ()) or ())
    foreign = [m for m in user_middleware if _foreign_middleware(m)]

    def middleware_stack() -> str:
        if getattr(app, "middleware_stack", None) is None:
            app.middleware_stack = app.build_middleware_stack()
        return f"{len(user_middleware)} middleware"

    def routes() -> str:
        built = 0
        for route in getattr(app, "routes", ()):
            name = getattr(route, "name", None)
            if not name or getattr(route, "param_convertors", {}):
                continue
            try:
                app.url_path_for(name)
                built += 1
            except Exception:  # noqa: BLE001
                pass
        return f"{len(getattr(app, 'routes', ())):,} routes, {built:,} paths built"

    def openapi() -> str:
        schema = app.openapi()
        return f"OpenAPI schema of {len(schema.get('paths', {})):,} paths"

    p = Plan(framework, steps=[("routes", routes)])
    if not foreign:
        p.steps.append(("middleware stack", middleware_stack))
    if framework == "fastapi" and getattr(app, "openapi_url", None):
        p.steps.append(("OpenAPI schema", openapi))
    if foreign:
        names = ", ".join(_middleware_name(m) for m in foreign[:3])
        p.requests_skipped = (f"middleware not from Starlette/FastAPI ({names}) "
                              "runs on every request; name read-only paths in COWPROF_WARMUP to warm up through it")
        return p
    p.requests.append(MISSING_PATH)
    if framework == "fastapi":
        for attr in ("openapi_url", "docs_url", "redoc_url"):
            path = getattr(app, attr, None)
            if path:
                p.requests.append(getattr(app, "root_path", "") + path)
    return p


# ------------------------------------------------------------------------------ generic


def _jinja_compile(env: Any) -> str:
    if env.loader is None:
        return "no loader"
    names = env.list_templates()[:MAX_TEMPLATES]
    cache = getattr(env, "cache", None)
    capacity = getattr(cache, "capacity", None)
    if capacity:  # Jinja's LRU: compiling more than it holds would only evict the first ones
        names = names[:capacity]
    compiled = failed = 0
    for name in names:
        if not name.endswith(_TEMPLATE_SUFFIXES):
            continue
        try:
            env.get_template(name)
            compiled += 1
        except Exception:  # noqa: BLE001
            failed += 1
    return _count(compiled, "templates compiled") + (f", {failed:,} not loadable" if failed else "")


def _jinja_environments() -> str:
    import gc

    jinja2 = sys.modules.get("jinja2")
    if jinja2 is None:
        return "jinja2 not imported"
    envs = [o for o in gc.get_objects() if isinstance(o, jinja2.Environment)
            and getattr(o, "loader", None) is not None and not getattr(o, "shared", False)]
    details = [_jinja_compile(e) for e in envs]
    return f"{len(envs)} environments: " + "; ".join(details) if envs else "no Jinja2 environment with a loader"


def _sqlalchemy_mappers() -> str:
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is None:
        return "sqlalchemy.orm not imported"
    orm.configure_mappers()
    return "mappers configured"


def _pydantic_models() -> str:
    """Pydantic v2 builds a model's validator when the class is created, unless a forward reference
    was not resolvable then: such a model is completed on its first use, in every worker."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    if base is None or not hasattr(base, "model_rebuild"):
        return "no pydantic v2"
    models, stack = [], list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        models.append(cls)
        stack.extend(cls.__subclasses__())
    incomplete = [m for m in models if getattr(m, "__pydantic_complete__", True) is False]
    rebuilt = 0
    for model in incomplete:
        try:
            if model.model_rebuild(raise_errors=False):
                rebuilt += 1
        except Exception:  # noqa: BLE001
            pass
    return f"{len(models):,} models, {rebuilt} of {len(incomplete)} incomplete ones completed"


def generic_steps() -> list[Step]:
    """Steps for libraries any app may use, run after the framework steps."""
    steps: list[Step] = []
    if "sqlalchemy.orm" in sys.modules:
        steps.append(("SQLAlchemy mappers", _sqlalchemy_mappers))
    if "pydantic" in sys.modules:
        steps.append(("pydantic models", _pydantic_models))
    if "jinja2" in sys.modules:
        steps.append(("Jinja2 environments", _jinja_environments))
    return steps


def plan(app: Any) -> list[Plan]:
    """The warm-up plans for the frameworks detected in ``app`` (the WSGI or ASGI callable the
    server runs) and ``sys.modules``; empty when none is detected."""
    plans: list[Plan] = []
    if _django_ready():
        plans.append(_django_plan())
    flask = sys.modules.get("flask")
    if flask is not None:
        found = find_app_object(app, flask.Flask)
        if found is not None:
            plans.append(_flask_plan(found))
    fastapi = sys.modules.get("fastapi")
    starlette = sys.modules.get("starlette.applications")
    found = None
    if fastapi is not None:
        found = find_app_object(app, fastapi.FastAPI)
        if found is not None:
            plans.append(_starlette_plan(found, "fastapi"))
    if found is None and starlette is not None:
        found = find_app_object(app, starlette.Starlette)
        if found is not None:
            plans.append(_starlette_plan(found, "starlette"))
    return plans
