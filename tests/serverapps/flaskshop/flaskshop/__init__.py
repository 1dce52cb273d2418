"""The Flask fixture app: an app factory, two blueprints, Jinja2 templates, Flask-SQLAlchemy models.

The sqlite database is ``$FLASKSHOP_DB`` (created and filled by ``python -m flaskshop.seed PATH``).
Nothing touches the database at import: connections are opened by requests, in the workers.
"""
import os

from flask import Flask

from .models import db


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.environ.get(
        "FLASKSHOP_DB", os.path.join(os.path.dirname(__file__), "flaskshop.sqlite3"))
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    db.init_app(app)
    from .api import api
    from .catalog import catalog

    app.register_blueprint(catalog)
    app.register_blueprint(api, url_prefix="/api")
    return app
