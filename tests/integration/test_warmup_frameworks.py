"""Framework-aware warm-up with the real frameworks: Django (a project made by django-admin),
Flask (blueprint, Jinja2 templates, SQLAlchemy), FastAPI (pydantic models). Each runs in a fresh
interpreter (frameworks keep global state) and reports what warm_up_app did as JSON."""
from __future__ import annotations

import pytest

from cowprof import hotcode
from djangoproj import make_project
from pyrun import run_json

pytest.importorskip("django", reason="the test extra installs Django")
pytest.importorskip("flask", reason="the test extra installs Flask")
pytest.importorskip("fastapi", reason="the test extra installs FastAPI")
pytest.importorskip("sqlalchemy", reason="the test extra installs SQLAlchemy")


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> str:
    return make_project(tmp_path_factory.mktemp("djproj"))


DJANGO_RUN = """
import json, os, sys, sqlite3
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
extra = json.loads(sys.argv[1])
from django.conf import settings
from django.core.wsgi import get_wsgi_application
app = get_wsgi_application()
for k, v in extra.items():
    setattr(settings, k, v)
import cowprof.warmup as w
def tables():
    db = sqlite3.connect("db.sqlite3")
    try:
        return {t: db.execute(f'select count(*) from "{t}"').fetchone()[0]
                for (t,) in db.execute("select name from sqlite_master where type='table'")}
    finally:
        db.close()
before = tables()
before_late = set(sys.modules)
r = w.warm_up_app(app, w.WarmupOptions(rounds=2))
from django.db import connections
print(json.dumps({"result": r.to_dict(), "tables_before": before, "tables_after": tables(),
                  "open_connections": sum(1 for c in connections.all() if c.connection is not None),
                  "imported": len(set(sys.modules) - before_late)}))
"""


def _run_django(project: str, **settings_overrides) -> dict:
    import json

    return run_json(DJANGO_RUN, json.dumps(settings_overrides), cwd=project)


def test_django_stock_project_is_warmed_without_writing(django_project):
    out = _run_django(django_project)
    r = out["result"]
    assert r["frameworks"] == ["django"]
    steps = {s["name"]: s for s in r["steps"]}
    assert all(s["ok"] for s in r["steps"]), [s for s in r["steps"] if not s["ok"]]
    assert int(steps["templates"]["detail"].split()[0].replace(",", "")) >= 50  # the admin's templates
    assert "names reversed" in steps["URL resolvers"]["detail"]
    # framework-owned requests only: the admin login page, its index (a redirect), an unmatched path
    assert any(p.endswith("/admin/login/") for p in r["paths"]) and any(p.endswith("/admin/") for p in r["paths"])
    assert r["failed"] == 0 and r["ok"] == r["requests"] >= 3 * 2
    if hotcode.unavailable() is None:
        assert r["relocation"]["skipped"] is None and r["relocation"]["functions"] > 0
    else:  # 3.11: the requests ran once, no relocation
        assert r["relocation"]["skipped"] == hotcode.unavailable()
    # nothing was written to the database, and the connections the requests opened are closed
    assert out["tables_after"] == out["tables_before"]
    assert out["open_connections"] == 0
    assert out["imported"] > 50  # the admin's modules, template tags, ... are now in the master


def test_django_user_middleware_means_no_requests(django_project):
    out = _run_django(django_project, MIDDLEWARE=["myapp.middleware.Audit", "django.middleware.common.CommonMiddleware"])
    r = out["result"]
    assert r["requests"] == 0 and r["paths"] == []
    assert any("myapp.middleware.Audit" in line for line in r["requests_skipped"])
    assert all(s["ok"] for s in r["steps"])  # the framework steps still run


def test_django_csrf_in_sessions_skips_the_login_page(django_project):
    out = _run_django(django_project, CSRF_USE_SESSIONS=True)
    r = out["result"]
    assert not any(p.endswith("/admin/login/") for p in r["paths"])
    assert out["tables_after"]["django_session"] == out["tables_before"]["django_session"]


FLASK_APP = '''
import os
from flask import Flask, Blueprint, render_template
from sqlalchemy import Column, ForeignKey, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, relationship

class Base(DeclarativeBase):
    pass

class Author(Base):
    __tablename__ = "author"
    id = Column(Integer, primary_key=True)
    name = Column(String(50))
    books = relationship("Book", back_populates="author")

class Book(Base):
    __tablename__ = "book"
    id = Column(Integer, primary_key=True)
    author_id = Column(ForeignKey("author.id"))
    author = relationship("Author", back_populates="books")

shop = Blueprint("shop", __name__, template_folder="templates")

@shop.route("/shop/")
def index():
    return render_template("shop/index.html", items=[1, 2])

app = Flask(__name__)
app.register_blueprint(shop)

@app.route("/")
def home():
    return "home"

if os.environ.get("WITH_HOOK") == "1":
    @app.before_request
    def count_visit():
        pass
'''


@pytest.fixture
def flask_app(tmp_path) -> str:
    (tmp_path / "templates" / "shop").mkdir(parents=True)
    for i in range(5):
        (tmp_path / "templates" / "shop" / f"page{i}.html").write_text("{% for i in items %}{{ i }}{% endfor %}")
    (tmp_path / "templates" / "shop" / "index.html").write_text("<ul>{% for i in items %}<li>{{ i }}{% endfor %}</ul>")
    (tmp_path / "flaskapp.py").write_text(FLASK_APP)
    return str(tmp_path)


FLASK_RUN = """
import json, os, sys
sys.path.insert(0, os.getcwd())
from flaskapp import app
import cowprof.warmup as w
r = w.warm_up_app(app, w.WarmupOptions(rounds=2))
print(json.dumps({"result": r.to_dict(), "jinja_cache": len(app.jinja_env.cache or {})}))
"""


def test_flask_url_map_templates_and_mappers(flask_app):
    out = run_json(FLASK_RUN, cwd=flask_app)
    r = out["result"]
    assert r["frameworks"] == ["flask"]
    steps = {(s["framework"], s["name"]): s for s in r["steps"]}
    assert all(s["ok"] for s in r["steps"]), r["steps"]
    assert "6 templates compiled" in steps[("flask", "Jinja2 templates")]["detail"]
    assert steps[("generic", "SQLAlchemy mappers")]["detail"] == "mappers configured"
    assert out["jinja_cache"] >= 6
    assert r["paths"] == ["/cowprof-warmup-not-found/"] and r["failed"] == 0


def test_flask_user_request_hook_means_no_requests(flask_app):
    out = run_json(FLASK_RUN, cwd=flask_app, env={"WITH_HOOK": "1"})
    r = out["result"]
    assert r["requests"] == 0 and any("count_visit" in line for line in r["requests_skipped"])


FASTAPI_RUN = """
import json, os, sys
from fastapi import FastAPI
from pydantic import BaseModel

class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []

class Draft(BaseModel):
    parent: "Later | None" = None   # resolvable only once Later exists: completed by the warm-up

class Later(BaseModel):
    x: int = 0

app = FastAPI()

@app.get("/items/{item_id}", response_model=Item)
async def read_item(item_id: int) -> Item:
    return Item(name="x", price=1.0)

@app.post("/items/", response_model=Item)
async def create_item(item: Item) -> Item:
    raise RuntimeError("the warm-up must never POST")

if os.environ.get("WITH_MIDDLEWARE") == "1":
    @app.middleware("http")
    async def audit(request, call_next):
        return await call_next(request)

import cowprof.warmup as w
assert w.is_asgi(app)
assert Draft.__pydantic_complete__ is False
r = w.warm_up_app(app, w.WarmupOptions(rounds=2))
print(json.dumps({"result": r.to_dict(), "schema_cached": app.openapi_schema is not None,
                  "draft_complete": Draft.__pydantic_complete__}))
"""


def test_fastapi_openapi_and_asgi_requests():
    out = run_json(FASTAPI_RUN)
    r = out["result"]
    assert r["frameworks"] == ["fastapi"]
    assert all(s["ok"] for s in r["steps"]), r["steps"]
    assert out["schema_cached"] and out["draft_complete"]
    assert any(s["name"] == "pydantic models" and s["ok"] for s in r["steps"])
    assert "/openapi.json" in r["paths"] and "/docs" in r["paths"]
    assert r["failed"] == 0 and r["ok"] == r["requests"] > 0


def test_fastapi_user_middleware_means_no_requests():
    out = run_json(FASTAPI_RUN, env={"WITH_MIDDLEWARE": "1"})
    r = out["result"]
    assert r["requests"] == 0 and r["requests_skipped"]
    assert out["schema_cached"]  # the OpenAPI schema is still built (no request needed)


def test_failing_steps_and_requests_never_raise():
    out = run_json("""
        import json
        import cowprof.frameworks as fw
        import cowprof.warmup as w

        def broken_plan(app):
            p = fw.Plan("broken", steps=[("explodes", lambda: 1 / 0)], requests=["/x"])
            return [p]
        fw.plan = broken_plan

        def app(environ, start_response):
            raise RuntimeError("app down")
        r = w.warm_up_app(app, w.WarmupOptions(rounds=1))
        print(json.dumps(r.to_dict()))
    """)
    assert out["steps"][0]["ok"] is False and "ZeroDivisionError" in out["steps"][0]["detail"]
    assert out["failed"] == out["requests"] >= 1 and "RuntimeError: app down" in out["failures"][0]
