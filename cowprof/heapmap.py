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

The directory is private and proven so before anything is written (:func:`_open_dir`): missing
components are created 0700, the directory is opened without following a symlink and must be ours
and writable by nobody else (else BadInput: ``prepare_fork`` warns and skips the map); a directory
cowprof did not create is never changed. Files are created, renamed and removed relative to its
descriptor; cleanup removes only provable maps of ours; readers take regular files only and never
follow a symlink. A segment that cannot be read is :class:`CorruptHeapMap`, never "no map".
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
import struct
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cowprof import untrusted
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
_WRITING_NAME = re.compile(r"^heapmap-(\d+)\.(\d+)\.hmap\.writing$")
_MAX_META = 64 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# a reader never blocks on a FIFO planted under a map's name, nor follows a symlink
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class CorruptHeapMap(BadInput):
    """A heap map file that cannot be read: truncated, garbled, or of another format."""


def default_directory() -> str:
    """$COWPROF_HEAPMAP_DIR, else $XDG_RUNTIME_DIR/cowprof, else ~/.cache/cowprof/heapmaps."""
    if os.environ.get(DIR_ENV):
        return os.environ[DIR_ENV]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "cowprof")
    return os.path.join(os.path.expanduser("~"), ".cache", "cowprof", "heapmaps")


def _refuse(directory: str, why: str) -> BadInput:
    return BadInput(f"heap map directory {directory} {why}: not using it")


def _open_dir(directory: str, *, create: bool) -> int:
    """A descriptor of ``directory`` once it is proven private: a real directory (not a symlink),
    owned by us, that neither group nor others may write to. With ``create``, each missing
    component is made here with mode 0700, whatever the umask; an existing directory is never
    changed. BadInput (or OSError) when it cannot be used."""
    path = os.path.abspath(directory)
    head, names = path, []
    while head != os.path.dirname(head):  # up to the deepest component that exists
        try:
            os.lstat(head)
            break
        except FileNotFoundError:
            if not create:
                raise BadInput(f"heap map directory {directory} does not exist") from None
            head, name = os.path.split(head)
            names.append(name)
    names.reverse()
    missing = bool(names)  # then every name is created here
    if not names:  # it exists: open its parent (symlinks above it are followed), then it
        head, last = os.path.split(path)
        names = [last] if last else []
    fd = os.open(head, _O_DIR)
    try:
        for name in names:
            made = False
            if missing:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:  # created meanwhile by someone: checked like any other
                    pass
            try:
                sub = os.open(name, _O_DIR | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise _refuse(directory, f"has a symbolic link at {name!r}") from None
                raise
            os.close(fd)
            fd = sub
            if made and stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
                os.fchmod(fd, 0o700)  # ours, just made: a umask such as 0o700 must not leave it unusable
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise _refuse(directory, f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
        if st.st_mode & 0o022:
            raise _refuse(directory, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _private_dir(directory: str, *, create: bool = True) -> Iterator[int]:
    fd = _open_dir(directory, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def path_for(pid: int, directory: str | None = None, seq: int = 0) -> str:
    """The file of segment ``seq`` of master ``pid``'s map."""
    return os.path.join(directory or default_directory(), f"heapmap-{pid}.{seq}{SUFFIX}")


def _segment_names(dir_fd: int | str, pid: int | None = None) -> list[tuple[int, int, str]]:
    """(pid, seq, name) of the complete segments in a directory (of master ``pid`` only when
    given) that are regular files, not symlinks, in (pid, seq) order."""
    found = []
    for name in os.listdir(dir_fd):
        m = _NAME.match(name)
        if m is None or (pid is not None and int(m.group(1)) != pid):
            continue
        try:
            if isinstance(dir_fd, int):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            else:
                st = os.lstat(os.path.join(dir_fd, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((int(m.group(1)), int(m.group(2)), name))
    return sorted(found)


def segment_paths(pid: int, directory: str | None = None) -> list[str]:
    """Complete segment files of master ``pid`` in ``directory``, oldest (lowest seq) first.
    Only regular files count: a symlink under a map's name is never followed."""
    directory = directory or default_directory()
    try:
        names = _segment_names(directory, pid)
    except OSError:
        return []
    return [os.path.join(directory, name) for _pid, _seq, name in names]


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


def preheader_sizes() -> tuple[int, int]:
    """(GC header size, managed dict/weakref pre-header size) of this interpreter, measured, not assumed."""
    import sys

    gc_head = sys.getsizeof([]) - [].__sizeof__()

    class _Probe:
        pass

    probe = _Probe()
    managed = sys.getsizeof(probe) - probe.__sizeof__() - gc_head
    return max(gc_head, 0), max(managed, 0)


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
        raise CorruptHeapMap(f"{path}: corrupt heap map layout")
    checked: dict[str, Any] = layout
    return checked


def _unlink_own(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the directory when it is one of our regular files (never a symlink,
    never another user's file)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _write(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


class Segment:
    """A segment file being written: ``<path>.writing`` (mode 0600) until :meth:`finish` renames it.

    Creating one opens (or creates) the private directory (see :func:`_open_dir`: BadInput when it
    is not private), removes the stale maps of dead masters there and, for a full map (seq 0),
    this master's older segments. Every file is created, renamed and removed relative to the
    directory's descriptor, never through a symlink. The records go to :attr:`fd` from offset 32 on."""

    def __init__(self, pid: int, directory: str | None = None, seq: int = 0):
        self.pid, self.seq = pid, seq
        directory = directory or default_directory()
        self.name = f"heapmap-{pid}.{seq}{SUFFIX}"
        self.path = os.path.join(directory, self.name)
        self.tmp = self.path + WRITING
        self.fd = -1
        self._dir = _open_dir(directory, create=True)
        try:
            if seq == 0:
                for _pid, _seq, old in _segment_names(self._dir, pid):
                    _unlink_own(self._dir, old)
            _remove_stale(self._dir)
            _unlink_own(self._dir, self.name + WRITING)
            self.fd = os.open(self.name + WRITING, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=self._dir)
            if stat.S_IMODE(os.fstat(self.fd).st_mode) != 0o600:  # ours, just made: the umask removed bits
                os.fchmod(self.fd, 0o600)
            os.lseek(self.fd, HEADER.size, os.SEEK_SET)
        except BaseException:
            self.abort()
            raise

    def finish(self, n_records: int, meta: bytes) -> str:
        """Append the metadata, write the header, rename into place; returns the final path."""
        try:
            _write(self.fd, meta)
            os.pwrite(self.fd, HEADER.pack(MAGIC, FORMAT_VERSION, len(meta), n_records, HEADER.size), 0)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.name + WRITING, self.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except BaseException:
            self.abort()
            raise
        self._close_dir()
        return self.path

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.name + WRITING, dir_fd=self._dir)
            except OSError:
                pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1


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
    writer leftovers older than an hour, from a private directory (BadInput when it is not one).
    Only what is provably one of our maps is removed: a regular file (not a symlink) that this
    user owns, named like a map, whose first bytes are a map header (or, for a leftover, the hole
    where the header goes). Returns what was removed."""
    directory = directory or default_directory()
    with _private_dir(directory, create=False) as fd:
        return [os.path.join(directory, name) for name in _remove_stale(fd, procfs_root)]


def _remove_stale(dir_fd: int, procfs_root: str = "/proc") -> list[str]:
    removed = []
    now = time.time()
    for name in os.listdir(dir_fd):
        writing = _WRITING_NAME.match(name) is not None
        if not writing and _NAME.match(name) is None:
            continue
        try:
            with _open_map(name, dir_fd, {os.geteuid()}) as f:
                st = os.fstat(f.fileno())
                head = f.read(8)
                if writing:
                    stale = head in (b"", bytes(8), MAGIC) and now - st.st_mtime > 3600
                elif head != MAGIC:
                    continue  # not provably a heap map: not ours to remove
                else:
                    f.seek(0)
                    try:
                        meta = _read_meta(f, name)[0]
                        stale = not _is_current(meta["pid"], meta["start_ticks"], meta["boot_id"], procfs_root)
                    except CorruptHeapMap:
                        stale = True
            if stale:
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
        except (OSError, BadInput):
            continue
    return removed


# ----------------------------------------------------------------------------------- reading


def _open_map(name: str, dir_fd: int | None, owners: Collection[int] | None) -> Any:
    """A map file opened for reading (binary file object) without following a symlink: a regular
    file owned by one of ``owners`` (anyone when None), else BadInput; OSError when it cannot be
    opened."""
    f = os.fdopen(os.open(name, _O_READ, dir_fd=dir_fd), "rb")
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode) or (owners is not None and st.st_uid not in owners):
        f.close()
        raise BadInput(f"{name}: not a regular file of ours" if stat.S_ISREG(st.st_mode)
                       else f"{name}: not a regular file")
    return f


def _check_meta(raw: Any) -> dict[str, Any]:
    """The metadata when it has the documented keys and types; ValueError otherwise."""
    meta = untrusted.obj(raw, "the metadata")
    untrusted.integer(meta, "pid", minimum=1)
    untrusted.integer(meta, "start_ticks", minimum=0)
    untrusted.string(meta, "boot_id")
    untrusted.number(meta, "created_at", optional=True)
    untrusted.integer(meta, "seq", minimum=0, optional=True)
    names = untrusted.string_list(meta, "type_names")
    pre = meta.get("type_preheader")
    if pre is not None and (not isinstance(pre, list) or len(pre) not in (0, len(names or ())) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255 for p in pre)):
        raise ValueError("'type_preheader' is not one byte per type")
    return meta


def _read_meta(f: Any, path: str) -> tuple[dict[str, Any], int, int]:
    """(metadata, number of records, records offset) of the segment open as ``f``; CorruptHeapMap
    if it is not one."""
    try:
        raw = f.read(HEADER.size)
        if len(raw) < HEADER.size or raw[:8] != MAGIC:
            raise CorruptHeapMap(f"{path}: not a cowprof heap map")
        _, version, meta_len, n, offset = HEADER.unpack(raw)
        if version != FORMAT_VERSION:
            raise CorruptHeapMap(f"{path}: heap map format {version} is not supported (this cowprof reads "
                                 f"{FORMAT_VERSION})")
        size = os.fstat(f.fileno()).st_size
        expected = offset + n * RECORD_SIZE + meta_len
        if offset < HEADER.size or meta_len > _MAX_META or size != expected:
            raise CorruptHeapMap(f"{path}: heap map is truncated or corrupt ({size} bytes, its header says "
                                 f"{expected})")
        f.seek(offset + n * RECORD_SIZE)
        meta = _check_meta(untrusted.loads(f.read(meta_len)))
    except CorruptHeapMap:
        raise
    except ValueError as exc:
        raise CorruptHeapMap(f"{path}: corrupt heap map metadata ({exc})") from None
    except OSError as exc:
        raise CorruptHeapMap(f"{path}: unreadable heap map ({exc.strerror or exc})") from None
    return meta, n, offset


def _read_segment(path: str, owners: Collection[int] | None = None) -> HeapMap:
    import numpy as np

    try:
        f = _open_map(path, None, owners)
    except OSError as exc:  # removed meanwhile (a new full map), a symlink swapped in, no access
        raise BadInput(f"{path}: cannot open it ({exc.strerror or exc})") from None
    with f:
        meta, n, offset = _read_meta(f, path)
        recs = np.empty(n, dtype=_RECORD_FIELDS)
        try:
            f.seek(offset)
            got = f.readinto(memoryview(recs).cast("B"))
        except OSError as exc:
            raise CorruptHeapMap(f"{path}: unreadable heap map ({exc.strerror or exc})") from None
    names = np.array(meta["type_names"] or [""], dtype=str)
    pre = np.array(meta.get("type_preheader") or [], dtype=np.uint8)
    if got != recs.nbytes or (n and int(recs["type"].max()) >= names.size):
        raise CorruptHeapMap(f"{path}: corrupt heap map records")
    return HeapMap(pid=meta["pid"], start_ticks=meta["start_ticks"], boot_id=meta["boot_id"],
                   created_at=float(meta.get("created_at") or 0.0), addr=recs["addr"], size=recs["size"],
                   type=recs["type"], type_names=names, type_preheader=pre,
                   layout=_checked_layout(path, meta.get("layout")))


def read(path: str) -> HeapMap:
    """Read one saved segment, sorted by address; a file that is not one gives CorruptHeapMap
    (a BadInput)."""
    return _sorted(_read_segment(path))


def load(pid: int, directory: str | None = None, procfs_root: str = "/proc",
         owners: Collection[int] | None = None) -> HeapMap | None:
    """The current heap map of master ``pid`` (all its segments merged), or None if there is none
    or it is stale. Segments owned by a user not in ``owners`` (when given) are ignored; a segment
    that cannot be read raises :class:`CorruptHeapMap`."""
    merged: HeapMap | None = None
    for path in segment_paths(pid, directory):
        try:
            seg = _read_segment(path, owners)
        except CorruptHeapMap:
            raise
        except BadInput:  # not a regular file, or someone else's: not a map of this master
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
    gc_head, managed = preheader_sizes()
    try:
        seg = Segment(os.getpid(), directory)
    except (OSError, BadInput):
        return None
    _, path = walk_into(seg, _native.walk, immortalize=False, gc_head=gc_head,
                        managed_preheader=managed, hash_strings=False, tag_types=False)
    return path
