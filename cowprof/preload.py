"""Learned preload: which modules the workers import after the fork, and importing them earlier.

A module first imported by a worker is loaded once per worker instead of once per host: its code,
its classes and everything its import builds are private to that worker. cowprof learns which
modules that happens to:

- in the master, :func:`record_master` (called by :func:`cowprof.prepare_fork`) writes
  ``master-<pid>.json`` (this app's key, the master's start time) into cowprof's private preload
  directory;
- in each worker, :func:`watch_imports` (called by :func:`cowprof.after_fork`) puts a finder first
  on ``sys.meta_path``. It is asked only about modules not yet in ``sys.modules`` and never finds
  anything itself; it appends the names that did get imported to
  ``imports-<master pid>-<worker pid>.txt`` (a name is written at the worker's next import or at
  its exit, once it is in ``sys.modules``; failed imports are never written);
- the profiler reads those files (:func:`late_imports`; ``cowprof snapshot`` lists them), read-only;
- in each worker, also at its exit: the code objects it wrote since the fork (their adaptive
  bytecode differs from the fingerprint :func:`record_master` took, :class:`cowprof.hotcode.
  Fingerprint`) to ``hotcode-<master pid>-<worker pid>.txt``; the next master's warm-up relocates
  them with those its own probe round finds (*learned hot code*: code only workers run, such as the
  server's worker loop, then sits on a few dense pages instead of one page each);
- with learned warm-up armed in the master (:func:`arm_path_learning`; gunicorn's hook does it for
  ``COWPROF_WARMUP=learned``), each worker also counts the paths of the GET requests it answered
  with a 2xx status (:func:`record_served`, from gunicorn's ``post_request``; the path only, never
  the query string) and writes them at its exit to ``paths-<master pid>-<worker pid>.txt``: the next
  master's warm-up requests the most frequent of them (three at most of each shape: paths alike but
  for their digits are one view), so that the views real traffic runs are
  specialized, and their lazy state built, once in the master instead of in every worker;
- the next master of the same app (:func:`learn`, also called by ``prepare_fork``) merges the files
  of masters that are gone into ``learned-<key>.json`` and removes them. With ``COWPROF_PRELOAD=learned``
  (opt-in: importing a module can have side effects) :func:`import_learned` imports the learned
  modules in the master before the warm-up, so the workers share them.

The app key is ``COWPROF_APP_KEY`` if set, else a hash of the working directory and the app's
identity (gunicorn: the app URI, e.g. ``mysite.wsgi:application``; elsewhere the command line).
The directory is ``COWPROF_PRELOAD_DIR``, else ``~/.cache/cowprof/preload``: a private directory
(:mod:`cowprof.privatedir`: made 0700, not used, with a warning, when it is reached through a
symbolic link, belongs to another user or others may write to it). Files are created 0600 and never
followed through symlinks.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Iterable
from typing import Any

from cowprof import privatedir, procfs
from cowprof._values import Frozen, Mutable, field
from cowprof.errors import CowprofError, ProcessGone

__all__ = ["ENV_DIR", "ENV_KEY", "ENV_PRELOAD", "LateImports", "app_key", "arm_path_learning", "directory",
           "import_learned", "late_imports", "learn", "preload_requested", "record_master", "record_served",
           "set_app_identity", "watch_imports"]

ENV_DIR = "COWPROF_PRELOAD_DIR"
ENV_KEY = "COWPROF_APP_KEY"
ENV_PRELOAD = "COWPROF_PRELOAD"
VERSION = 1
_IMPORTS = re.compile(r"^imports-(\d+)-(\d+)\.txt$")
_HOT_CODE = re.compile(r"^hotcode-(\d+)-(\d+)\.txt$")
#: the learned hot code list keeps at most this many code objects
_MAX_HOT_CODE = 50_000
_MASTER = re.compile(r"^master-(\d+)\.json$")
_PATHS = re.compile(r"^paths-(\d+)-(\d+)\.txt$")
#: the learned warm-up keeps this many paths (the most frequent), a worker counts this many distinct ones
_MAX_PATHS, _MAX_SERVED = 64, 1024
#: what a learned path may look like: absolute, printable, no query, of a sane length
_SERVED_PATH = re.compile(r"/[!-~]{0,1023}")
#: the learned warm-up keeps at most this many paths of one shape (paths alike but for their digits)
_PER_SHAPE = 3
_DIGITS = re.compile(r"\d+")
_MAX_FILE = 4 << 20
#: a worker keeps at most this many names it saw asked for and not yet imported
_MAX_PENDING = 256
#: import records of gone masters of other apps are removed after this many seconds
_STALE_SECONDS = 30 * 86400

_state: dict[str, Any] = {
    "identity": None,  # set by the server hook: the app URI
    "recorded": None,  # (directory, master pid, key) once record_master ran in this process
    "fingerprint": None,  # cowprof.hotcode.Fingerprint taken by record_master, for the workers
    "learned": None,  # ((pid, directory, key), Learned) of this process's merge (see learn)
    "imported": (),  # modules import_learned imported in this process
    "failed": (),
    "learn_paths": False,  # arm_path_learning ran in this master: its workers count served paths
    "served": None,  # in such a worker: {path: count} of the GET requests answered with a 2xx status
}


def set_app_identity(identity: str | None) -> None:
    """What identifies the app for :func:`app_key` (gunicorn's hook sets the app URI)."""
    _state["identity"] = identity


def app_key() -> str:
    """This app's key: ``COWPROF_APP_KEY``, else a hash of the working directory and the identity."""
    if os.environ.get(ENV_KEY, "").strip():
        return re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ[ENV_KEY].strip())[:64]
    identity = _state["identity"] or "\0".join(sys.argv)
    return hashlib.sha256(f"{os.getcwd()}\0{identity}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def directory() -> str:
    """``COWPROF_PRELOAD_DIR``, else ``~/.cache/cowprof/preload``."""
    return os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "cowprof", "preload")


def _read_text(path: str) -> str | None:
    """A regular file's text, never through a symlink; None when missing or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _MAX_FILE).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _master_alive(meta: dict[str, Any], procfs_root: str = "/proc") -> bool:
    try:
        master = procfs.ProcessIdentity(int(meta["pid"]), int(meta["start_ticks"]), str(meta.get("boot_id", "")))
    except (KeyError, TypeError, ValueError):
        return False
    return master.is_current(procfs_root)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _read_own(dir_fd: int, name: str) -> str:
    """The text of a file of ours in the private directory; empty when it is missing or not ours."""
    data = privatedir.read_file(dir_fd, name, _MAX_FILE)
    return "" if data is None else data.decode("utf-8", "replace")


def _code_keys(text: str) -> list[tuple[str, int, str]]:
    """Lines ``filename<TAB>firstlineno<TAB>qualname`` of a hot code file."""
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].lstrip("-").isdigit():
            out.append((parts[0], int(parts[1]), parts[2]))
    return out


def _most_served(paths: dict[str, int]) -> dict[str, int]:
    """The most frequent paths, at most ``_PER_SHAPE`` of each shape (``/products/17/`` and
    ``/products/4/`` are one view: its digits do not matter), at most ``_MAX_PATHS`` in all."""
    out: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for path, count in sorted(paths.items(), key=lambda kv: (-kv[1], kv[0])):
        shape = _DIGITS.sub("#", path)
        if shapes.get(shape, 0) < _PER_SHAPE:
            shapes[shape] = shapes.get(shape, 0) + 1
            out[path] = count
            if len(out) == _MAX_PATHS:
                break
    return out


def _served_counts(text: str) -> list[tuple[str, int]]:
    """Lines ``count<TAB>path`` of a served-paths file (malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        count, _, path = line.partition("\t")
        if count.isdigit() and _SERVED_PATH.fullmatch(path):
            out.append((path, min(int(count), 1 << 40)))
    return out


def _module_names(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        name = line.strip()
        if name and not name.startswith("#") and re.fullmatch(r"[A-Za-z_][\w.]*", name):
            out.append(name)
    return out


# ---------------------------------------------------------------------------------- master side


class Learned(Frozen):
    """What :func:`learn` found for this app."""

    __slots__ = ()
    _fields = ("key", "modules", "error", "hot_code", "paths")

    def __new__(cls, key: str, modules: tuple[str, ...] = (), error: str | None = None,
                hot_code: tuple[tuple[str, int, str], ...] = (), paths: tuple[str, ...] = ()) -> Learned:
        return tuple.__new__(cls, (key, modules, error, hot_code, paths))

    key: str = field(0)
    modules: tuple[str, ...] = field(1, "Modules that workers of earlier masters of this app imported after the fork.")
    error: str | None = field(2)
    hot_code: tuple[tuple[str, int, str], ...] = field(
        3, "Code objects (filename, first line, qualname) those workers wrote: relocated by the next warm-up.")
    paths: tuple[str, ...] = field(
        4, "GET paths those workers answered with a 2xx status, most frequent first (learned warm-up).")


def learn(key: str | None = None) -> Learned:
    """Merges the import records of this app's earlier masters (gone now) into its learned list and
    removes their files; returns the learned list. Never raises: a problem is in ``error``.

    One master start asks up to three times (its learned warm-up paths, the warm-up's hot code, the
    import record): the merge runs once per process, directory and key, and a later call gets the
    same list (a failed merge is tried again)."""
    key = key or app_key()
    memo = (os.getpid(), os.path.abspath(directory()), key)
    if _state["learned"] is not None and _state["learned"][0] == memo:
        learned: Learned = _state["learned"][1]
        return learned
    learned = _merge(key)
    if learned.error is None:
        _state["learned"] = (memo, learned)
    return learned


def _merge(key: str) -> Learned:
    """:func:`learn`'s merge, each time it is called."""
    try:
        d = privatedir.open_dir(directory(), create=True)
    except OSError as err:
        return Learned(key, error=f"{type(err).__name__}: {err}")
    try:
        learned_name = f"learned-{key}.json"
        saved = json.loads(_read_own(d, learned_name) or "{}")
        modules = dict.fromkeys(str(m) for m in saved.get("modules", []))
        hot = dict.fromkeys((str(k[0]), int(k[1]), str(k[2])) for k in saved.get("hot_code", [])
                            if isinstance(k, list) and len(k) == 3)
        paths = {str(p): int(n) for p, n in (saved.get("paths") or {}).items() if _SERVED_PATH.fullmatch(str(p))}
        masters = {}
        for name in os.listdir(d):
            m = _MASTER.match(name)
            if m:
                try:
                    masters[int(m.group(1))] = json.loads(_read_own(d, name) or "{}")
                except ValueError:
                    masters[int(m.group(1))] = {}
        gone = {pid for pid, meta in masters.items() if pid != os.getpid() and not _master_alive(meta)}
        ours = {pid for pid in gone if masters[pid].get("key") == key}
        stale = {pid for pid in gone - ours
                 if time.time() - float(masters[pid].get("created_at", 0) or 0) > _STALE_SECONDS}
        changed = False
        for name in sorted(os.listdir(d)):
            m = _IMPORTS.match(name) or _HOT_CODE.match(name) or _PATHS.match(name)
            if not m or int(m.group(1)) not in ours | stale:
                continue
            if int(m.group(1)) in ours:
                text = _read_own(d, name)
                if name.startswith("imports-"):
                    for mod in _module_names(text):
                        changed |= mod not in modules
                        modules.setdefault(mod)
                elif name.startswith("paths-"):
                    for path, count in _served_counts(text):
                        paths[path] = paths.get(path, 0) + count
                        changed = True
                else:
                    for k in _code_keys(text):
                        if k not in hot and len(hot) < _MAX_HOT_CODE:
                            changed = True
                            hot.setdefault(k)
            _unlink(d, name)
        for pid in ours | stale:
            _unlink(d, f"master-{pid}.json")
        top = _most_served(paths)
        if changed:
            privatedir.write_file(d, learned_name, json.dumps(
                {"version": VERSION, "key": key, "updated_at": time.time(), "modules": sorted(modules),
                 "hot_code": sorted(hot), "paths": top}, indent=1).encode())
        return Learned(key, tuple(sorted(modules)), hot_code=tuple(sorted(hot)), paths=tuple(top))
    except (OSError, ValueError) as err:
        return Learned(key, error=f"{type(err).__name__}: {err}")
    finally:
        os.close(d)


def record_master(key: str | None = None) -> str | None:
    """Writes this master's record (so its workers' import files can be attributed to this app) and
    arms :func:`watch_imports` for the children forked after it. Returns an error, or None."""
    key = key or app_key()
    d = os.path.abspath(directory())
    try:
        pid = os.getpid()
        me = procfs.ProcessIdentity.read(pid)
        dir_fd = privatedir.open_dir(d, create=True)
        try:
            privatedir.write_file(dir_fd, f"master-{pid}.json", json.dumps({
                "version": VERSION, "pid": pid, "start_ticks": me.start_ticks, "boot_id": me.boot_id,
                "key": key, "created_at": time.time()}).encode())
        finally:
            os.close(dir_fd)
    except (OSError, CowprofError) as err:
        return f"{type(err).__name__}: {err}"
    _state["recorded"] = (d, pid, key)
    try:
        from cowprof import hotcode

        _state["fingerprint"] = hotcode.Fingerprint() if hotcode.unavailable() is None else None
    except Exception:  # noqa: BLE001 - learning is an optimisation; the fork must go on
        _state["fingerprint"] = None
    return None


def retake_fingerprint() -> None:
    """Hashes the fingerprint's code objects again (see :meth:`cowprof.hotcode.Fingerprint.retake`),
    when :func:`record_master` took one."""
    fingerprint = _state["fingerprint"]
    if fingerprint is not None:
        fingerprint.retake()


def preload_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether ``COWPROF_PRELOAD`` asks to import the learned modules (``learned`` or ``1``)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_PRELOAD, "").strip().lower() in ("learned", "1", "on", "yes", "true")


def import_learned(key: str | None = None, log: Any = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Imports the modules learned for this app (see :func:`learn`) in this process. Returns
    (imported, failed); a failing import is logged and skipped."""
    learned = learn(key)
    imported, failed = [], []
    for name in learned.modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException as exc:  # SystemExit from a module must not stop the server
            failed.append(name)
            if log is not None:
                log.warning("cowprof: learned preload of %s failed: %s: %s", name, type(exc).__name__, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
    _state["imported"], _state["failed"] = tuple(imported), tuple(failed)
    return _state["imported"], _state["failed"]


def preloaded() -> tuple[str, ...]:
    """The modules :func:`import_learned` imported in this process."""
    imported: tuple[str, ...] = _state["imported"]
    return imported


# ---------------------------------------------------------------------------------- worker side


class _LateImportRecorder:
    """A ``sys.meta_path`` finder that finds nothing and records the modules imported after it
    was installed (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.pending: list[str] = []
        self.written: set[str] = set()
        self.broken = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.flush()
        if name not in self.written:
            self.pending.append(name)
            if len(self.pending) > _MAX_PENDING:  # names whose import failed never leave the list
                del self.pending[0]
        return None

    def flush(self) -> None:
        if not self.pending or self.broken:
            return
        done = [n for n in self.pending if n in sys.modules and n not in self.written]
        if not done:
            return
        self.pending = [n for n in self.pending if n not in sys.modules]
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600)
            os.write(self.fd, ("".join(n + "\n" for n in done)).encode())
            self.written.update(done)
        except OSError:
            self.broken = True  # a full disk or a removed directory: stop recording, never fail an import


def watch_imports() -> bool:
    """In a worker forked after :func:`record_master`: starts recording late imports. Returns
    whether it did (False in any other process)."""
    rec = _state["recorded"]
    if rec is None or os.getpid() == rec[1]:
        return False
    d, master, _key = rec
    _state["recorded"] = None  # this worker's own children are not its workers
    for finder in sys.meta_path:
        if isinstance(finder, _LateImportRecorder):
            sys.meta_path.remove(finder)
    recorder = _LateImportRecorder(os.path.join(d, f"imports-{master}-{os.getpid()}.txt"))
    sys.meta_path.insert(0, recorder)
    atexit.register(recorder.flush)
    fingerprint = _state["fingerprint"]
    if fingerprint is not None:
        atexit.register(_record_hot_code, fingerprint, d, f"hotcode-{master}-{os.getpid()}.txt")
    if _state["learn_paths"]:
        _state["learn_paths"] = False  # this worker's own children serve nothing of the master's
        served: dict[str, int] = {}
        _state["served"] = served
        atexit.register(_record_served_paths, served, d, f"paths-{master}-{os.getpid()}.txt")
    return True


def arm_path_learning() -> None:
    """In the master, before it forks: its workers (see :func:`watch_imports`) count the paths of
    the GET requests they answer with a 2xx status (:func:`record_served`) and write them at exit."""
    _state["learn_paths"] = True


def record_served(method: str, path: str, status: int | None) -> None:
    """In a worker of a master that armed path learning: counts ``path`` (no query string) if the
    request was a GET answered with a 2xx status; does nothing anywhere else."""
    served = _state["served"]
    if served is None or method != "GET" or status is None or not 200 <= status < 300:
        return
    if path in served:
        served[path] += 1
    elif len(served) < _MAX_SERVED and _SERVED_PATH.fullmatch(path):
        served[path] = 1


def _write_at_exit(directory: str, name: str, text: str) -> None:
    """A worker's record, written at its exit into the private directory; nothing on failure."""
    if not text:
        return
    try:
        dir_fd = privatedir.open_dir(directory, create=False)
        try:
            privatedir.write_file(dir_fd, name, text.encode("utf-8", "surrogateescape"))
        finally:
            os.close(dir_fd)
    except Exception:  # noqa: BLE001 - never fail a worker's exit over a record
        pass


def _record_hot_code(fingerprint: Any, directory: str, name: str) -> None:
    """At a worker's exit: writes the code objects it wrote since the fork (one per line)."""
    try:
        keys = fingerprint.written()
    except Exception:  # noqa: BLE001 - never fail a worker's exit over diagnostics
        return
    _write_at_exit(directory, name, "".join(
        f"{f}\t{line}\t{q}\n" for f, line, q in keys if "\t" not in f + q and "\n" not in f + q))


def _record_served_paths(served: dict[str, int], directory: str, name: str) -> None:
    """At a worker's exit: writes the paths it counted (``count<TAB>path`` per line)."""
    _write_at_exit(directory, name, "".join(f"{n}\t{p}\n" for p, n in list(served.items())))


# ---------------------------------------------------------------------------------- profiler side


class LateImports(Mutable):
    """The late imports of one master's workers, as found by :func:`late_imports`."""

    __slots__ = ("master", "workers", "directory")
    _fields = __slots__

    def __init__(self, master: int, workers: dict[int, list[str]] | None = None,
                 directory: str | None = None) -> None:
        self.master = master
        self.workers: dict[int, list[str]] = {} if workers is None else workers
        self.directory = directory

    @property
    def modules(self) -> list[str]:
        """Every module some worker imported, sorted."""
        return sorted({m for mods in self.workers.values() for m in mods})

    def to_dict(self) -> dict[str, Any]:
        return {"master": self.master, "directory": self.directory, "modules": self.modules,
                "workers": {str(pid): mods for pid, mods in sorted(self.workers.items())}}


def _candidate_dirs(master: int, procfs_root: str) -> list[str]:
    """Ours, then the one the master's environment names. Raises ProcessGone when it is gone."""
    dirs = [directory()]
    env = procfs.readable_environ(master, procfs_root)
    if env is None:  # not allowed to read it: only our own directory is known
        return dirs
    if env.get(ENV_DIR):
        dirs.append(env[ENV_DIR])
    elif env.get("HOME"):
        dirs.append(os.path.join(env["HOME"], ".cache", "cowprof", "preload"))
    return list(dict.fromkeys(dirs))


def late_imports(master: int, workers: Iterable[int] | None = None, *, procfs_root: str = "/proc") -> LateImports:
    """The modules each worker of ``master`` imported after the fork, from the files the workers
    wrote (only files owned by us or by the master's user; read-only). ``workers`` limits the
    result to those PIDs. Raises ProcessGone when the master is gone (or a zombie)."""
    wanted = set(workers) if workers is not None else None
    result = LateImports(master)
    owner = procfs.owner(master, procfs_root)
    for d in _candidate_dirs(master, procfs_root):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            m = _IMPORTS.match(name)
            if not m or int(m.group(1)) != master:
                continue
            pid = int(m.group(2))
            if wanted is not None and pid not in wanted:
                continue
            path = os.path.join(d, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid not in (os.getuid(), owner):
                continue
            mods = _module_names(_read_text(path) or "")
            if mods:
                result.workers[pid] = mods
                result.directory = d
        if result.workers:
            break
    if procfs.read_stat(master, procfs_root).zombie:  # its environment said nothing: not its files either
        raise ProcessGone(master)
    return result
