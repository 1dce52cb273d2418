"""Test helper: kill a process the Nth time the profiler touches one of its /proc files.

``ProcTouches`` patches, for the duration of a ``with`` block in this (the profiler's) process, the
functions through which cowprof and psutil reach ``/proc``: ``open`` (builtins), ``os.open``,
``os.stat``, ``os.lstat``, ``os.readlink``, ``os.listdir``, ``os.scandir``, and ``os.preadv`` /
``os.pread`` on descriptors ``os.open`` returned. Every call on ``/proc/<pid>/<name>`` of a watched
PID is one *touch* of ``(pid, name)``; ``task/<tid>/...`` is counted as ``task/*/...``, the mapped
files opened through ``map_files/<range>`` and ``root/<path>`` (their addresses differ from tree to
tree) as ``map_files/*`` and ``root/*``, and the directory ``/proc/<pid>`` itself as ``""``.
Nothing in cowprof knows about it.

Recording (no ``kill``): ``touches`` lists every touch in order, e.g. to find the read points::

    with ProcTouches(watch={master: "master", worker: "worker"}) as t:
        main(["snapshot", str(master)])
    t.points()     # [("master", "stat", 3), ("master", "maps", 1), ...]: (role, name, how many)

Injecting: ``kill=("worker", "pagemap", 2, kill_fn)`` calls ``kill_fn()`` right before the 2nd touch
of the worker's ``pagemap`` (once), so that touch sees the process dead. ``kill_fn`` must SIGKILL
the process and wait until it is gone; it runs with the patches off.
"""
from __future__ import annotations

import builtins
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

_PROC = re.compile(r"^/proc/(\d+)(?:/(.*))?$")
_TASK = re.compile(r"^task/\d+(/.*)?$")


class ProcTouches:
    """Counts the touches of watched PIDs' /proc files; optionally kills at one of them."""

    def __init__(self, watch: dict[int, str],
                 kill: tuple[str, str, int, Callable[[], None]] | None = None) -> None:
        self.watch = watch
        self.kill = kill
        self.killed = False
        self.touches: list[tuple[str, str]] = []
        self._seen: Counter[tuple[str, str]] = Counter()
        self._fds: dict[int, tuple[str, str]] = {}
        self._saved: dict[tuple[Any, str], Any] = {}
        self._busy = False

    # -- which file, and what to do before touching it --------------------------------------
    def _key(self, path: Any) -> tuple[str, str] | None:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            return None
        m = _PROC.match(os.path.normpath(path))
        if m is None or int(m[1]) not in self.watch:
            return None
        name = m[2] or ""
        t = _TASK.match(name)
        if t is not None:
            name = "task/*" + (t[1] or "")
        elif name.startswith(("map_files/", "root/")):
            name = name.split("/", 1)[0] + "/*"
        return self.watch[int(m[1])], name

    def _touch(self, key: tuple[str, str] | None) -> None:
        if key is None or self._busy:
            return
        self.touches.append(key)
        self._seen[key] += 1
        if self.kill is not None and not self.killed:
            role, name, nth, kill_fn = self.kill
            if key == (role, name) and self._seen[key] == nth:
                self.killed = True
                self._busy = True
                self.__exit__()
                try:
                    kill_fn()
                finally:
                    self.__enter__()
                    self._busy = False

    def points(self) -> list[tuple[str, str, int]]:
        """Every (role, file) touched, in first-touch order, with the number of touches."""
        return [(role, name, n) for (role, name), n in self._seen.items()]

    # -- the patches -------------------------------------------------------------------------
    def _wrap_path(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dir_fd") is None:
                self._touch(self._key(path))
            return fn(path, *args, **kwargs)
        return wrapper

    def _wrap_os_open(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            key = self._key(path) if kwargs.get("dir_fd") is None else None
            self._touch(key)
            fd = fn(path, *args, **kwargs)
            if key is not None:
                self._fds[fd] = key
            else:
                self._fds.pop(fd, None)
            return fd
        return wrapper

    def _wrap_fd(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int, *args: Any, **kwargs: Any) -> Any:
            self._touch(self._fds.get(fd))
            return fn(fd, *args, **kwargs)
        return wrapper

    def _wrap_close(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int) -> Any:
            self._fds.pop(fd, None)
            return fn(fd)
        return wrapper

    def __enter__(self) -> ProcTouches:
        patches = [(builtins, "open", self._wrap_path), (os, "open", self._wrap_os_open),
                   (os, "stat", self._wrap_path), (os, "lstat", self._wrap_path),
                   (os, "readlink", self._wrap_path), (os, "listdir", self._wrap_path),
                   (os, "scandir", self._wrap_path), (os, "preadv", self._wrap_fd),
                   (os, "pread", self._wrap_fd), (os, "close", self._wrap_close)]
        for mod, name, wrap in patches:
            original = getattr(mod, name)
            self._saved[(mod, name)] = original
            setattr(mod, name, wrap(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for (mod, name), original in self._saved.items():
            setattr(mod, name, original)
        self._saved.clear()
