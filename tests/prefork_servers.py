"""Real pre-fork servers running the fixture apps of ``tests/serverapps``, for the server tests and
``scripts/bench_servers.py``.

A *cell* is one server running one app (``Cell("gunicorn-sync", "django")``); a *mode* is the fork
recipe it runs with: ``baseline`` (the app preloaded, nothing else), ``gc-freeze`` (the ``gc``
module documentation's recipe) or ``cowprof`` (docs/servers.md's recipe for that server, default
settings). :func:`run_cell` starts one server per mode side by side, each on a free 127.0.0.1
port (Celery: with its own ``redis-server`` on a free port), sends each the same bounded load in
interleaved batches (so that whatever else runs on the machine slows every mode alike), measures
the server's CPU time during the load, classifies every worker's pages with cowprof's own scan
(:func:`cowprof.pages.scan`) while the workers still run, then stops what it started, by PID.

Servers: ``gunicorn-sync``, ``gunicorn-gthread`` (4 threads), ``gunicorn-uvicorn``
(``uvicorn_worker.UvicornWorker``), ``gunicorn-asgi`` (gunicorn's own ASGI worker), ``uwsgi``
(master + processes, no lazy-apps), ``celery`` (prefork pool, Redis broker), ``mp-pool``
(``multiprocessing`` fork Pool). Apps: ``django``, ``flask`` (WSGI), ``fastapi`` (ASGI),
``celery`` and ``mp`` (their own fixtures).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forktree import stop_master

from cowprof import procfs
from demo.run import free_port, split_batches, tree_cpu_seconds
from cowprof.errors import CowprofError
from cowprof.pages import PageReport, scan
from cowprof.tree import Tree, find_tree

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
SERVERAPPS = TESTS_DIR / "serverapps"
MODES = ("baseline", "gc-freeze", "cowprof")
MB = 1 << 20
#: the caller's COWPROF_* settings the servers keep (every other one is dropped: the modes set theirs):
#: the suite's private directories among them (tests/conftest.py), so that no server writes into the
#: user's ~/.cache, nor learns from an earlier run's workers
PASSED_ON = ("COWPROF_HEAPMAP_DIR", "COWPROF_PRELOAD_DIR", "COWPROF_HELP_CACHE", "COWPROF_ALLOW_UNTESTED")


# ------------------------------------------------------------------------------------- apps


@dataclass(frozen=True)
class App:
    """A fixture app: where it lives, its entry point, its database and the requests it answers."""

    name: str
    kind: str  # "wsgi" | "asgi" | "celery" | "mp"
    root: Path  # goes on PYTHONPATH, next to SERVERAPPS
    target: str = ""  # module:attribute of the WSGI/ASGI app
    seed_module: str = ""  # ``python -m seed_module PATH`` creates its sqlite database
    db_env: str = ""  # the variable the app reads the database path from
    list_page: str = "/?page={}"
    extra_paths: tuple[str, ...] = ()
    only_path: str = ""  # every request goes there (instead of catalog_data's mix)
    ready_path: str = "/health"

    def request_paths(self, count: int, seed: int = 1) -> list[str]:
        if self.only_path:
            return [self.only_path] * count
        sys.path.insert(0, str(SERVERAPPS))
        try:
            import catalog_data
        finally:
            sys.path.remove(str(SERVERAPPS))
        return catalog_data.request_paths(count, seed=seed, list_page=self.list_page, extra=self.extra_paths)


APPS: dict[str, App] = {
    "django": App("django", "wsgi", SERVERAPPS / "djshop", "djshop.wsgi:application", "djshop.seed", "DJSHOP_DB",
                  extra_paths=("/admin/login/",)),
    "flask": App("flask", "wsgi", SERVERAPPS / "flaskshop", "flaskshop.wsgi:app", "flaskshop.seed", "FLASKSHOP_DB"),
    "fastapi": App("fastapi", "asgi", SERVERAPPS / "fastshop", "fastshop.app:app",
                   list_page="/api/products?page={}"),
    "celery": App("celery", "celery", SERVERAPPS),
    "mp": App("mp", "mp", SERVERAPPS),
    "dirty": App("dirty", "wsgi", SERVERAPPS, "dirtyshop:app", only_path="/dirty", ready_path="/dirty"),
}

#: which apps each server runs
SERVER_APPS: dict[str, tuple[str, ...]] = {
    "gunicorn-sync": ("django", "flask"),
    "gunicorn-gthread": ("django", "flask"),
    "gunicorn-uvicorn": ("fastapi",),
    "gunicorn-asgi": ("fastapi",),
    "uwsgi": ("django", "flask"),
    "celery": ("celery",),
    "mp-pool": ("mp",),
    # gunicorn 25+: HTTP workers and a dirty arbiter (with one dirty worker), all forked from the master
    "gunicorn-dirty": ("dirty",),
}
GUNICORN_WORKER_CLASS = {"gunicorn-sync": ["-k", "sync"], "gunicorn-gthread": ["-k", "gthread", "--threads", "4"],
                         "gunicorn-uvicorn": ["-k", "uvicorn_worker.UvicornWorker"], "gunicorn-asgi": ["-k", "asgi"],
                         "gunicorn-dirty": ["-k", "sync", "--dirty-app", "dirtyshop:CatalogIndex",
                                            "--dirty-workers", "1"]}


@dataclass(frozen=True)
class Cell:
    server: str
    app: str

    def __post_init__(self) -> None:
        if self.app not in SERVER_APPS.get(self.server, ()):
            raise ValueError(f"no cell {self.server} x {self.app}; servers and their apps: {SERVER_APPS}")

    def __str__(self) -> str:
        return f"{self.server}/{self.app}"


#: the server x framework cells of the benchmark table (the dirty arbiter has its own test)
ALL_CELLS = tuple(Cell(s, a) for s, apps in SERVER_APPS.items() for a in apps if s != "gunicorn-dirty")


def make_databases(directory: Path, python: str = sys.executable) -> dict[str, str]:
    """Seeds each fixture app's sqlite database under ``directory``; returns the environment that
    points the apps at them."""
    env: dict[str, str] = {}
    for app in APPS.values():
        if not app.seed_module:
            continue
        path = directory / f"{app.name}.sqlite3"
        if not path.exists():
            subprocess.run([python, "-m", app.seed_module, str(path)], cwd=app.root, check=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": _pythonpath(app)}, capture_output=True)
        env[app.db_env] = str(path)
    return env


def _pythonpath(app: App) -> str:
    parts = [str(app.root), str(SERVERAPPS), str(REPO), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


# ------------------------------------------------------------------------------------ redis


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None)


class RedisServer:
    """Debian's ``redis-server`` on a free 127.0.0.1 port, no persistence, in a private directory;
    ``stop()`` ends it by PID."""

    def __init__(self, directory: Path, timeout: float = 20.0) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise CowprofError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        self._log = open(directory / "redis.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--daemonize", "no", "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CowprofError(f"redis-server exited with status {self.proc.returncode}")
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise CowprofError(f"redis-server did not answer PING within {timeout:g} s")

    def stop(self) -> None:
        stop_master(self.proc, ())
        self._log.close()


# ---------------------------------------------------------------------------------- servers


@dataclass
class ModeRun:
    """One mode of one cell: its server, then what was measured."""

    cell: Cell
    mode: str
    server: ServerProcess
    tree: Tree | None = None
    master_heap_bytes: int = 0  # the master's anonymous resident memory once the workers are up, before load
    boot_seconds: float = 0.0
    requested: int = 0
    ok: int = 0
    first_error: str | None = None
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system of the master and workers during the load
    pages: PageReport | None = None
    boot_pages: PageReport | None = None  # the scan before the load (run_cell's scan_boot), or None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. top copied types / causes

    @property
    def copied(self) -> list[int]:
        return [w.copied_bytes for w in self.pages.workers] if self.pages else []

    @property
    def boot_copied(self) -> list[int]:
        """Each worker's copied bytes before the load: its start (and, for one, the readiness probe)."""
        return [w.copied_bytes for w in self.boot_pages.workers] if self.boot_pages else []

    @property
    def copied_mean(self) -> float:
        return sum(self.copied) / len(self.copied) if self.copied else 0.0

    @property
    def copied_max(self) -> int:
        return max(self.copied, default=0)

    @property
    def copied_max_pct(self) -> float:
        """The worst worker's copied bytes, in % of the master's RSS after the load."""
        rss = self.pages.master.rss_bytes if self.pages else 0
        return 100.0 * self.copied_max / rss if rss else 0.0

    @property
    def total_pss(self) -> int:
        if not self.pages:
            return 0
        return self.pages.master.pss_bytes + sum(w.pss_bytes for w in self.pages.workers)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_seconds / self.ok if self.ok else 0.0

    def describe(self) -> str:
        """One line for assertion messages."""
        return (f"{self.cell} {self.mode}: copied MiB per worker "
                f"{[round(c / MB, 1) for c in self.copied]}, master heap {self.master_heap_bytes / MB:.1f} MiB, "
                f"{self.ok}/{self.requested} ok, log {self.server.log_path}")

    def summary(self) -> dict[str, Any]:
        return {"cell": str(self.cell), "mode": self.mode, "workers": len(self.copied),
                "copied_mean_bytes": self.copied_mean, "copied_max_bytes": self.copied_max,
                "copied_max_pct_of_master_rss": round(self.copied_max_pct, 3),
                "master_rss_bytes": self.pages.master.rss_bytes if self.pages else 0,
                "master_heap_bytes": self.master_heap_bytes, "total_pss_bytes": self.total_pss,
                "boot_copied_min_bytes": min(self.boot_copied, default=None),
                "boot_copied_max_bytes": max(self.boot_copied, default=None),
                "requests": self.requested, "ok": self.ok, "load_seconds": round(self.load_seconds, 3),
                "cpu_ms_per_request": round(self.cpu_ms_per_request, 4), "boot_seconds": self.boot_seconds,
                "first_error": self.first_error, **self.extras}


class ServerProcess:
    """One server of one mode: started in ``__init__``, ready after :meth:`wait_ready`, loaded with
    :meth:`load`, ended by :meth:`stop` (SIGTERM to the master it started, then SIGKILL to any
    worker of it left)."""

    def __init__(self, cell: Cell, mode: str, workdir: Path, *, workers: int = 2,
                 extra_env: dict[str, str] | None = None, python: str = sys.executable) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        self.cell, self.mode, self.workers = cell, mode, workers
        self.app = APPS[cell.app]
        self.dir = workdir / f"{cell.server}-{cell.app}-{mode}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.port = free_port()
        self.redis: RedisServer | None = None
        self.worker_pids: tuple[int, ...] = ()
        #: the master's forked children once ready: the workers, plus the dirty arbiter
        self.children = workers + (cell.server == "gunicorn-dirty")
        self._client: Any = None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SERVERAPPS_", "COWPROF_")) or k in PASSED_ON}
        env.update(PYTHONPATH=_pythonpath(self.app), PYTHONUNBUFFERED="1", SERVERAPPS_MODE=mode,
                   SERVERAPPS_PROC_NAME=f"serverapps-{os.getpid()}-{self.port}")
        env.update(extra_env or {})
        if cell.server == "celery":
            self.redis = RedisServer(self.dir / "redis")
            env["CELERYSHOP_BROKER"] = self.redis.url
        argv = self._argv(python, env)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        stdio = subprocess.PIPE if cell.server == "mp-pool" else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdin=stdio,
                                         stdout=subprocess.PIPE if stdio == subprocess.PIPE else self._log,
                                         stderr=self._log, text=stdio == subprocess.PIPE)
        except BaseException:
            self._log.close()
            if self.redis is not None:
                self.redis.stop()
            raise
        self.pid = self.proc.pid

    def _argv(self, python: str, env: dict[str, str]) -> list[str]:
        server, app = self.cell.server, self.app
        if server.startswith("gunicorn-"):
            conf = str(SERVERAPPS / "gunicorn_conf.py")
            if self.mode == "cowprof":
                env.setdefault("COWPROF_GUNICORN_CONFIG", conf)  # extra_env may name a user config
                conf = "python:cowprof.gunicorn"
            elif self.mode == "gc-freeze":
                conf = str(SERVERAPPS / "gunicorn_gcfreeze_conf.py")
            return [python, "-m", "gunicorn", "-c", conf, "--bind", f"127.0.0.1:{self.port}",
                    "--workers", str(self.workers), *GUNICORN_WORKER_CLASS[server], app.target]
        if server == "uwsgi":
            env["SERVERAPPS_WSGI"] = app.target
            return [str(Path(python).parent / "uwsgi"), "--master", "--processes", str(self.workers),
                    "--http11-socket", f"127.0.0.1:{self.port}", "--module", "uwsgi_entry:application",
                    "--home", sys.prefix if python == sys.executable else str(Path(python).parent.parent),
                    "--pythonpath", str(app.root), "--pythonpath", str(SERVERAPPS),
                    "--die-on-term", "--need-app", "--strict", "--disable-logging", "--buffer-size", "16384"]
        if server == "celery":
            return [python, "-m", "celery", "-A", "celeryshop", "worker", "--pool", "prefork",
                    "--concurrency", str(self.workers), "--loglevel", "INFO", "--without-heartbeat",
                    "--without-gossip", "--without-mingle", "--hostname", f"celeryshop-{self.port}@%h"]
        if server == "mp-pool":
            return [python, str(SERVERAPPS / "mp_pool.py"), "--mode", self.mode, "--workers", str(self.workers)]
        raise ValueError(f"unknown server {server!r}")

    # -- readiness

    def wait_ready(self, timeout: float = 120.0) -> Tree:
        """Waits until the master has forked its workers and the app answers; returns the tree."""
        deadline = time.monotonic() + timeout
        if self.cell.server == "mp-pool":
            line = self._read_line(deadline)
            if not line.startswith("READY "):
                raise CowprofError(f"{self.cell} {self.mode}: expected READY, got {line!r}; {self._tail()}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CowprofError(f"{self.cell} {self.mode}: the server exited with status {self.proc.returncode}"
                                   f" while starting; {self._tail()}")
            try:
                tree = find_tree(self.pid)
            except CowprofError:
                tree = None
            if tree is not None and tree.master == self.pid and len(tree.workers) >= self.children:
                self.worker_pids = tree.workers
                if self._answers():
                    return tree
            time.sleep(0.2)
        raise CowprofError(f"{self.cell} {self.mode}: not ready within {timeout:g} s; {self._tail()}")

    def _answers(self) -> bool:
        if self.cell.server == "mp-pool":
            return True
        if self.cell.server == "celery":
            return b" ready." in self.log_path.read_bytes()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.app.ready_path}",  # noqa: S310
                                        timeout=5) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _read_line(self, deadline: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise CowprofError(f"{self.cell} {self.mode}: no answer on stdout in time; {self._tail()}")
        return self.proc.stdout.readline().strip()

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"last lines of {self.log_path}:\n" + "\n".join(text)

    # -- load

    def load(self, items: Sequence[Any], *, concurrency: int = 4, deadline: float = 120.0) -> tuple[int, str | None]:
        """Sends ``items`` (request paths, Celery task calls, or a task count for ``mp-pool``);
        returns (answered ok, first error)."""
        if self.cell.server == "celery":
            return self._load_celery(items, deadline)
        if self.cell.server == "mp-pool":
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"run {len(items)}\n")
            self.proc.stdin.flush()
            line = self._read_line(time.monotonic() + deadline)
            ok = int(line.split()[1]) if line.startswith("DONE ") else 0
            return ok, None if ok == len(items) else line
        from demo.loadgen import run_load

        result = run_load("127.0.0.1", self.port, list(items), concurrency=concurrency, deadline=deadline)
        return result.ok, result.first_error or (None if result.ok == len(items) else f"status {result.status}")

    def _load_celery(self, calls: Sequence[tuple[str, tuple]], deadline: float) -> tuple[int, str | None]:
        from celery import Celery

        if self._client is None:
            assert self.redis is not None
            self._client = Celery("celeryshop-client", broker=self.redis.url, backend=self.redis.url)
            self._client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
        stop_at = time.monotonic() + deadline
        pending = [self._client.send_task(name, args=args) for name, args in calls]
        ok, first_error = 0, None
        for res in pending:
            try:
                res.get(timeout=max(0.1, stop_at - time.monotonic()))
                ok += 1
            except Exception as err:  # noqa: BLE001 - counted, the caller asserts on it
                first_error = first_error or f"{type(err).__name__}: {err}"
        return ok, first_error

    # -- stop

    def stop(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
            stop_master(self.proc, self.worker_pids)
        finally:
            self._log.close()
            if self.redis is not None:
                self.redis.stop()


def celery_calls(count: int, seed: int = 1) -> list[tuple[str, tuple]]:
    """A fixed mix of the Celery fixture's tasks."""
    import random

    sys.path.insert(0, str(SERVERAPPS))
    try:
        import catalog_data
    finally:
        sys.path.remove(str(SERVERAPPS))
    rng = random.Random(seed)
    calls: list[tuple[str, tuple]] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.4:
            calls.append(("celeryshop.quote", (rng.sample(range(1, catalog_data.N_PRODUCTS + 1), 10),)))
        elif r < 0.7:
            calls.append(("celeryshop.category_report", (rng.choice(catalog_data.SLUGS),)))
        else:
            calls.append(("celeryshop.search", (rng.choice(catalog_data.WORDS),)))
    return calls


def load_items(cell: Cell, count: int, seed: int = 1) -> list[Any]:
    """``count`` units of the cell's load: request paths, Celery calls, or pool tasks."""
    if cell.server == "celery":
        return celery_calls(count, seed)
    if cell.server == "mp-pool":
        return list(range(count))
    return APPS[cell.app].request_paths(count, seed)


def run_cell(cell: Cell, modes: Sequence[str], workdir: Path, *, requests: int, batch: int = 100,
             workers: int = 2, concurrency: int = 4, boot_timeout: float = 120.0, load_deadline: float = 120.0,
             env: dict[str, str] | None = None, mode_env: dict[str, dict[str, str]] | None = None,
             keep_addresses: bool = False, scan_boot: bool = False,
             collect: Callable[[ModeRun, Tree], None] | None = None) -> list[ModeRun]:
    """Runs ``cell`` in each of ``modes`` side by side (see the module doc); every server is
    stopped before this returns. ``env`` is added to every server's environment (e.g. the
    databases of :func:`make_databases`), ``mode_env[mode]`` to that mode's; ``collect(run, tree)``
    runs after a mode's scan, with its workers still alive. ``scan_boot`` also scans every mode once
    all are ready, before the load (``ModeRun.boot_pages``: what the workers copied by starting and
    answering the readiness probe)."""
    items = load_items(cell, requests)
    runs: list[ModeRun] = []
    try:
        for mode in modes:
            server = ServerProcess(cell, mode, workdir, workers=workers,
                                   extra_env={**(env or {}), **(mode_env or {}).get(mode, {})})
            runs.append(ModeRun(cell, mode, server))
        for run in runs:
            run.tree = run.server.wait_ready(boot_timeout)
            run.boot_seconds = round(time.monotonic() - run.server.started, 2)
            run.master_heap_bytes = procfs.read_smaps_rollup(run.tree.master).anonymous
        if scan_boot:
            for run in runs:
                assert run.tree is not None
                run.boot_pages = scan(run.tree)
        batches = split_batches(len(items), batch)
        per_batch = max(5.0, load_deadline / len(batches))
        for i, (lo, hi) in enumerate(batches):
            for k in range(len(runs)):
                run = runs[(i + k) % len(runs)]
                assert run.tree is not None
                before, t0 = tree_cpu_seconds(run.tree), time.monotonic()
                ok, err = run.server.load(items[lo:hi], concurrency=concurrency, deadline=per_batch)
                run.load_seconds += time.monotonic() - t0
                run.cpu_seconds += tree_cpu_seconds(run.tree) - before
                run.requested += hi - lo
                run.ok += ok
                run.first_error = run.first_error or err
        for run in runs:
            tree = find_tree(run.server.pid)
            if tree.workers != run.server.worker_pids:
                raise CowprofError(f"{run.cell} {run.mode}: workers changed during the load "
                                   f"({run.server.worker_pids} -> {tree.workers}); {run.server._tail()}")
            run.pages = scan(tree, keep_addresses=keep_addresses)
            if collect is not None:
                collect(run, tree)
    finally:
        for run in runs:
            run.server.stop()
    return runs


def scratch_dir(prefix: str = "cowprof-servers-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = ["ALL_CELLS", "APPS", "MODES", "SERVER_APPS", "App", "Cell", "ModeRun", "RedisServer", "ServerProcess",
           "load_items", "make_databases", "redis_server_binary", "run_cell", "scratch_dir"]
