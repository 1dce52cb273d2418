"""WSGI entry of the Flask fixture app (``flaskshop.wsgi:app``)."""
from flaskshop import create_app

app = create_app()
