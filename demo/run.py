"""The one-command demo (``scripts/demo``): the sample app under gunicorn in three modes, one table.

Each mode gets its own fresh gunicorn master, started as a subprocess (127.0.0.1, a free port, sync
workers); the servers run side by side and each is sent the same list of requests
(:mod:`demo.loadgen`, paths from :mod:`sample_app.traffic`) in interleaved batches, so that other
activity on the machine affects every mode alike. Then the pages of each master and its still-running
workers are classified (:func:`cowprof.pages.scan`) and every gunicorn is stopped (SIGTERM to the
master it started). Modes:

- ``baseline`` — ``preload_app`` only (``sample_app/gunicorn.conf.py``, no cowprof code);
- ``gc-freeze`` — the ``gc`` docs' recipe: disable early, freeze before fork, enable in the child
  (``sample_app/gunicorn_gcfreeze.conf.py``, no cowprof code);
- ``cowprof`` — our hook (``-c python:cowprof.gunicorn`` with ``COWPROF_GUNICORN_CONFIG`` naming the
  sample config), warm-up of each endpoint, then ``prepare_fork``;
- ``cowprof-no-warmup`` (not in the default set) — the hook without warm-up.

Why sync workers: they are gunicorn's default and the usual ``preload_app`` deployment, each worker
serves one request at a time (no thread stacks or per-thread caches blur the per-worker numbers),
and they need no extra dependency.

Output: the table on stdout, and in the output directory (default ``demo-out/``) one
``<mode>.json`` per mode (page report, load result, what the hook did), ``<mode>.log`` (gunicorn's
log), ``table.txt`` and ``summary.json``. To add a column (e.g. attribution's top types), append a
:class:`Column` to :data:`COLUMNS`; per-mode data beyond pages and load goes into
``ModeResult.extras`` (see :func:`run_modes`'s ``collect`` argument).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from cowprof import procfs
from cowprof.errors import BadInput, CowprofError, ProcessGone
from demo.loadgen import LoadResult, merge_results, run_load
from cowprof.pages import PageReport, scan
from cowprof.tree import Tree, find_tree

if TYPE_CHECKING:
    from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "sample_app"
MB = 1024 * 1024

# Targets from the issue (cowprof mode): copied per worker, total PSS, throughput vs baseline.
TARGET_COPIED_PCT = 2.0
TARGET_PSS_RATIO = 1.15
TARGET_RPS_RATIO = 0.97


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and bounds of one demo run (``--quick`` uses :data:`QUICK`)."""

    heap_mb: float = 190.0
    workers: int = 4
    requests: int = 20_000
    concurrency: int = 8
    load_deadline: float = 600.0
    boot_timeout: float = 240.0
    request_timeout: float = 30.0
    batch: int = 1000  # requests per interleaved load batch (see run_modes)
    seed: int = 7
    out_dir: Path = REPO_ROOT / "demo-out"
    python: str = sys.executable


QUICK = DemoConfig(heap_mb=40.0, workers=2, requests=3000, concurrency=4, load_deadline=120.0,
                   boot_timeout=120.0, batch=500)


@dataclass(frozen=True)
class ModeSpec:
    """How to start gunicorn for one mode: config argument and extra environment."""

    name: str
    description: str
    config: str
    env: dict[str, str] = field(default_factory=dict)
    prepare_report: bool = False  # the mode writes COWPROF_PREPARE_REPORT
    preload: bool = True  # pass --preload (every demo mode does; tests check the warning without)


def _sample_traffic() -> Any:
    """``sample_app.traffic`` (light: it does not build the heap), importable from the repo root."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from sample_app import traffic

    return traffic


def sample_request_paths(count: int, seed: int = 7) -> list[str]:
    """The demo's request list (``sample_app.traffic.request_paths``)."""
    paths: list[str] = _sample_traffic().request_paths(count, seed=seed)
    return paths


def _warmup_paths() -> str:
    return ",".join(_sample_traffic().WARMUP_PATHS)


def mode_specs() -> dict[str, ModeSpec]:
    """The demo modes by name, in table order."""
    conf = str(SAMPLE_DIR / "gunicorn.conf.py")
    return {
        # SAMPLE_APP_RECORD_HEAPMAP: a heap map without preparing anything, for the "top types" column
        "baseline": ModeSpec("baseline", "preload_app only", conf, {"SAMPLE_APP_RECORD_HEAPMAP": "1"}),
        "gc-freeze": ModeSpec("gc-freeze", "gc docs recipe: disable early, freeze before fork, enable in child",
                              str(SAMPLE_DIR / "gunicorn_gcfreeze.conf.py"), {"SAMPLE_APP_RECORD_HEAPMAP": "1"},
                              prepare_report=True),
        "cowprof": ModeSpec("cowprof", "cowprof.gunicorn hook: warm-up, then prepare_fork",
                            "python:cowprof.gunicorn",
                            {"COWPROF_GUNICORN_CONFIG": conf, "COWPROF_WARMUP": _warmup_paths()},
                            prepare_report=True),
        "cowprof-no-warmup": ModeSpec("cowprof-no-warmup", "cowprof.gunicorn hook without warm-up",
                                      "python:cowprof.gunicorn",
                                      {"COWPROF_GUNICORN_CONFIG": conf, "COWPROF_WARMUP": ""},
                                      prepare_report=True),
        # 3.12: the workers version the functions made without one (as before cowprof.function_versions)
        "cowprof-no-function-versions": ModeSpec(
            "cowprof-no-function-versions", "cowprof.gunicorn hook with COWPROF_VERSION_FUNCTIONS=0",
            "python:cowprof.gunicorn",
            {"COWPROF_GUNICORN_CONFIG": conf, "COWPROF_WARMUP": _warmup_paths(), "COWPROF_VERSION_FUNCTIONS": "0"},
            prepare_report=True),
        # the hook as it was before the residue fixes: warm-up calls the app directly, no framework
        # steps, no hot code relocation, no allocator fill
        "cowprof-no-residue-fixes": ModeSpec(
            "cowprof-no-residue-fixes", "cowprof.gunicorn hook: warm-up, prepare_fork; no relocation, no fill",
            "python:cowprof.gunicorn",
            {"COWPROF_GUNICORN_CONFIG": conf, "COWPROF_WARMUP": _warmup_paths(), "COWPROF_WARMUP_FRAMEWORK": "0",
             "COWPROF_WARMUP_SERVER": "0", "COWPROF_RELOCATE_CODE": "0", "COWPROF_FILL_FREE_BLOCKS": "0"},
            prepare_report=True),
    }


DEFAULT_MODES = ("baseline", "gc-freeze", "cowprof")
#: the caller's COWPROF_* variables the servers keep: the directories cowprof writes into
KEPT_SETTINGS = ("COWPROF_HEAPMAP_DIR", "COWPROF_PRELOAD_DIR", "COWPROF_HELP_CACHE")


@dataclass
class ModeResult:
    """Everything measured for one mode."""

    mode: str
    description: str
    master_pid: int
    master_heap_bytes: int  # the master's anonymous RSS after the workers booted, before the load
    boot_seconds: float
    load: LoadResult
    pages: PageReport
    prepare: dict[str, Any] | None  # what the mode's when_ready wrote (COWPROF_PREPARE_REPORT)
    sample_info: dict[str, Any] | None
    log_path: str
    server_cpu_seconds: float = 0.0  # user + system CPU of the master and workers during the load
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        answered = sum(self.load.status.values())
        return 1000.0 * self.server_cpu_seconds / answered if answered else 0.0

    @property
    def copied(self) -> list[int]:
        return [w.copied_bytes for w in self.pages.workers]

    @property
    def copied_mean(self) -> float:
        return sum(self.copied) / len(self.copied) if self.copied else 0.0

    @property
    def copied_pct(self) -> float:
        return 100.0 * self.copied_mean / self.master_heap_bytes if self.master_heap_bytes else 0.0

    def mean(self, attr: str) -> float:
        ws = self.pages.workers
        return sum(getattr(w, attr) for w in ws) / len(ws) if ws else 0.0

    @property
    def total_pss(self) -> int:
        return self.pages.master.pss_bytes + sum(w.pss_bytes for w in self.pages.workers)

    @property
    def pss_ratio(self) -> float:
        return self.total_pss / self.pages.master.rss_bytes if self.pages.master.rss_bytes else 0.0

    @property
    def prepare_seconds(self) -> float | None:
        if not self.prepare:
            return None
        if "prepare" in self.prepare:  # cowprof's hook report
            return (self.prepare["prepare"] or {}).get("seconds")
        return self.prepare.get("seconds")  # the gc-freeze config

    @property
    def warmup_seconds(self) -> float | None:
        warm = (self.prepare or {}).get("warmup")
        return warm.get("seconds") if warm else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "description": self.description, "master_pid": self.master_pid,
            "master_heap_bytes": self.master_heap_bytes, "boot_seconds": self.boot_seconds,
            "summary": {"copied_mean_bytes": self.copied_mean, "copied_max_bytes": max(self.copied, default=0),
                        "copied_pct_of_master_heap": round(self.copied_pct, 3),
                        "shared_mean_bytes": self.mean("shared_bytes"), "new_mean_bytes": self.mean("new_bytes"),
                        "total_pss_bytes": self.total_pss, "pss_over_master_rss": round(self.pss_ratio, 4),
                        "rps": self.load.rps, "server_cpu_ms_per_request": round(self.cpu_ms_per_request, 4),
                        "prepare_seconds": self.prepare_seconds,
                        "warmup_seconds": self.warmup_seconds},
            "load": self.load.to_dict(), "prepare": self.prepare, "sample_info": self.sample_info,
            "pages": self.pages.to_dict(), "log": self.log_path, "extras": self.extras,
        }


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Column:
    """One table column: header, and the cell text for a mode's result."""

    header: str
    cell: Callable[[ModeResult], str]
    justify: str = "right"


def _mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def _seconds(s: float | None) -> str:
    return "—" if s is None else f"{s:.2f}"


COLUMNS: list[Column] = [
    Column("mode", lambda r: r.mode, "left"),
    Column("copied/worker\nMiB (max)", lambda r: f"{_mb(r.copied_mean)} ({_mb(max(r.copied, default=0))})"),
    Column("copied\n% master heap", lambda r: f"{r.copied_pct:.1f}%"),
    Column("shared/worker\nMiB", lambda r: _mb(r.mean("shared_bytes"))),
    Column("new/worker\nMiB", lambda r: _mb(r.mean("new_bytes"))),
    Column("total PSS\nMiB", lambda r: _mb(r.total_pss)),
    Column("PSS /\nmaster RSS", lambda r: f"{r.pss_ratio:.2f}×"),
    Column("req/s", lambda r: f"{r.load.rps:,.0f}"),
    Column("server CPU\nms/req", lambda r: f"{r.cpu_ms_per_request:.2f}"),
    Column("prepare\ns", lambda r: _seconds(r.prepare_seconds)),
    Column("warm-up\ns", lambda r: _seconds(r.warmup_seconds)),
    Column("top copied types\n(MiB, all workers)", lambda r: _top(r.extras.get("top_types")), "left"),
    Column("top causes\n(MiB, all workers)", lambda r: _top(r.extras.get("top_causes")), "left"),
]


def _top(items: Sequence[Sequence[Any]] | None) -> str:
    if not items:
        return "—"
    return "\n".join(f"{name} {_mb(b)}" for name, b in items)


def collect_attribution(result: ModeResult, tree: Tree) -> None:
    """Top three copied types and causes of a mode (needs the scan's copied addresses and the
    master's heap map; '—' in the table where either is missing)."""
    from cowprof import attribution, heapmap

    try:
        hm = heapmap.find_heapmap(tree.master)
        attr = attribution.attribute(result.pages, hm, causes=True)
    except (CowprofError, OSError) as err:
        result.extras["attribution_error"] = str(err)
        return
    result.extras["top_types"] = attr.total_types()[:3]
    result.extras["top_causes"] = (attr.total_causes() or [])[:3]
    if attr.causes_error:
        result.extras["attribution_error"] = attr.causes_error


def footer(results: Sequence[ModeResult], cfg: DemoConfig) -> str:
    """What the columns mean (printed under the table)."""
    heap = ", ".join(f"{r.mode} {_mb(r.master_heap_bytes)}" for r in results)
    rss = ", ".join(f"{r.mode} {_mb(r.pages.master.rss_bytes)}" for r in results)
    mode = results[0].pages.mode if results else "?"
    return (
        f"sample app: SAMPLE_APP_MB={cfg.heap_mb:g}, {cfg.workers} sync workers, {cfg.requests:,} identical "
        f"requests per mode ({cfg.concurrency} client threads, loopback, modes interleaved in batches of "
        f"{cfg.batch:,}), Python {sys.version.split()[0]}.\n"
        f"master heap = the master's anonymous resident memory (smaps_rollup 'Anonymous') after the workers "
        f"booted, before the load, MiB: {heap}.\n"
        f"copied = worker pages that were the master's and are now the worker's own copy (mean over workers, "
        f"max in parentheses); shared = still shared; new = allocated after fork; page mode: {mode}.\n"
        f"total PSS = master + all workers, after the load; master RSS MiB: {rss}.\n"
        f"req/s = answered requests / wall time of the load (sensitive to anything else running on the "
        f"machine); server CPU = user+system CPU time of master and workers during the load per request.\n"
        f"prepare = time of gc.freeze() or cowprof.prepare_fork() in when_ready; warm-up = the in-process "
        f"requests cowprof's hook made before it.\n"
        f"top types/causes = copied bytes over all workers by Python type (heap map; 'no object' = allocator "
        f"headers, free blocks, objects created after fork) and by kind of write (page diff against the "
        f"still-shared original; 'identical' = written then restored, i.e. transient refcount changes)."
    )


def build_table(results: Sequence[ModeResult], cfg: DemoConfig, columns: Sequence[Column] = COLUMNS) -> Table:
    """A Rich table with one row per mode."""
    from rich.table import Table

    table = Table(title="Copy-on-write after load: sample app under gunicorn", caption=footer(results, cfg),
                  caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col.header, justify=col.justify, no_wrap=i == 0)  # type: ignore[arg-type]
    for r in results:
        table.add_row(*(col.cell(r) for col in columns))
    return table


@dataclass(frozen=True)
class TargetCheck:
    name: str
    value: str
    passed: bool


def check_targets(results: Sequence[ModeResult]) -> list[TargetCheck]:
    """The issue's targets for the cowprof mode (only those whose modes ran)."""
    by = {r.mode: r for r in results}
    out: list[TargetCheck] = []
    cp = by.get("cowprof")
    if cp is None:
        return out
    out.append(TargetCheck(f"cowprof copies ≤ {TARGET_COPIED_PCT:g}% of the master heap per worker",
                           f"{cp.copied_pct:.2f}%", cp.copied_pct <= TARGET_COPIED_PCT))
    out.append(TargetCheck(f"cowprof total PSS ≤ {TARGET_PSS_RATIO:g}× master RSS", f"{cp.pss_ratio:.3f}×",
                           cp.pss_ratio <= TARGET_PSS_RATIO))
    base = by.get("baseline")
    if base is not None and base.load.rps > 0:
        ratio = cp.load.rps / base.load.rps
        out.append(TargetCheck(f"cowprof req/s ≥ {TARGET_RPS_RATIO:g}× baseline", f"{ratio:.3f}×",
                               ratio >= TARGET_RPS_RATIO))
    return out


# ------------------------------------------------------------------------------ running a mode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        return not procfs.read_stat(pid).zombie
    except CowprofError:
        return False


def _get_json(port: int, path: str, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class GunicornProcess:
    """A gunicorn master started for one mode; ``stop()`` ends it and its workers (by PID)."""

    def __init__(self, spec: ModeSpec, cfg: DemoConfig, port: int, log_path: Path,
                 report_path: Path | None) -> None:
        # the caller's cowprof settings would skew the comparison: only where cowprof keeps its files passes
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("COWPROF_", "SAMPLE_APP_")) or k in KEPT_SETTINGS}
        env.update(spec.env)
        env["SAMPLE_APP_MB"] = f"{cfg.heap_mb:g}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if report_path is not None:
            env["COWPROF_PREPARE_REPORT"] = str(report_path)
        cmd = [cfg.python, "-m", "gunicorn", "-c", spec.config, "--bind", f"127.0.0.1:{port}",
               "--workers", str(cfg.workers), "--worker-class", "sync"] + (["--preload"] if spec.preload else [])
        self.port = port
        self.workers: tuple[int, ...] = ()
        self._log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.log_path = log_path

    def wait_ready(self, workers: int, timeout: float) -> Tree:
        """Waits until the master has ``workers`` forked workers and answers /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CowprofError(f"gunicorn exited with status {self.proc.returncode} while starting; "
                                   f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}")
            try:
                tree = find_tree(self.pid)
            except CowprofError:
                tree = None
            if tree is not None and tree.master == self.pid and len(tree.workers) >= workers:
                self.workers = tree.workers
                if _get_json(self.port, "/health", timeout=2.0) is not None:
                    return tree
            time.sleep(0.2)
        raise CowprofError(f"gunicorn did not get {workers} workers ready within {timeout:g} s; "
                           f"see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the master (graceful), SIGKILL after ``timeout``; then any worker left over."""
        try:
            stop_master(self.proc, self.workers, timeout)
        finally:
            self._log.close()


def stop_master(proc: subprocess.Popen[bytes], workers: Sequence[int], timeout: float = 30.0) -> None:
    """Stops a server master we started: SIGTERM (graceful), SIGKILL after ``timeout``; then SIGKILL
    to any of its ``workers`` still alive 5 s later (they normally exit with their master)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in workers:
        end = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tree_cpu_seconds(tree: Tree) -> float:
    """User + system CPU seconds used so far by the master and the workers of ``tree``."""
    total = 0.0
    for pid in (tree.master, *tree.workers):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


@dataclass
class _Running:
    """A started mode, between boot and scan."""

    spec: ModeSpec
    server: GunicornProcess
    tree: Tree
    boot_seconds: float
    heap_bytes: int
    info: dict[str, Any] | None
    report_path: Path | None
    loads: list[LoadResult] = field(default_factory=list)
    cpu_seconds: float = 0.0
    done: int = 0


def _start(spec: ModeSpec, cfg: DemoConfig, out: Path) -> _Running:
    report_path = out / f"{spec.name}.prepare.json" if spec.prepare_report else None
    if report_path is not None and report_path.exists():
        report_path.unlink()
    started = time.monotonic()
    server = GunicornProcess(spec, cfg, free_port(), out / f"{spec.name}.log", report_path)
    try:
        tree = server.wait_ready(cfg.workers, cfg.boot_timeout)
        boot = time.monotonic() - started
        heap = procfs.read_smaps_rollup(tree.master).anonymous
        info = _get_json(server.port, "/info")
    except BaseException:
        server.stop()
        raise
    return _Running(spec, server, tree, round(boot, 2), heap, info, report_path)


def split_batches(count: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds cutting ``count`` items into near-equal batches of at most ``size``."""
    n = max(1, -(-count // size))
    bounds = [round(i * count / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def _finish(run: _Running, cfg: DemoConfig, collect: Callable[[ModeResult, Tree], None] | None,
            keep_addresses: bool) -> ModeResult:
    server, mode = run.server, run.spec.name
    tree = find_tree(server.pid)
    if tree.workers != run.tree.workers:
        raise ProcessGone(server.pid, f"{mode}: workers changed during the load "
                                      f"({run.tree.workers} -> {tree.workers}); see {server.log_path}")
    pages = scan(tree, keep_addresses=keep_addresses)
    prepare = None
    if run.report_path is not None and run.report_path.exists():
        prepare = json.loads(run.report_path.read_text())
    result = ModeResult(mode, run.spec.description, server.pid, run.heap_bytes, run.boot_seconds,
                        merge_results(run.loads), pages, prepare, run.info, str(server.log_path),
                        round(run.cpu_seconds, 3))
    if collect is not None:
        collect(result, tree)
    return result


def run_modes(modes: Sequence[str], cfg: DemoConfig, paths: Sequence[str], *,
              progress: Callable[[str, str, int, int], None] | None = None,
              collect: Callable[[ModeResult, Tree], None] | None = None,
              keep_addresses: bool = False) -> list[ModeResult]:
    """Starts one gunicorn per mode, sends each the same ``paths``, scans the pages, stops them.

    All the modes' servers run side by side and the load is sent in interleaved batches of
    ``cfg.batch`` requests (mode order rotating per batch), so that anything else running on the
    machine slows every mode alike and requests/s stay comparable. Only one server is under load at a
    time; the idle ones only wake up for gunicorn's heartbeat. ``progress(mode, phase, done, total)``
    reports each step. ``collect(result, tree)`` runs after a mode's scan while its workers are still
    alive: the place to add per-mode data (into ``result.extras``) for extra columns. Each result is
    also written to ``cfg.out_dir/<mode>.json``.
    """
    specs = mode_specs()
    unknown = [m for m in modes if m not in specs]
    if unknown or not modes:
        raise BadInput(f"unknown demo mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(specs)}")
    note = progress or (lambda mode, phase, done, total: None)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    running: list[_Running] = []
    results: list[ModeResult] = []
    try:
        for mode in modes:
            note(mode, f"starting gunicorn (building the {cfg.heap_mb:g} MB heap)", 0, len(paths))
            running.append(_start(specs[mode], cfg, out))
            note(mode, "ready", 0, len(paths))
        batches = split_batches(len(paths), cfg.batch)
        per_batch_deadline = max(1.0, cfg.load_deadline / len(batches))
        for i, (lo, hi) in enumerate(batches):
            for k in range(len(running)):
                run = running[(i + k) % len(running)]
                mode = run.spec.name
                before = tree_cpu_seconds(run.tree)

                def on_progress(d: int, t: int, _r: _Running = run, _m: str = mode) -> None:
                    note(_m, "load", _r.done + d, len(paths))

                load = run_load("127.0.0.1", run.server.port, paths[lo:hi], concurrency=cfg.concurrency,
                                deadline=per_batch_deadline, timeout=cfg.request_timeout, on_progress=on_progress)
                run.cpu_seconds += tree_cpu_seconds(run.tree) - before
                run.loads.append(load)
                run.done += hi - lo
        for run in running:
            note(run.spec.name, "scanning pages", len(paths), len(paths))
            result = _finish(run, cfg, collect, keep_addresses)
            results.append(result)
            (out / f"{result.mode}.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    finally:
        for run in running:
            note(run.spec.name, "stopping gunicorn", run.done, len(paths))
            run.server.stop()
            note(run.spec.name, "done", run.done, len(paths))
    return results


def run_mode(mode: str, cfg: DemoConfig, paths: Sequence[str], **kwargs: Any) -> ModeResult:
    """:func:`run_modes` for one mode."""
    return run_modes([mode], cfg, paths, **kwargs)[0]


# ------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"small and fast: {QUICK.heap_mb:g} MB heap, {QUICK.workers} workers, "
                        f"{QUICK.requests:,} requests (for development)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma-separated, from: {', '.join(mode_specs())} (default: %(default)s)")
    p.add_argument("--heap-mb", type=float, help="sample heap size (SAMPLE_APP_MB)")
    p.add_argument("--workers", type=int)
    p.add_argument("--requests", type=int)
    p.add_argument("--concurrency", type=int, help="client threads")
    p.add_argument("--out", type=Path, help="output directory (default: demo-out/ in the repo)")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    cfg = QUICK if args.quick else DemoConfig()
    for name, attr in (("heap_mb", "heap_mb"), ("workers", "workers"), ("requests", "requests"),
                       ("concurrency", "concurrency"), ("out", "out_dir")):
        value = getattr(args, name)
        if value is not None:
            cfg = replace(cfg, **{attr: value})
    if cfg.heap_mb <= 0 or cfg.workers < 1 or cfg.requests < 1 or cfg.concurrency < 1:
        raise BadInput("--heap-mb, --workers, --requests and --concurrency must be positive")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # piped output (CI logs, tee) gets a fixed width instead of Rich's 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=150)
    try:
        args = _parser().parse_args(argv)
        cfg = config_from_args(args)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if len(set(modes)) != len(modes):
            raise BadInput(f"--modes lists a mode twice: {args.modes}")
        unknown = [m for m in modes if m not in mode_specs()]
        if unknown or not modes:
            raise BadInput(f"unknown demo mode(s) {', '.join(unknown) or '(none)'}; "
                           f"choose from {', '.join(mode_specs())}")
        paths = sample_request_paths(cfg.requests, seed=cfg.seed)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as bar:
            tasks = {m: bar.add_task(f"{m}: waiting", total=len(paths)) for m in modes}

            def note(mode: str, phase: str, done: int, total: int) -> None:
                bar.update(tasks[mode], description=f"{mode}: {phase}", completed=done, total=total)

            results = run_modes(modes, cfg, paths, progress=note, collect=collect_attribution,
                                keep_addresses=True)
    except CowprofError as err:
        console.print(f"[red]demo: {err}[/red]", highlight=False)
        return err.exit_code
    except KeyboardInterrupt:
        console.print("demo: interrupted")
        return 130

    table = build_table(results, cfg)
    console.print(table)
    checks = check_targets(results)
    if checks and cfg.heap_mb < DemoConfig.heap_mb:
        console.print(f"  targets are set for the full-size demo ({DemoConfig.heap_mb:g} MB): a worker's fixed "
                      f"copy cost (~2 MB) weighs more on a {cfg.heap_mb:g} MB heap", highlight=False)
    for c in checks:
        console.print(f"  {'[green]✓[/green]' if c.passed else '[red]✗[/red]'} {c.name}: {c.value}",
                      highlight=False)
    for r in results:
        if r.load.errors or r.load.ok != r.load.requested:
            console.print(f"  [yellow]note[/yellow]: {r.mode}: {r.load.ok:,} of {r.load.requested:,} requests "
                          f"answered 2xx, {r.load.errors} errors ({r.load.first_error})", highlight=False)
    out = Path(cfg.out_dir)
    text = Console(width=160, record=True, file=io.StringIO())
    text.print(table)
    for c in checks:
        text.print(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.value}", highlight=False)
    (out / "table.txt").write_text(text.export_text())
    (out / "summary.json").write_text(json.dumps({
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "python": sys.version.split()[0],
        "modes": [dict(r.to_dict()["summary"], mode=r.mode, master_heap_bytes=r.master_heap_bytes)
                  for r in results],
        "targets": [asdict(c) for c in checks],
    }, indent=2))
    console.print(f"JSON per mode, logs and this table: {out}/", highlight=False)
    return 1 if args.check and not all(c.passed for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
