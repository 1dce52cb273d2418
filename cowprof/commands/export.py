"""``cowprof export``: serve the Prometheus metrics until stopped (:func:`cowprof.exporter.serve`)."""
from __future__ import annotations

import os
from pathlib import Path

from cowprof.commands.common import numpy_on_one_blas_thread
from cowprof.errors import BadInput, CowprofError
from cowprof.timer import DEFAULT_EXPORT_MAX_CPU

__all__ = ["main"]


def main(pid: int | None, *, port: int = 9464, interval: float = 5.0, bind: str = "127.0.0.1",
         pidfile: Path | None = None, cmdline: str | None = None, max_cpu: float = DEFAULT_EXPORT_MAX_CPU,
         exact: bool = False) -> int:
    """Serve the metrics of the tree of ``pid`` (or of the master ``pidfile`` or ``cmdline`` names)
    on ``bind``:``port``, checking it every ``interval`` seconds, page-table re-reads within
    ``max_cpu`` % of one core (0: no budget), or at every change with ``exact``."""
    if pid is None and pidfile is None and not cmdline:
        raise BadInput("export needs a PID, --pidfile or --cmdline")
    try:
        import cowprof.exporter as exporter
    except ModuleNotFoundError as exc:
        if exc.name == "prometheus_client":
            raise CowprofError("the exporter needs prometheus_client: "
                               "pip install 'cowprof[prometheus]'") from None
        if exc.name in ("cowprof.exporter", "cowprof"):
            raise CowprofError("the Prometheus exporter (cowprof.exporter) is missing from this "
                               "cowprof installation") from None
        raise
    exporter.check_options(port=port, interval=interval, bind=bind, max_cpu=max_cpu)  # before numpy's import
    with numpy_on_one_blas_thread():
        import numpy  # noqa: F401 - the exporter's scans need it (this process starts no program)
    return exporter.serve(pid, port=port, bind=bind, interval=interval,
                          pidfile=os.fspath(pidfile) if pidfile is not None else None, cmdline=cmdline,
                          max_cpu=max_cpu, exact=exact)
