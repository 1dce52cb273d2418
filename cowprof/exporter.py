"""The Prometheus exporter: a separate process that scans a pre-fork tree and serves its metrics.

Why a separate process: gunicorn forks new workers for the whole life of the master, and forking a
process that runs extra threads is unsafe (a lock held by the other thread stays locked forever in
the child). So the exporter never runs inside the master; ``cowprof export PID`` starts it on its
own, and threads inside *this* process are fine.

Design (one job each):

* a **background scan loop** in the main thread scans the tree every ``interval`` seconds and swaps
  in the latest ``(report, status)`` pair. Chosen over scan-on-scrape because a scan of big workers
  can take seconds (a scrape must not wait for it, nor time out), and because the load on the host
  then depends on ``--interval`` only, not on how many Prometheus servers scrape and how often.
  ``cowprof_last_scan_timestamp_seconds`` says when the tree was last checked. A check reads
  ``/proc/PID/stat`` of each process and re-reads the page tables only when needed
  (:class:`cowprof.timer.Rereads`: once 0.1% of the tree's pages can have changed, counted in
  page faults, or every ``EXPORT_MAX_AGE_INTERVALS`` intervals, within a CPU budget ``max_cpu``);
  ``cowprof_pages_read_timestamp_seconds`` says when they were read and
  ``cowprof_pages_drift_bytes`` how much memory can have changed since (``exact``: re-read at every
  check where anything changed, drift always 0);
* the **HTTP server** (wsgiref + ``prometheus_client.make_wsgi_app``, one thread per request) serves
  a private ``CollectorRegistry`` holding one :class:`~cowprof.reporters.prometheus.ReportCollector`
  that builds every series from the latest snapshot at each scrape: workers that exited are simply
  absent from the next scrape and no label set is ever kept (no leak under worker churn);
* **reattach**: when the master exits (or its PID now names another process), the exporter logs it,
  exposes ``cowprof_up 0`` without master or worker series, and polls for the new master: the PID
  in ``--pidfile`` when one was given, otherwise a process newer than the old master whose command
  line equals the old master's (or the given ``cmdline``) and that has workers. It logs
  ``reattached to master PID N`` when it finds one.

Logs go to stderr with timestamps. SIGINT/SIGTERM stop the exporter cleanly (exit code 0).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from types import FrameType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cowprof import procfs
from cowprof.errors import BadInput, CowprofError, NotAPreforkTree, ProcessGone
from cowprof.procfs import ProcessIdentity
from cowprof.timer import DEFAULT_EXPORT_MAX_CPU, EXPORT_MAX_AGE_INTERVALS, EXPORT_TOLERANCE, Rereads, check_interval

try:
    from prometheus_client import make_wsgi_app
    from prometheus_client.registry import CollectorRegistry

    from cowprof.reporters.prometheus import ExporterStatus, ReportCollector
except ImportError as _exc:  # the optional extra is not installed
    _PROMETHEUS_MISSING: ImportError | None = _exc
else:
    _PROMETHEUS_MISSING = None

from cowprof.tree import Tree

if TYPE_CHECKING:
    from cowprof.pages import PageReport, ScanResult

__all__ = ["MIN_INTERVAL", "Exporter", "check_options", "make_scan", "serve"]

log = logging.getLogger("cowprof.exporter")

#: How often a detached exporter looks for the master again (capped by ``interval``).
REATTACH_POLL_SECONDS = 1.0
#: The shortest scan ``interval`` the exporter takes (``export --interval``, docs/fleet.md).
MIN_INTERVAL = 0.1

FindTree = Callable[[int], Tree]
Scan = Callable[[Tree], "ScanResult"]


# --------------------------------------------------------------------------------------------
# Who the master is, and how to find it again
# --------------------------------------------------------------------------------------------

def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a live process, or ``None`` if it is gone or a zombie (start ticks 0 when
    its stat cannot be read: :meth:`ProcessIdentity.lookup`)."""
    return ProcessIdentity.lookup(pid)


def still_alive(master: ProcessIdentity) -> bool:
    """True while the very same process (same PID and start time) is alive and not a zombie."""
    now = identify(master.pid)
    return now is not None and now.same_process(master)


def command_line(pid: int) -> str:
    """The command line of a process, its words joined by spaces; "" when it cannot be read."""
    try:
        return " ".join(procfs.read_cmdline(pid))
    except CowprofError:
        return ""


def read_pidfile(path: str) -> int:
    """The PID written in a PID file (gunicorn ``--pid``, uWSGI ``--pidfile``, ...)."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        raise BadInput(f"PID file {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"PID file {path} is a directory") from None
    except PermissionError:
        raise BadInput(f"permission denied reading PID file {path}") from None
    except OSError as exc:
        raise BadInput(f"cannot read PID file {path}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise BadInput(f"PID file {path} does not hold a PID: {text[:20]!r}")
    return int(text)


class MasterFinder:
    """Finds the master to reattach to: by PID file when one is given, else by command line."""

    def __init__(self, *, pidfile: str | None, cmdline: str | None,
                 find_tree: FindTree, self_pid: int | None = None) -> None:
        self.pidfile = pidfile
        self.cmdline = cmdline
        self._find_tree = find_tree
        self._self_pid = os.getpid() if self_pid is None else self_pid

    def describe(self) -> str:
        """How the master is looked for, for the log."""
        if self.pidfile:
            return f"PID file {self.pidfile}"
        if self.cmdline:
            return f"command line {self.cmdline!r}"
        return "nothing (no PID file, and the master's command line is unknown)"

    def find(self, previous: ProcessIdentity | None) -> int | None:
        """The PID of a live master with workers, other than ``previous``; ``None`` if none yet."""
        for pid in self._candidates(previous):
            try:
                tree = self._find_tree(pid)
            except CowprofError as exc:  # not started yet, no workers yet, not readable
                log.debug("candidate master %d not usable yet: %s", pid, exc)
                continue
            return tree.master
        return None

    def _candidates(self, previous: ProcessIdentity | None) -> list[int]:
        if self.pidfile:
            try:
                pid = read_pidfile(self.pidfile)
            except BadInput as exc:  # the new master has not written it yet
                log.debug("%s", exc)
                return []
            now = identify(pid)
            if now is None or now == previous:
                return []
            return [pid]
        if self.cmdline:
            return self._by_cmdline(previous)
        return []

    def _by_cmdline(self, previous: ProcessIdentity | None) -> list[int]:
        """Processes with the wanted command line whose parent has another one, newest first.

        Workers of a forking server share the master's command line, so a match whose parent
        matches too is a worker, not a master. Only processes started after the previous master
        count: the server's restart is newer, unrelated older look-alikes are not.
        """
        matches: dict[int, tuple[int, int]] = {}
        for pid in procfs.list_pids():
            if pid == self._self_pid:
                continue
            try:
                cmdline = procfs.read_cmdline(pid)  # a zombie's raises ProcessGone
                if not cmdline or " ".join(cmdline) != self.cmdline:
                    continue
                st = procfs.read_stat(pid)
            except CowprofError:  # exited meanwhile, or not ours to read
                continue
            if st.zombie or (previous is not None and st.starttime_ticks <= previous.start_ticks):
                continue
            matches[pid] = (st.ppid, st.starttime_ticks)
        masters = [pid for pid, (ppid, _) in matches.items() if ppid not in matches]
        return sorted(masters, key=lambda pid: matches[pid][1], reverse=True)


# --------------------------------------------------------------------------------------------
# The scan loop
# --------------------------------------------------------------------------------------------

class Exporter:
    """Scans one pre-fork tree over and over and keeps the latest snapshot for the collector.

    ``step()`` is one iteration (scan, or look for the master when detached); ``run()`` repeats it
    every ``interval`` seconds until ``stop`` is set. ``snapshot()`` is what the HTTP thread reads:
    an immutable ``(report or None, ExporterStatus)`` tuple, swapped in one assignment.
    ``scan`` returns a :class:`cowprof.pages.ScanResult`: the report, and how many pages can have
    changed since its page tables were read (a :class:`cowprof.pages.Scanner` with a tolerance;
    0: exact).
    """

    def __init__(self, master: ProcessIdentity, finder: MasterFinder, *,
                 find_tree: FindTree, scan: Scan) -> None:
        self._find_tree = find_tree
        self._scan = scan
        self._drift_bytes: float | None = None
        self._pages_read_at: float | None = None
        self._finder = finder
        self._master: ProcessIdentity | None = None
        self._last_master = master
        self._scans = 0
        self._errors = 0
        self._scan_seconds: float | None = None
        self._last_scan_at: float | None = None
        self._last_error: str | None = None
        self._workers: tuple[int, ...] | None = None
        self._snap: tuple[Any, ExporterStatus] = (None, ExporterStatus())
        self._attach(master, reattached=False)

    # -- state -------------------------------------------------------------------------------
    @property
    def master(self) -> ProcessIdentity | None:
        """The master currently attached to (``None`` while waiting for it to come back)."""
        return self._master

    def snapshot(self) -> tuple[PageReport | None, ExporterStatus]:
        """The latest report (``None`` when there is no current data) and the exporter status."""
        return self._snap

    def _publish(self, report: PageReport | None) -> None:
        status = ExporterStatus(
            up=report is not None,
            master_pid=self._master.pid if self._master else None,
            scans_total=self._scans,
            scrape_errors_total=self._errors,
            scan_seconds=self._scan_seconds,
            last_scan_at=self._last_scan_at,
            drift_bytes=self._drift_bytes if report is not None else None,
            pages_read_at=self._pages_read_at if report is not None else None,
        )
        self._snap = (report, status)

    def _attach(self, master: ProcessIdentity, *, reattached: bool) -> None:
        self._master = self._last_master = master
        self._workers = None
        self._last_error = None
        if not self._finder.pidfile and not self._finder.cmdline:
            self._finder.cmdline = command_line(master.pid) or None  # reattach by the master's own
        if reattached:
            log.info("reattached to master PID %d", master.pid)

    def _detach(self, why: str) -> None:
        assert self._master is not None
        log.warning("master PID %d %s; cowprof_up is 0 and its series are dropped; "
                    "waiting for a new master (looking by %s)",
                    self._master.pid, why, self._finder.describe())
        self._master = None
        self._workers = None
        self._publish(None)

    def _error(self, message: str, *, exc_info: bool = False) -> None:
        self._errors += 1
        if message != self._last_error:  # log each distinct error once, not every interval
            log.warning("scan failed: %s", message, exc_info=exc_info)
            self._last_error = message
        self._publish(None)

    # -- one iteration -----------------------------------------------------------------------
    def step(self) -> None:
        """One iteration: scan the tree, or look for its master when detached."""
        if self._master is None:
            pid = self._finder.find(self._last_master)
            if pid is None:
                return
            master = identify(pid)
            if master is None:
                return
            self._attach(master, reattached=True)
        master = self._master
        assert master is not None
        if not still_alive(master):
            self._detach("exited")
            return
        started = time.perf_counter()
        checked_at = time.time()
        try:
            try:
                tree = self._find_tree(master.pid)
            except NotAPreforkTree:
                # alive but without workers right now (all recycled at once, shutting down):
                # a tree of zero workers, reported as cowprof_workers 0, not as an error
                tree = Tree(master.pid, ())
            if tree.master != master.pid:
                raise NotAPreforkTree(f"PID {master.pid} is now a worker of PID {tree.master}")
            report, drift = self._scan(tree)
        except ProcessGone as exc:
            if not still_alive(master):
                self._detach("exited")
            else:
                self._error(str(exc))
            return
        except CowprofError as exc:
            self._error(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not kill a long-running exporter: log it, go on
            self._error(f"{type(exc).__name__}: {exc}", exc_info=True)
            return
        self._scan_seconds = time.perf_counter() - started
        # the check's time, every check; the page tables' read time and the bound on what can
        # have changed since, on their own
        self._last_scan_at = checked_at
        self._pages_read_at = float(getattr(report, "taken_at", 0.0) or checked_at)
        self._drift_bytes = float(drift * int(getattr(report, "page_size", 0) or procfs.PAGE_SIZE))
        self._scans += 1
        if self._last_error is not None:
            log.info("scans of master PID %d succeed again", master.pid)
            self._last_error = None
        self._log_workers(report)
        self._publish(report)

    def _log_workers(self, report: PageReport) -> None:
        pids = tuple(sorted(w.pid for w in report.workers))
        if self._workers is None:
            log.info("master PID %d has %d worker%s: %s", report.master.pid, len(pids),
                     "" if len(pids) == 1 else "s", " ".join(map(str, pids)) or "-")
        elif pids != self._workers:
            before = set(self._workers)
            started = sorted(set(pids) - before)
            exited = sorted(before - set(pids))
            log.info("workers of master PID %d: %d now%s%s", report.master.pid, len(pids),
                     f", started {' '.join(map(str, started))}" if started else "",
                     f", exited {' '.join(map(str, exited))}" if exited else "")
        self._workers = pids

    def run(self, interval: float, stop: threading.Event) -> None:
        """Call :meth:`step` every ``interval`` seconds (more often while detached) until ``stop``."""
        warned_slow = False
        while not stop.is_set():
            started = time.monotonic()
            self.step()
            elapsed = time.monotonic() - started
            period = interval if self._master is not None else min(interval, REATTACH_POLL_SECONDS)
            if elapsed > interval and not warned_slow:
                log.warning("a scan took %.1f s, longer than the %.1f s interval: scanning back to "
                            "back; consider a longer --interval", elapsed, interval)
                warned_slow = True
            stop.wait(max(0.0, period - elapsed))


# --------------------------------------------------------------------------------------------
# HTTP server and the blocking entry point
# --------------------------------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per request; never shares the port with another process."""

    daemon_threads = True
    allow_reuse_port = False


def _bind(bind: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    """Bind the metrics server now (so a bad address or a busy port fails before any scan)."""
    try:
        family = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise BadInput(f"cannot bind to {bind!r}: {getattr(exc, 'strerror', None) or exc}") from None

    class Server(_MetricsServer):
        address_family = family

    try:
        return make_server(bind, port, app, server_class=Server, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BadInput(f"port {port} on {bind} is already in use") from None
        if exc.errno == errno.EACCES:
            raise BadInput(f"not allowed to listen on port {port} (ports below 1024 need root)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BadInput(f"{bind} is not an address of this host") from None
        raise BadInput(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None


def _initial_master(pid: int | None, pidfile: str | None, cmdline: str | None,
                    find_tree: FindTree) -> ProcessIdentity:
    """The master to start with; raises a one-line :class:`CowprofError` when there is none."""
    if pid is None and pidfile:
        pid = read_pidfile(pidfile)
    if pid is None and cmdline:
        found = MasterFinder(pidfile=None, cmdline=cmdline, find_tree=find_tree).find(None)
        if found is None:
            raise BadInput(f"no running master with workers has the command line {cmdline!r}")
        pid = found
    if pid is None:
        raise BadInput("give the PID of the master (or of a worker), or a PID file")
    if pid <= 0:
        raise BadInput(f"not a valid PID: {pid}")
    tree = find_tree(pid)  # ProcessGone / AccessDenied / NotAPreforkTree: one-line errors
    master = identify(tree.master)
    if master is None:
        raise ProcessGone(tree.master)
    return master


class _StopOnSignal:
    """Sets ``stop`` on SIGINT/SIGTERM without running any locking code inside a signal handler.

    The Python-level handler does nothing; ``signal.set_wakeup_fd`` makes the interpreter write
    the signal number to a pipe, and a small thread reading that pipe sets the event. (Setting a
    ``threading.Event`` from the handler itself could deadlock if the signal arrived while the
    main thread held the event's lock.) Only installable from the main thread; elsewhere a no-op.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._previous: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._pipe: tuple[int, int] | None = None
        self.received: str | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch, args=(r,), name="cowprof-signals", daemon=True).start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the wakeup byte already told the watcher thread."""

    def _watch(self, r: int) -> None:
        wanted = {int(s): s.name for s in self.SIGNALS}
        try:  # runs until uninstall() closes the write end (EOF)
            while data := os.read(r, 64):
                hits = [wanted[b] for b in data if b in wanted]
                if hits:
                    self.received = self.received or hits[0]
                    self._stop.set()
        except OSError:
            pass
        finally:
            os.close(r)

    def uninstall(self) -> None:
        if self._pipe is None:
            return
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_wakeup_fd)
        _r, w = self._pipe
        self._pipe = None
        os.close(w)  # the watcher reads EOF, returns and closes its end


def _setup_logging() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s cowprof export[%(process)d] "
                                           "%(levelname)s: %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def check_options(*, port: int, interval: float, bind: str, max_cpu: float = DEFAULT_EXPORT_MAX_CPU) -> float:
    """The checks of :func:`serve`'s ``port``, ``interval`` (at least :data:`MIN_INTERVAL`, by
    :func:`cowprof.timer.check_interval`), ``bind`` and ``max_cpu`` (0 to 100), which ``cowprof
    export`` runs too before it imports numpy or starts anything:
    :class:`~cowprof.errors.BadInput` with a one-line message naming the option.
    Returns the interval in seconds."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput(f"--port must be between 0 and 65535, not {port}")
    if (isinstance(max_cpu, bool) or not isinstance(max_cpu, (int, float))
            or not 0 <= max_cpu <= 100):  # NaN fails too
        raise BadInput(f"--max-cpu must be between 0 and 100 (% of one core), not {max_cpu}")
    seconds = check_interval(interval, minimum=MIN_INTERVAL, option="--interval")
    if not bind:
        raise BadInput("--bind needs an address, e.g. 127.0.0.1")
    return seconds


def make_scan(*, interval: float, max_cpu: float = DEFAULT_EXPORT_MAX_CPU, exact: bool = False) -> Scan:
    """The exporter's ``scan`` (:class:`Exporter`): a
    :class:`cowprof.pages.Scanner` in the exclusive-bit mode (even as root: the metrics need
    nothing the PFN mode adds, and it costs half the CPU) that costs no page scan while nothing
    changed; unless ``exact``, under :class:`cowprof.timer.Rereads` with ``EXPORT_TOLERANCE``,
    ``EXPORT_MAX_AGE_INTERVALS`` and a CPU budget of ``max_cpu`` % of one core (0: none)."""
    from cowprof.pages import Scanner

    if exact:
        return Scanner(privileged=False).read
    scanner = Scanner(privileged=False, tolerance=EXPORT_TOLERANCE)
    rereads = Rereads(tolerance=EXPORT_TOLERANCE, max_age=EXPORT_MAX_AGE_INTERVALS, interval=interval,
                      max_cpu=max_cpu / 100.0 if max_cpu > 0 else None)

    def scan(tree: Tree) -> ScanResult:
        return rereads.read(scanner, tree)

    return scan


def serve(pid: int | None, *, port: int = 9464, bind: str = "127.0.0.1", interval: float = 5.0,
          pidfile: str | None = None, cmdline: str | None = None, max_cpu: float = DEFAULT_EXPORT_MAX_CPU,
          exact: bool = False) -> int:
    """Serve Prometheus metrics for the pre-fork tree of ``pid`` until SIGINT/SIGTERM.

    Blocking. ``pid`` may be the master or any worker; it may be ``None`` when ``pidfile`` (or
    ``cmdline``) says where the master is. ``port`` 0 picks a free port (logged). ``max_cpu`` (%
    of one core, 0: none) budgets the page-table re-reads; ``exact`` re-reads them at every
    interval where anything changed, with no budget (:func:`make_scan`). Returns the exit
    code (0 after a signal); raises :class:`~cowprof.errors.CowprofError` subclasses with one-line
    messages for bad input (bad PID, unusable PID file, busy port, bad interval, bad max_cpu).
    """
    if _PROMETHEUS_MISSING is not None:
        raise CowprofError("cowprof export needs prometheus_client: "
                           "pip install 'cowprof[prometheus]'")
    interval = check_options(port=port, interval=interval, bind=bind, max_cpu=max_cpu)
    from cowprof.tree import find_tree

    scan = make_scan(interval=interval, max_cpu=max_cpu, exact=exact)

    handler = _setup_logging()
    server: WSGIServer | None = None
    thread: threading.Thread | None = None
    stop = threading.Event()
    signals = _StopOnSignal(stop)
    try:
        signals.install()
        master = _initial_master(pid, pidfile, cmdline, find_tree)
        finder = MasterFinder(pidfile=pidfile, cmdline=cmdline, find_tree=find_tree)
        exporter = Exporter(master, finder, find_tree=find_tree, scan=scan)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ReportCollector(exporter.snapshot))
        server = _bind(bind, port, make_wsgi_app(registry))
        # Scan once before serving: the first scrape already sees the whole tree (connections
        # made meanwhile wait in the listen backlog).
        exporter.step()
        host, real_port = server.server_address[:2]
        thread = threading.Thread(target=server.serve_forever, name="cowprof-metrics", daemon=True)
        thread.start()
        log.info("watching master PID %d; serving http://%s:%d/metrics; scanning every %g s; "
                 "on a master restart, looking for it by %s", master.pid,
                 f"[{host!s}]" if ":" in str(host) else host, real_port, interval, finder.describe())
        exporter.run(interval, stop)
        log.info("stopping on %s", signals.received or "request")
        return 0
    finally:
        if server is not None:
            if thread is not None:
                server.shutdown()
            server.server_close()
        signals.uninstall()
        log.removeHandler(handler)
