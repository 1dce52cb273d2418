"""The demo of ``scripts/demo`` (not part of the installed package): the bundled sample app
(``sample_app/``) under gunicorn in several modes (:mod:`demo.run`), driven by a small HTTP load
generator (:mod:`demo.loadgen`). Also used by the tests and benchmarks that start gunicorn."""
