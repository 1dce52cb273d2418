"""cowprof's bundled sample app: a plain-WSGI shop whose master holds a large preloaded Python heap.

``sample_app.app`` is the WSGI entry point (``gunicorn sample_app.app:app``); importing it builds the
heap (``sample_app.data``, size from the env ``SAMPLE_APP_MB``). ``sample_app.traffic`` lists request
paths for load generation without building anything, so importing this package stays cheap.
"""
