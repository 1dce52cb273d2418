"""Heap maps: where each prepared object lives, and its type, saved by the master for the profiler.

``prepare_fork(heapmap=True)`` has the native walk record, for every object it visits, its address
range (GC/managed pre-header included) and type, plus the separately allocated buffers of lists,
sets and dicts. This module turns those records into numpy arrays sorted by address and saves them
as ``.npz`` (no pickle) with mode 0600 in a private per-user directory, keyed by the master's PID
and stamped with the master's start time and the boot id, so that a map whose PID was reused or
whose master restarted is recognised as stale and ignored.

Layout per object: address (uint64), size (uint32), type index (uint32) — 16 bytes. The master
saves the records as the walk produced them (no sort: it must get to fork quickly); ``read`` sorts.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

import numpy as np

from cowprof.errors import BadInput

FORMAT_VERSION = 1
RECORD_DTYPE = np.dtype([("addr", "<u8"), ("size", "<u4"), ("type", "<u4")])
DIR_ENV = "COWPROF_HEAPMAP_DIR"


def default_directory() -> str:
    """$COWPROF_HEAPMAP_DIR, else $XDG_RUNTIME_DIR/cowprof, else ~/.cache/cowprof/heapmaps."""
    if os.environ.get(DIR_ENV):
        return os.environ[DIR_ENV]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "cowprof")
    return os.path.join(os.path.expanduser("~"), ".cache", "cowprof", "heapmaps")


def _private_dir(directory: str) -> str:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid():
        raise BadInput(f"heap map directory {directory} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def path_for(pid: int, directory: str | None = None) -> str:
    return os.path.join(directory or default_directory(), f"heapmap-{pid}.npz")


def _boot_id(procfs_root: str = "/proc") -> str:
    try:
        with open(os.path.join(procfs_root, "sys/kernel/random/boot_id")) as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int, procfs_root: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if gone."""
    try:
        with open(os.path.join(procfs_root, str(pid), "stat"), "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[19])


def _type_name(tp: type) -> str:
    module = getattr(tp, "__module__", None)
    qualname = getattr(tp, "__qualname__", None) or getattr(tp, "__name__", "?")
    if not isinstance(qualname, str):
        qualname = "?"
    if module in (None, "builtins") or not isinstance(module, str):
        return qualname
    return f"{module}.{qualname}"


@dataclasses.dataclass
class HeapMap:
    """Object address ranges of one master, sorted by address."""

    pid: int
    start_ticks: int
    boot_id: str
    created_at: float
    addr: np.ndarray  # uint64, sorted
    size: np.ndarray  # uint32
    type: np.ndarray  # uint32 index into type_names
    type_names: np.ndarray  # str
    type_preheader: np.ndarray | None = None  # uint8 per type: bytes before the object in a record
    _records: np.ndarray | None = dataclasses.field(default=None, repr=False)  # raw, unsorted

    def __len__(self) -> int:
        return int(self.addr.size)

    @property
    def bytes(self) -> int:
        return int(self.size.sum(dtype=np.uint64))

    def is_current(self, procfs_root: str = "/proc") -> bool:
        """True while the master that wrote it is still the process with that PID."""
        return (process_start_ticks(self.pid, procfs_root) == self.start_ticks
                and (not self.boot_id or _boot_id(procfs_root) == self.boot_id))


def from_walk(walk: dict[str, Any], pid: int | None = None) -> HeapMap:
    """Wrap ``_native.walk(heapmap=True)``'s records without copying or sorting them: the master
    must get to fork quickly; readers sort (see ``read``)."""
    recs = np.frombuffer(walk["heapmap"], dtype=RECORD_DTYPE)
    names = np.array([_type_name(t) for t in walk["heapmap_types"]] or [""], dtype=str)
    pre = np.frombuffer(walk.get("heapmap_preheaders", b""), dtype=np.uint8).copy()
    if pre.size < names.size:
        pre = np.concatenate([pre, np.zeros(names.size - pre.size, dtype=np.uint8)])
    pid = os.getpid() if pid is None else pid
    return HeapMap(
        pid=pid, start_ticks=process_start_ticks(pid) or 0, boot_id=_boot_id(), created_at=time.time(),
        addr=recs["addr"], size=recs["size"], type=recs["type"], type_names=names, type_preheader=pre,
        _records=recs,
    )


def _sorted(hm: HeapMap) -> HeapMap:
    order = np.argsort(hm.addr, kind="stable")
    return dataclasses.replace(hm, addr=hm.addr[order], size=hm.size[order], type=hm.type[order], _records=None)


def _preheaders(hm: HeapMap) -> np.ndarray:
    if hm.type_preheader is not None and hm.type_preheader.size == hm.type_names.size:
        return hm.type_preheader
    return np.zeros(hm.type_names.size, dtype=np.uint8)


def merge_maps(old: HeapMap, new: HeapMap) -> HeapMap:
    """Records of both, sorted; where both have the same address the newer record wins."""
    names, first_of_name, inverse = np.unique(np.concatenate([old.type_names, new.type_names]),
                                              return_index=True, return_inverse=True)
    pre = np.concatenate([_preheaders(old), _preheaders(new)])[first_of_name]
    old_t = inverse[: old.type_names.size][old.type]
    new_t = inverse[old.type_names.size :][new.type]
    addr = np.concatenate([new.addr, old.addr])
    size = np.concatenate([new.size, old.size])
    typ = np.concatenate([new_t, old_t]).astype(np.uint32)
    addr_u, first = np.unique(addr, return_index=True)  # first occurrence = the newer record
    return dataclasses.replace(new, addr=addr_u, size=size[first], type=typ[first], type_names=names,
                               type_preheader=pre, _records=None)


def save(hm: HeapMap, directory: str | None = None) -> str:
    """Write atomically as ``heapmap-<pid>.npz`` with mode 0600; returns the path."""
    directory = _private_dir(directory or default_directory())
    path = path_for(hm.pid, directory)
    fd, tmp = tempfile.mkstemp(prefix=".heapmap-", suffix=".npz", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            records = hm._records
            if records is None:
                records = np.empty(hm.addr.size, dtype=RECORD_DTYPE)
                records["addr"], records["size"], records["type"] = hm.addr, hm.size, hm.type
            np.savez(
                f, version=np.array(FORMAT_VERSION), pid=np.array(hm.pid), start_ticks=np.array(hm.start_ticks),
                boot_id=np.array(hm.boot_id), created_at=np.array(hm.created_at), records=records,
                type_names=hm.type_names, type_preheader=_preheaders(hm),
            )
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read(path: str) -> HeapMap:
    """Read a saved map; a file that is not one gives BadInput."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise BadInput(f"{path}: heap map format {int(z['version'])} is not supported")
            recs = z["records"]
            if recs.dtype != RECORD_DTYPE:
                raise BadInput(f"{path}: unexpected heap map record layout")
            return _sorted(HeapMap(
                pid=int(z["pid"]), start_ticks=int(z["start_ticks"]), boot_id=str(z["boot_id"]),
                created_at=float(z["created_at"]), addr=recs["addr"], size=recs["size"], type=recs["type"],
                type_names=z["type_names"], type_preheader=z["type_preheader"],
            ))
    except BadInput:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"{path}: not a cowprof heap map ({exc.__class__.__name__})") from None


def load(pid: int, directory: str | None = None, procfs_root: str = "/proc") -> HeapMap | None:
    """The current heap map of master ``pid``, or None if there is none or it is stale."""
    path = path_for(pid, directory)
    if not os.path.exists(path):
        return None
    try:
        hm = read(path)
    except BadInput:
        return None
    return hm if hm.pid == pid and hm.is_current(procfs_root) else None


def save_from_walk(walk: dict[str, Any], directory: str | None = None, merge: bool = False) -> str:
    """Called by prepare_fork: build, merge with this master's previous map on a repeat call, save."""
    hm = from_walk(walk)
    if merge:
        old = load(hm.pid, directory)
        if old is not None:
            hm = merge_maps(old, hm)
    return save(hm, directory)


def record(directory: str | None = None) -> str | None:
    """Save a heap map of this process WITHOUT preparing it: no immortalization, no str hashing, no
    type tags, no gc.collect/freeze — for measuring an unprepared master (e.g. a baseline) by type.

    Slower than the walk of ``prepare_fork`` (a visited set instead of the refcount marks it).
    Returns the path, or None where the walk is unavailable (CPython < 3.12).
    """
    try:
        from cowprof import _native
    except ImportError:
        return None
    if not hasattr(_native, "walk"):
        return None
    from cowprof.prepare import _preheader_sizes

    gc_head, managed = _preheader_sizes()
    walk = _native.walk(immortalize=False, heapmap=True, gc_head=gc_head, managed_preheader=managed,
                        hash_strings=False, tag_types=False)
    return save(from_walk(walk), directory)
