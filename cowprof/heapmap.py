"""Heap maps: where each prepared object lives, and its type, saved by the master for the profiler.

``prepare_fork(heapmap=True)`` has the native walk record, for every object it visits, its address
range (GC/managed pre-header included) and type, plus the separately allocated buffers of lists,
sets and dicts. The records are saved in a private per-user directory, keyed by the master's PID and
stamped with the master's start time and the boot id, so that a map whose PID was reused or whose
master restarted is recognised as stale and ignored (and removed by the next save there).

File format (version 2, little-endian, no pickle): a 32-byte header ``<8sIIQQ`` (magic
``b"cowprfHM"``, format version, length of the metadata, number of records, offset of the
records = 32), the records — address (uint64), size (uint32), type index (uint32), 16 bytes each,
in the order the walk produced them (``read`` sorts) — then the metadata as UTF-8 JSON (pid,
start_ticks, boot_id, created_at, seq, type_names, type_preheader). A file whose size is not
exactly what its header says is truncated and rejected.

Segments: ``prepare_fork`` writes ``heapmap-<pid>.<seq>.hmap``; a full walk writes segment 0 and
removes the master's older segments, a repeat call (which walks only the objects created since)
writes the next segment. ``load`` merges a master's segments (the newer record wins).

The walk streams the records straight into ``<name>.writing`` (a writer thread in the native
module writes them on another core while the walk goes on); the metadata and header follow and the
file is renamed into place, so a reader sees a map complete or not at all.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import struct
import time
from typing import TYPE_CHECKING, Any

from cowprof.errors import BadInput

if TYPE_CHECKING:
    import numpy as np

# numpy is imported only to read maps: saving one (what the master does) must not load numpy and
# its BLAS threads into a server that does not use them.

FORMAT_VERSION = 2
MAGIC = b"cowprfHM"
HEADER = struct.Struct("<8sIIQQ")  # magic, version, metadata length, records, records offset
RECORD_SIZE = 16  # <u8 address, <u4 size, <u4 type index
_RECORD_FIELDS = [("addr", "<u8"), ("size", "<u4"), ("type", "<u4")]
DIR_ENV = "COWPROF_HEAPMAP_DIR"
SUFFIX = ".hmap"
WRITING = ".writing"  # appended to a segment's name until it is complete
_NAME = re.compile(r"^heapmap-(\d+)\.(\d+)\.hmap$")
_MAX_META = 64 << 20


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


def path_for(pid: int, directory: str | None = None, seq: int = 0) -> str:
    """The file of segment ``seq`` of master ``pid``'s map."""
    return os.path.join(directory or default_directory(), f"heapmap-{pid}.{seq}{SUFFIX}")


def segment_paths(pid: int, directory: str | None = None) -> list[str]:
    """Complete segment files of master ``pid`` in ``directory``, oldest (lowest seq) first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory or default_directory()), f"heapmap-{pid}.*{SUFFIX}")):
        m = _NAME.match(os.path.basename(path))
        if m and int(m.group(1)) == pid:
            found.append((int(m.group(2)), path))
    return [p for _, p in sorted(found)]


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
    layout: dict[str, Any] | None = None  # the master's object layout (see object_layout); None in old maps

    def __len__(self) -> int:
        return int(self.addr.size)

    @property
    def bytes(self) -> int:
        import numpy as np

        return int(self.size.sum(dtype=np.uint64))

    def is_current(self, procfs_root: str = "/proc") -> bool:
        """True while the master that wrote it is still the process with that PID."""
        return _is_current(self.pid, self.start_ticks, self.boot_id, procfs_root)


def _is_current(pid: int, start_ticks: int, boot_id: str, procfs_root: str = "/proc") -> bool:
    return (process_start_ticks(pid, procfs_root) == start_ticks
            and (not boot_id or _boot_id(procfs_root) == boot_id))


def _sorted(hm: HeapMap) -> HeapMap:
    import numpy as np

    order = np.argsort(hm.addr, kind="stable")
    return dataclasses.replace(hm, addr=hm.addr[order], size=hm.size[order], type=hm.type[order])


def _preheaders(hm: HeapMap) -> np.ndarray:
    import numpy as np

    if hm.type_preheader is not None and hm.type_preheader.size == hm.type_names.size:
        return np.asarray(hm.type_preheader, dtype=np.uint8)
    return np.zeros(hm.type_names.size, dtype=np.uint8)


def merge_maps(old: HeapMap, new: HeapMap) -> HeapMap:
    """Records of both, sorted; where both have the same address the newer record wins."""
    import numpy as np

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
                               type_preheader=pre)


# ----------------------------------------------------------------------------------- writing


#: what a map without a ``layout`` (written before it was recorded: 64-bit CPython 3.12/3.13) means
DEFAULT_LAYOUT: dict[str, Any] = {"refcount_offset": 0, "refcount_size": 8, "str_hash_offset": 24,
                                  "gc_head": 16, "block_align": 16, "basicsize": {}}
_LAYOUT_INTS = ("refcount_offset", "refcount_size", "str_hash_offset", "gc_head", "block_align")


def object_layout(gc_head: int, managed_preheader: int) -> dict[str, Any]:
    """The object layout of this interpreter that attribution needs to classify a changed word: the
    refcount word (on 3.14+ it also holds ob_overflow and ob_flags), the cached hash of a str, the GC
    header, the allocators' block alignment, and the basic sizes of the containers whose buffers the
    map records separately. From the headers the native module was compiled against and from
    measurements of the running interpreter, not from a table of versions."""
    import platform
    import sys

    from cowprof import _native

    info = _native.info()
    return {
        "python": platform.python_version(), "debug_build": bool(info["debug_build"]),
        "refcount_offset": int(info["refcount_offset"]), "refcount_size": int(info["refcount_size"]),
        "str_hash_offset": int(info["str_hash_offset"]), "type_offset": int(info["type_offset"]),
        "gc_head": gc_head, "managed_preheader": managed_preheader,
        "block_align": 16 if sys.maxsize > 2**32 else 8,
        "basicsize": {t.__name__: t.__basicsize__ for t in (list, dict, set, frozenset)},
    }


def _meta(pid: int, seq: int, type_names: list[str], type_preheader: list[int], start_ticks: int | None = None,
          boot_id: str | None = None, created_at: float | None = None,
          layout: dict[str, Any] | None = None) -> bytes:
    meta: dict[str, Any] = {
        "pid": pid,
        "start_ticks": (process_start_ticks(pid) or 0) if start_ticks is None else start_ticks,
        "boot_id": _boot_id() if boot_id is None else boot_id,
        "created_at": time.time() if created_at is None else created_at,
        "seq": seq, "type_names": type_names, "type_preheader": type_preheader,
        "record": "addr <u8, size <u4, type <u4",
    }
    if layout is not None:
        meta["layout"] = layout
    return json.dumps(meta, separators=(",", ":")).encode()


def _checked_layout(path: str, layout: Any) -> dict[str, Any] | None:
    """A map's layout, validated (None when the map has none)."""
    if layout is None:
        return None
    ok = isinstance(layout, dict) and all(
        isinstance(layout.get(k), int) and not isinstance(layout.get(k), bool) and 0 <= layout[k] <= 256
        for k in _LAYOUT_INTS) and isinstance(layout.get("basicsize", {}), dict)
    if not ok:
        raise BadInput(f"{path}: corrupt heap map layout")
    return layout


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


class Segment:
    """A segment file being written: ``<path>.writing`` (mode 0600) until :meth:`finish` renames it.

    Creating one removes the stale maps of dead masters in the directory and, for a full map
    (seq 0), this master's older segments. The records go to :attr:`fd` from offset 32 on."""

    def __init__(self, pid: int, directory: str | None = None, seq: int = 0):
        self.pid, self.seq = pid, seq
        directory = _private_dir(directory or default_directory())
        if seq == 0:
            for old in segment_paths(pid, directory):
                _unlink(old)
        remove_stale(directory)
        self.path = path_for(pid, directory, seq)
        self.tmp = self.path + WRITING
        _unlink(self.tmp)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.lseek(self.fd, HEADER.size, os.SEEK_SET)

    def finish(self, n_records: int, meta: bytes) -> str:
        """Append the metadata, write the header, rename into place; returns the final path."""
        try:
            _write(self.fd, meta)
            os.pwrite(self.fd, HEADER.pack(MAGIC, FORMAT_VERSION, len(meta), n_records, HEADER.size), 0)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _unlink(self.tmp)


def save(hm: HeapMap, directory: str | None = None, seq: int = 0) -> str:
    """Write ``hm`` as segment ``seq`` of its master's map (mode 0600); returns the path."""
    import numpy as np

    records = np.empty(hm.addr.size, dtype=_RECORD_FIELDS)
    records["addr"], records["size"], records["type"] = hm.addr, hm.size, hm.type
    seg = Segment(hm.pid, directory, seq)
    try:
        _write(seg.fd, records)
    except BaseException:
        seg.abort()
        raise
    return seg.finish(int(records.size), _meta(hm.pid, seq, [str(n) for n in hm.type_names],
                                               [int(p) for p in _preheaders(hm)], hm.start_ticks, hm.boot_id,
                                               hm.created_at, hm.layout))


def walk_into(seg: Segment, walk_fn: Any, **walk_kwargs: Any) -> tuple[dict[str, Any], str | None]:
    """Run ``walk_fn(heapmap_fd=seg.fd, **walk_kwargs)`` (``_native.walk``), which streams its records
    into the segment, and finish the segment. Returns (the walk's result, the saved path or None
    when writing failed: the walk itself still happened)."""
    try:
        walk = walk_fn(heapmap_fd=seg.fd, **walk_kwargs)
    except BaseException:
        seg.abort()
        raise
    if walk.get("heapmap_error") is not None:
        seg.abort()
        return walk, None
    types = walk.get("heapmap_types", ())
    pre = list(bytes(walk.get("heapmap_preheaders", b"")))
    pre += [0] * (len(types) - len(pre))
    try:
        layout = object_layout(int(walk_kwargs.get("gc_head", 16)), int(walk_kwargs.get("managed_preheader", 16)))
        path = seg.finish(int(walk["heapmap_records"]), _meta(seg.pid, seq=seg.seq,
                                                              type_names=[_type_name(t) for t in types],
                                                              type_preheader=pre, layout=layout))
    except OSError as exc:
        walk["heapmap_error"] = exc
        return walk, None
    return walk, path


def remove_stale(directory: str | None = None, procfs_root: str = "/proc") -> list[str]:
    """Remove the maps of masters that are gone (or whose PID now names another process), and
    writer leftovers older than an hour. Only files this user owns are touched. Returns what was removed."""
    directory = directory or default_directory()
    removed = []
    now = time.time()
    for path in glob.glob(os.path.join(glob.escape(directory), f"heapmap-*{SUFFIX}*")):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_uid != os.getuid():
            continue
        if path.endswith(WRITING):
            stale = now - st.st_mtime > 3600
        elif _NAME.match(os.path.basename(path)):
            try:
                meta = _read_meta(path)[0]
                stale = not _is_current(int(meta["pid"]), int(meta["start_ticks"]), str(meta["boot_id"]),
                                        procfs_root)
            except BadInput:
                stale = True
        else:
            continue
        if stale:
            _unlink(path)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------- reading


def _read_meta(path: str) -> tuple[dict[str, Any], int, int]:
    """(metadata, number of records, records offset) of a segment; BadInput if it is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
            if len(raw) < HEADER.size or raw[:8] != MAGIC:
                raise BadInput(f"{path}: not a cowprof heap map")
            _, version, meta_len, n, offset = HEADER.unpack(raw)
            if version != FORMAT_VERSION:
                raise BadInput(f"{path}: heap map format {version} is not supported (this cowprof reads "
                               f"{FORMAT_VERSION})")
            size = os.fstat(f.fileno()).st_size
            expected = offset + n * RECORD_SIZE + meta_len
            if offset < HEADER.size or meta_len > _MAX_META or size != expected:
                raise BadInput(f"{path}: heap map is truncated or corrupt ({size} bytes, its header says "
                               f"{expected})")
            f.seek(offset + n * RECORD_SIZE)
            meta = json.loads(f.read(meta_len))
    except BadInput:
        raise
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a cowprof heap map ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict) or not {"pid", "start_ticks", "boot_id", "type_names"} <= meta.keys():
        raise BadInput(f"{path}: heap map metadata is incomplete")
    return meta, n, offset


def _read_segment(path: str) -> HeapMap:
    import numpy as np

    meta, n, offset = _read_meta(path)
    try:
        recs = np.fromfile(path, dtype=_RECORD_FIELDS, count=n, offset=offset)
        names = np.array(meta["type_names"] or [""], dtype=str)
        pre = np.array(meta.get("type_preheader") or [], dtype=np.uint8)
        hm = HeapMap(pid=int(meta["pid"]), start_ticks=int(meta["start_ticks"]), boot_id=str(meta["boot_id"]),
                     created_at=float(meta.get("created_at", 0.0)), addr=recs["addr"], size=recs["size"],
                     type=recs["type"], type_names=names, type_preheader=pre,
                     layout=_checked_layout(path, meta.get("layout")))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInput(f"{path}: unreadable heap map ({exc.__class__.__name__})") from None
    if recs.size != n or (n and int(recs["type"].max()) >= names.size):
        raise BadInput(f"{path}: corrupt heap map records")
    return hm


def read(path: str) -> HeapMap:
    """Read one saved segment, sorted by address; a file that is not one gives BadInput."""
    return _sorted(_read_segment(path))


def load(pid: int, directory: str | None = None, procfs_root: str = "/proc") -> HeapMap | None:
    """The current heap map of master ``pid`` (all its segments merged), or None if there is none
    or it is stale."""
    merged: HeapMap | None = None
    for path in segment_paths(pid, directory):
        try:
            seg = _read_segment(path)
        except BadInput:
            continue
        if seg.pid != pid or not seg.is_current(procfs_root):
            continue
        merged = _sorted(seg) if merged is None else merge_maps(merged, seg)
    return merged


def record(directory: str | None = None) -> str | None:
    """Save a heap map of this process WITHOUT preparing it: no immortalization, no str hashing, no
    type tags, no gc.collect/freeze — for measuring an unprepared master (e.g. a baseline) by type.

    Slower than the walk of ``prepare_fork`` (a visited set instead of the refcount marks it).
    Returns the path, or None where the walk is unavailable (CPython < 3.12) or writing failed.
    """
    try:
        from cowprof import _native
    except ImportError:
        return None
    if not hasattr(_native, "walk"):
        return None
    from cowprof.prepare import _preheader_sizes

    gc_head, managed = _preheader_sizes()
    _, path = walk_into(Segment(os.getpid(), directory), _native.walk, immortalize=False, gc_head=gc_head,
                        managed_preheader=managed, hash_strings=False, tag_types=False)
    return path
