"""uWSGI entry of the server fixtures: ``--module uwsgi_entry:application``.

Imports the WSGI app named by ``SERVERAPPS_WSGI`` (``module:attribute``) and applies the fork
recipe of ``SERVERAPPS_MODE``: ``baseline`` nothing; ``gc-freeze`` the ``gc`` documentation's
(``gc.disable()`` before the import, ``gc.freeze()`` after it, ``gc.enable()`` in uWSGI's
``postfork``); ``cowprof`` docs/servers.md's uWSGI recipe (``prepare_uwsgi(application)`` at the
end of the WSGI module: warm-up, prepare, ``postfork`` hook). uWSGI imports this module in its master,
before it forks the workers (no ``lazy-apps``).
"""
import gc
import importlib
import os
import sys

MODE = os.environ.get("SERVERAPPS_MODE", "baseline")
if MODE == "gc-freeze":
    gc.disable()

_module, _, _attr = os.environ["SERVERAPPS_WSGI"].partition(":")
application = getattr(importlib.import_module(_module), _attr)

if MODE == "cowprof":
    from cowprof.recipes import prepare_uwsgi

    print(f"cowprof: {prepare_uwsgi(application).summary()}", file=sys.stderr, flush=True)
elif MODE == "gc-freeze":
    import uwsgidecorators

    gc.freeze()
    uwsgidecorators.postfork(gc.enable)
elif MODE != "baseline":
    raise SystemExit(f"uwsgi_entry: unknown SERVERAPPS_MODE {MODE!r}")
