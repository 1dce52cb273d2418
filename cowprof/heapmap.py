"""Heap maps: where each prepared object lives, and its type, saved by the master for the profiler.

``prepare_fork(heapmap=True)`` has the native walk record, for every object it visits, its address
range (GC/managed pre-header included) and type, plus the separately allocated buffers of lists,
sets and dicts. The records are saved in a private per-user directory, keyed by the master's PID and
stamped with the master's start time and the boot id, so that a map whose PID was reused or whose
master restarted is recognised as stale and ignored (and removed by the next save there).

File format (little-endian, no pickle). A header: magic ``b"cowprfHM"``, format version, length of
the metadata, number of records, offset of the records (then, from version 3 on, their length in
bytes): ``<8sIIQQ`` (32 bytes) in version 2, ``<8sIIQQQ`` (40 bytes) in version 3. Then the records,
in the order the walk produced them (``read`` sorts), then the metadata as UTF-8 JSON (format, pid,
start_ticks, boot_id, created_at, seq, type_names, type_preheader, layout; type_size in version 3).
A file whose size is not exactly what its header says is truncated and rejected.

* Version 3 (written since issue 17; ~4 bytes a record instead of 16): chunks of at most 16,384
  records, each a 16-byte header ``<IIII`` (records, records with their own size, shift, types) and
  four streams of unsigned values: the zigzag-encoded delta of each record's address from the
  previous record's (across chunks; the first from 0) in units of ``1 << shift`` (the chunk's
  addresses and the previous one are all multiples of it); the chunk's types (type indexes, in order
  of first appearance); each record's type as ``position in that list << 1 | own``, where ``own``
  says the record's size differs from ``type_size[type]`` (the metadata's list, per type index: the
  size of the first record of that type); and the sizes of those records. A stream (patched frame of
  reference) is ``<BI`` (width, exceptions), each value's low ``width`` bytes, then ``<IQ`` (index,
  value) for each value that needs more; the writer picks the width that makes the stream shortest
  (judged on every 8th value of a stream longer than 1,024; any width reads the same).
  Decoded with numpy, a few array operations per chunk.
* Version 2: records of 16 bytes (address <u8, size <u4, type index <u4). Still read; written when
  ``COWPROF_HEAPMAP_FORMAT=2`` (for a profiler of an older cowprof, and as the peer in
  ``scripts/bench_prepare.py``).

Segments: ``prepare_fork`` writes ``heapmap-<pid>.<seq>.hmap``; a full walk writes segment 0 and
removes the master's older segments, a repeat call (which walks only the objects created since)
writes the next segment. ``load`` merges a master's segments (the newer record wins).

The walk streams the records straight into ``<name>.writing`` (a writer thread in the native
module encodes and writes them on another core while the walk goes on); the metadata and header
follow and the file is renamed into place, so a reader sees a map complete or not at all.

The directory is private and proven so before anything is written (:mod:`cowprof.privatedir`): missing
components are created 0700, the directory is opened without following a symlink and must be ours
and writable by nobody else (else BadInput: ``prepare_fork`` warns and skips the map); a directory
cowprof did not create is never changed. Files are created, renamed and removed relative to its
descriptor; cleanup removes only provable maps of ours; readers take regular files only and never
follow a symlink. A segment that cannot be read is :class:`CorruptHeapMap`, never "no map".
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import struct
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cowprof import privatedir, procfs, untrusted
from cowprof.errors import BadInput, CowprofError, ProcessGone

if TYPE_CHECKING:
    import numpy as np

# numpy is imported only to read maps: saving one (what the master does) must not load numpy and
# its BLAS threads into a server that does not use them.

FORMAT_VERSION = 3  # what is written unless COWPROF_HEAPMAP_FORMAT says otherwise
READ_FORMATS = (2, 3)
MAGIC = b"cowprfHM"
HEADER = struct.Struct("<8sIIQQ")  # magic, version, metadata length, records, records offset
HEADER_V3 = struct.Struct("<8sIIQQQ")  # ... and the records' length in bytes
RECORD_SIZE = 16  # version 2: <u8 address, <u4 size, <u4 type index
_RECORD_FIELDS = [("addr", "<u8"), ("size", "<u4"), ("type", "<u4")]
CHUNK = struct.Struct("<IIII")  # version 3: records, records with their own size, address shift, types
STREAM = struct.Struct("<BI")  # version 3: width in bytes, exceptions
_EXCEPTION = [("index", "<u4"), ("value", "<u8")]
CHUNK_RECORDS = 1 << 14  # records per chunk, as the native writer thread makes them
SAMPLE, SAMPLE_ALL = 8, 1024  # a stream's width is judged on every 8th value when it is longer than 1,024
DIR_ENV = "COWPROF_HEAPMAP_DIR"
FORMAT_ENV = "COWPROF_HEAPMAP_FORMAT"
SUFFIX = ".hmap"
WRITING = ".writing"  # appended to a segment's name until it is complete
_NAME = re.compile(r"^heapmap-(\d+)\.(\d+)\.hmap$")
_WRITING_NAME = re.compile(r"^heapmap-(\d+)\.(\d+)\.hmap\.writing$")
_MAX_META = 64 << 20
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


def _open_dir(directory: str, *, create: bool) -> int:
    """A descriptor of ``directory`` once it is proven private (:func:`cowprof.privatedir.open_dir`:
    missing components are made 0700 with ``create``, an existing directory is never changed).
    BadInput (or OSError) when it cannot be used."""
    try:
        return privatedir.open_dir(directory, create=create)
    except FileNotFoundError:
        if create:
            raise
        raise BadInput(f"heap map directory {directory} does not exist") from None
    except privatedir.NotPrivate as err:
        raise BadInput(f"heap map directory {directory} {err.why}: not using it") from None


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


def _identity(pid: int) -> procfs.ProcessIdentity:
    """Who writes a map: ``pid`` (this process) now; start ticks 0 if its stat cannot be read."""
    try:
        return procfs.ProcessIdentity.read(pid)
    except CowprofError:
        return procfs.ProcessIdentity(pid, 0, procfs.read_boot_id())


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
    format_version: int | None = None  # of the file it was read from (None: built in memory)

    def __len__(self) -> int:
        return int(self.addr.size)

    @property
    def bytes(self) -> int:
        import numpy as np

        return int(self.size.sum(dtype=np.uint64))

    @property
    def identity(self) -> procfs.ProcessIdentity:
        """The master that wrote it (the ``pid``, ``start_ticks`` and ``boot_id`` of the file)."""
        return procfs.ProcessIdentity(self.pid, self.start_ticks, self.boot_id)

    def is_current(self, procfs_root: str = "/proc") -> bool:
        """True while the master that wrote it is still the process with that PID (a zombie too:
        it keeps its start time)."""
        return self.identity.is_current(procfs_root)


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
          layout: dict[str, Any] | None = None, format_version: int = FORMAT_VERSION,
          type_size: list[int] | None = None) -> bytes:
    if start_ticks is None or boot_id is None:
        now = _identity(pid)
        start_ticks = now.start_ticks if start_ticks is None else start_ticks
        boot_id = now.boot_id if boot_id is None else boot_id
    meta: dict[str, Any] = {
        "format": format_version,
        "pid": pid,
        "start_ticks": start_ticks,
        "boot_id": boot_id,
        "created_at": time.time() if created_at is None else created_at,
        "seq": seq, "type_names": type_names, "type_preheader": type_preheader,
        "record": ("chunks of <u4 records, own sizes, shift, types> + streams (address delta, types, type, size)"
                   if format_version == 3 else "addr <u8, size <u4, type <u4"),
    }
    if format_version == 3:
        meta["type_size"] = list(type_size or [0] * len(type_names))
    if layout is not None:
        meta["layout"] = layout
    return json.dumps(meta, separators=(",", ":")).encode()


def write_format() -> int:
    """The format new maps are written in: $COWPROF_HEAPMAP_FORMAT (2 or 3), else FORMAT_VERSION."""
    value = os.environ.get(FORMAT_ENV, "").strip()
    if not value:
        return FORMAT_VERSION
    if value not in ("2", "3"):
        raise BadInput(f"{FORMAT_ENV}={value!r}: the heap map format must be 2 or 3")
    return int(value)


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
    directory's descriptor, never through a symlink. The records go to :attr:`fd` from
    :attr:`offset` on, in format :attr:`format_version` (``write_format()`` unless given)."""

    def __init__(self, pid: int, directory: str | None = None, seq: int = 0, format_version: int | None = None):
        self.pid, self.seq = pid, seq
        self.format_version = write_format() if format_version is None else format_version
        if self.format_version not in READ_FORMATS:
            raise BadInput(f"heap map format {self.format_version} cannot be written (formats {READ_FORMATS})")
        self.offset = HEADER_V3.size if self.format_version >= 3 else HEADER.size
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
            os.lseek(self.fd, self.offset, os.SEEK_SET)
        except BaseException:
            self.abort()
            raise

    def finish(self, n_records: int, meta: bytes) -> str:
        """Append the metadata after the records written so far, write the header, rename into
        place; returns the final path."""
        try:
            records_bytes = os.lseek(self.fd, 0, os.SEEK_CUR) - self.offset
            _write(self.fd, meta)
            if self.format_version >= 3:
                head = HEADER_V3.pack(MAGIC, self.format_version, len(meta), n_records, self.offset, records_bytes)
            else:
                head = HEADER.pack(MAGIC, self.format_version, len(meta), n_records, self.offset)
            os.pwrite(self.fd, head, 0)
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


def _byte_lengths(v: np.ndarray) -> np.ndarray:
    """Bytes each uint64 value needs (1..8)."""
    import numpy as np

    lens = np.ones(v.size, dtype=np.int64)
    for k in range(1, 8):
        lens += v >= np.uint64(1 << (8 * k))
    return lens


def _stream_bytes(values: np.ndarray) -> bytes:
    """One format 3 stream of uint64 ``values``: its width (the smallest of those that make it
    shortest, judged on every 8th value of a stream longer than 1,024, as the native writer
    does), the low bytes of each value, the exceptions (index, value) of those that need more."""
    import numpy as np

    v = np.ascontiguousarray(values, dtype="<u8")
    sample = v[::SAMPLE] if v.size > SAMPLE_ALL else v
    lens = _byte_lengths(sample)
    longer = np.bincount(lens, minlength=9)[::-1].cumsum()[::-1]  # longer[l]: sampled values of >= l bytes
    costs = [w * sample.size + 12 * int(longer[w + 1]) if w < 8 else 8 * sample.size for w in range(1, 9)]
    width = 1 + int(np.argmin(costs))
    exc = np.flatnonzero(v > np.uint64((1 << (8 * width)) - 1)) if width < 8 else np.zeros(0, dtype=np.intp)
    table = np.empty(exc.size, dtype=_EXCEPTION)
    table["index"], table["value"] = exc, v[exc]
    low = v.view(np.uint8).reshape(v.size, 8)[:, :width]
    return STREAM.pack(width, exc.size) + low.tobytes() + table.tobytes()


def encode_v3(addr: np.ndarray, size: np.ndarray, typ: np.ndarray,
              chunk_records: int = CHUNK_RECORDS) -> tuple[list[bytes], list[int]]:
    """Format 3 records (the chunks, as bytes) and its ``type_size`` list, for records in this order:
    what the native writer thread produces for the same records (byte for byte with the same chunks)."""
    import numpy as np

    addr = np.asarray(addr, dtype=np.uint64)
    size = np.asarray(size, dtype=np.uint32)
    typ = np.asarray(typ, dtype=np.uint32)
    type_size = np.zeros(int(typ.max()) + 1 if typ.size else 0, dtype=np.uint32)
    seen, first = np.unique(typ, return_index=True)
    type_size[seen] = size[first]
    own = size != type_size[typ]
    parts: list[bytes] = []
    prev = np.uint64(0)
    for c0 in range(0, addr.size, chunk_records):
        a = addr[c0:c0 + chunk_records]
        any_bits = int(np.bitwise_or.reduce(a, keepdims=True)[0]) | int(prev)
        shift = (any_bits & -any_bits).bit_length() - 1 if any_bits else 0
        prevs = np.concatenate([np.array([prev], dtype=np.uint64), a[:-1]])
        d = (a - prevs).view(np.int64) >> np.int64(shift)
        zz = (d.view(np.uint64) << np.uint64(1)) ^ (d >> np.int64(63)).view(np.uint64)
        o = own[c0:c0 + chunk_records]
        kinds, first_at, inverse = np.unique(typ[c0:c0 + chunk_records], return_index=True, return_inverse=True)
        order = np.argsort(first_at)  # the chunk's types in order of first appearance
        position = np.empty(order.size, dtype=np.uint64)
        position[order] = np.arange(order.size, dtype=np.uint64)
        parts += [CHUNK.pack(a.size, int(o.sum()), shift, kinds.size), _stream_bytes(zz),
                  _stream_bytes(kinds[order]), _stream_bytes((position[inverse.ravel()] << np.uint64(1)) | o),
                  _stream_bytes(size[c0:c0 + chunk_records][o])]
        prev = a[-1]
    return parts, [int(x) for x in type_size]


def save(hm: HeapMap, directory: str | None = None, seq: int = 0, format_version: int | None = None) -> str:
    """Write ``hm`` as segment ``seq`` of its master's map (mode 0600), in its records' order, in
    ``format_version`` (``write_format()`` unless given); returns the path."""
    import numpy as np

    seg = Segment(hm.pid, directory, seq, format_version)
    type_size = None
    try:
        if seg.format_version >= 3:
            parts, type_size = encode_v3(hm.addr, hm.size, hm.type)
            type_size += [0] * (hm.type_names.size - len(type_size))
            for part in parts:
                _write(seg.fd, part)
        else:
            records = np.empty(hm.addr.size, dtype=_RECORD_FIELDS)
            records["addr"], records["size"], records["type"] = hm.addr, hm.size, hm.type
            _write(seg.fd, records)
    except BaseException:
        seg.abort()
        raise
    return seg.finish(int(hm.addr.size), _meta(hm.pid, seq, [str(n) for n in hm.type_names],
                                               [int(p) for p in _preheaders(hm)], hm.start_ticks, hm.boot_id,
                                               hm.created_at, hm.layout, seg.format_version, type_size))


def walk_into(seg: Segment, walk_fn: Any, *, copy: Segment | None = None,
              **walk_kwargs: Any) -> tuple[dict[str, Any], str | None]:
    """Run ``walk_fn(heapmap_fd=seg.fd, heapmap_format=seg.format_version, **walk_kwargs)``
    (``_native.walk``), which streams its records into the segment, and finish the segment. With
    ``copy`` (a segment of format 2) the same walk's records also go there raw, finished likewise:
    one heap in both formats, for comparisons. Returns (the walk's result, the saved path or None
    when writing failed: the walk itself still happened)."""
    segments = [seg] if copy is None else [seg, copy]
    if copy is not None:
        if copy.format_version != 2:
            raise ValueError("the copy of a walk's heap map is written in format 2")
        walk_kwargs["heapmap_copy_fd"] = copy.fd
    try:
        walk = walk_fn(heapmap_fd=seg.fd, heapmap_format=seg.format_version, **walk_kwargs)
    except BaseException:
        for s in segments:
            s.abort()
        raise
    if walk.get("heapmap_error") is not None:
        for s in segments:
            s.abort()
        return walk, None
    types = walk.get("heapmap_types", ())
    pre = list(bytes(walk.get("heapmap_preheaders", b"")))
    pre += [0] * (len(types) - len(pre))
    raw_sizes = bytes(walk.get("heapmap_type_sizes", b""))
    type_size = list(struct.unpack(f"<{len(raw_sizes) // 4}I", raw_sizes[: len(raw_sizes) // 4 * 4]))
    type_size += [0] * (len(types) - len(type_size))
    paths = []
    try:
        layout = object_layout(int(walk_kwargs.get("gc_head", 16)), int(walk_kwargs.get("managed_preheader", 16)))
        names = [_type_name(t) for t in types]
        created = time.time()
        for s in segments:
            paths.append(s.finish(int(walk["heapmap_records"]), _meta(
                s.pid, seq=s.seq, type_names=names, type_preheader=pre, layout=layout, created_at=created,
                format_version=s.format_version, type_size=type_size)))
    except OSError as exc:
        for s in segments:
            s.abort()
        walk["heapmap_error"] = exc
        return walk, None
    return walk, paths[0]


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
                        stale = not procfs.ProcessIdentity(meta["pid"], meta["start_ticks"],
                                                           meta["boot_id"]).is_current(procfs_root)
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


def _check_meta(raw: Any, version: int) -> dict[str, Any]:
    """The metadata when it has the documented keys and types; ValueError otherwise."""
    meta = untrusted.obj(raw, "the metadata")
    fmt = untrusted.integer(meta, "format", optional=version == 2)  # maps written before it was recorded: 2
    if fmt is not None and fmt != version:
        raise ValueError(f"'format' {fmt} is not the header's {version}")
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
    if version >= 3:
        sizes = meta.get("type_size")
        if not isinstance(sizes, list) or len(sizes) != len(names or ()) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF for v in sizes):
            raise ValueError("'type_size' is not one size per type")
    return meta


@dataclasses.dataclass(frozen=True)
class Header:
    """What a segment's header says (``records_bytes``: computed for format 2)."""

    version: int
    meta_len: int
    records: int
    offset: int
    records_bytes: int


def parse_header(raw: bytes, path: str = "heap map", file_size: int | None = None) -> Header:
    """The header at the start of ``raw`` (at least 40 bytes, or the whole file); CorruptHeapMap when
    it is not one this cowprof reads, or (given ``file_size``) when the file's size is not what it says."""
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise CorruptHeapMap(f"{path}: not a cowprof heap map")
    _, version, meta_len, n, offset = HEADER.unpack_from(raw)
    if version not in READ_FORMATS:
        raise CorruptHeapMap(f"{path}: heap map format {version} is not supported (this cowprof reads "
                             f"{', '.join(map(str, READ_FORMATS))})")
    if version >= 3:
        if len(raw) < HEADER_V3.size:
            raise CorruptHeapMap(f"{path}: heap map is truncated or corrupt (no complete header)")
        records_bytes = HEADER_V3.unpack_from(raw)[5]
        least = HEADER_V3.size
    else:
        records_bytes, least = n * RECORD_SIZE, HEADER.size
    head = Header(version, meta_len, n, offset, records_bytes)
    expected = offset + records_bytes + meta_len
    if offset < least or meta_len > _MAX_META or (file_size is not None and file_size != expected):
        raise CorruptHeapMap(f"{path}: heap map is truncated or corrupt ({file_size} bytes, its header says "
                             f"{expected})")
    return head


def _read_meta(f: Any, path: str) -> tuple[dict[str, Any], Header]:
    """(metadata, header) of the segment open as ``f``; CorruptHeapMap if it is not one."""
    try:
        head = parse_header(f.read(HEADER_V3.size), path, os.fstat(f.fileno()).st_size)
        f.seek(head.offset + head.records_bytes)
        meta = _check_meta(untrusted.loads(f.read(head.meta_len)), head.version)
    except CorruptHeapMap:
        raise
    except ValueError as exc:
        raise CorruptHeapMap(f"{path}: corrupt heap map metadata ({exc})") from None
    except OSError as exc:
        raise CorruptHeapMap(f"{path}: unreadable heap map ({exc.strerror or exc})") from None
    return meta, head


def _read_stream(data: np.ndarray, pos: int, count: int, out: np.ndarray) -> int:
    """Decode the format 3 stream of ``count`` values at ``data[pos:]`` into ``out`` (uint64, that
    long); returns the position after it. ValueError when it does not fit or is malformed."""
    import numpy as np

    if pos + STREAM.size > data.size:
        raise ValueError("a stream header is cut short")
    width, exceptions = STREAM.unpack_from(data.data, pos)
    pos += STREAM.size
    end = pos + count * width
    stop = end + exceptions * 12
    if not 1 <= width <= 8 or exceptions > count or stop > data.size:
        raise ValueError("a stream does not fit")
    body = data[pos:end]
    if width in (1, 2, 4, 8):
        out[:] = body.view(f"<u{width}")
    else:
        padded = np.zeros((count, 8), dtype=np.uint8)
        padded[:, :width] = body.reshape(count, width)
        out[:] = padded.view("<u8").ravel()
    if exceptions:
        table = data[end:stop].view(_EXCEPTION)
        if int(np.max(table["index"])) >= count:
            raise ValueError("a stream's exception is out of range")
        out[table["index"]] = table["value"]
    return int(stop)


def _decode_v3(data: np.ndarray, n: int, type_size: np.ndarray, n_types: int) -> tuple[np.ndarray, ...]:
    """(addr, size, type) of format 3 records ``data`` (uint8) holding ``n`` of them; ValueError if
    they are not well formed (a chunk or stream out of bounds, a type index without a name, a
    record count or own-size count that does not add up). Works in place on the result arrays:
    temporaries of the size of the map cost page faults (fresh memory) on every read."""
    import numpy as np

    addr = np.empty(n, dtype=np.uint64)  # the zigzagged deltas first
    tv = np.empty(n, dtype=np.uint32)  # type index << 1 | own
    scratch = np.empty(CHUNK_RECORDS, dtype=np.uint64)
    sizes: list[np.ndarray] = []
    shifts: list[tuple[int, int, int]] = []  # (first record, records, shift) per chunk
    pos, done, total = 0, 0, int(data.size)
    while pos < total:
        if pos + CHUNK.size > total:
            raise ValueError("a chunk header is cut short")
        cn, n_own, shift, n_kinds = CHUNK.unpack_from(data.data, pos)
        if cn == 0 or done + cn > n or n_own > cn or shift > 63 or not 1 <= n_kinds <= cn:
            raise ValueError("a chunk does not add up")
        pos = _read_stream(data, pos + CHUNK.size, cn, addr[done:done + cn])
        kinds = np.empty(n_kinds, dtype=np.uint64)
        pos = _read_stream(data, pos, n_kinds, kinds)
        if cn > scratch.size:
            scratch = np.empty(cn, dtype=np.uint64)
        local = scratch[:cn]
        pos = _read_stream(data, pos, cn, local)
        if int(np.max(local)) >> 1 >= n_kinds:
            raise ValueError("a record's type is not among its chunk's")
        if int(np.max(kinds)) >= n_types:
            raise ValueError("a record's type index has no name")
        tv[done:done + cn] = (kinds[local >> np.uint64(1)] << np.uint64(1)) | (local & np.uint64(1))
        own_sizes = np.empty(n_own, dtype=np.uint64)
        pos = _read_stream(data, pos, n_own, own_sizes)
        sizes.append(own_sizes)
        shifts.append((done, cn, shift))
        done += cn
    if done != n:
        raise ValueError(f"the chunks hold {done} records, the header says {n}")
    own = (tv & 1).astype(bool)
    tv >>= 1
    own_values = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.uint64)
    if own_values.size != int(own.sum()) or (own_values.size and int(np.max(own_values)) > 0xFFFFFFFF):
        raise ValueError("the records' own sizes do not add up")
    size = type_size[tv]
    size[own] = own_values
    del own
    odd = (addr & np.uint64(1)).astype(bool)  # zigzag back: an odd value is ~(value >> 1)
    addr >>= np.uint64(1)
    np.invert(addr, out=addr, where=odd)
    del odd
    if len({sh for _first, _cn, sh in shifts}) == 1:
        addr <<= np.uint64(shifts[0][2])
    else:
        for first, cn, sh in shifts:
            addr[first:first + cn] <<= np.uint64(sh)
    np.cumsum(addr, out=addr)  # mod 2**64
    return addr, size, tv


def _read_segment(path: str, owners: Collection[int] | None = None) -> HeapMap:
    import numpy as np

    try:
        f = _open_map(path, None, owners)
    except OSError as exc:  # removed meanwhile (a new full map), a symlink swapped in, no access
        raise BadInput(f"{path}: cannot open it ({exc.strerror or exc})") from None
    with f:
        meta, head = _read_meta(f, path)
        buf = np.empty(head.records_bytes, dtype=np.uint8)
        try:
            f.seek(head.offset)
            got = f.readinto(memoryview(buf))
        except OSError as exc:
            raise CorruptHeapMap(f"{path}: unreadable heap map ({exc.strerror or exc})") from None
    if got != buf.size:
        raise CorruptHeapMap(f"{path}: corrupt heap map records")
    n = head.records
    names = np.array(meta["type_names"] or [""], dtype=str)
    pre = np.array(meta.get("type_preheader") or [], dtype=np.uint8)
    if head.version >= 3:
        try:
            addr, size, typ = _decode_v3(buf, n, np.array(meta["type_size"] or [0], dtype=np.uint32),
                                         len(meta["type_names"]))
        except ValueError as exc:
            raise CorruptHeapMap(f"{path}: corrupt heap map records ({exc})") from None
    else:
        recs = buf.view(_RECORD_FIELDS)
        addr, size, typ = recs["addr"], recs["size"], recs["type"]
        if n and int(typ.max()) >= names.size:
            raise CorruptHeapMap(f"{path}: corrupt heap map records")
    return HeapMap(pid=meta["pid"], start_ticks=meta["start_ticks"], boot_id=meta["boot_id"],
                   created_at=float(meta.get("created_at") or 0.0), addr=addr, size=size,
                   type=typ, type_names=names, type_preheader=pre,
                   layout=_checked_layout(path, meta.get("layout")), format_version=head.version)


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


# ------------------------------------------------------------------ finding a master's map


class NoHeapMap(BadInput):
    """No current heap map for this master: attribution cannot name types."""


_ENV_LINE = ("COWPROF_HEAPMAP_DIR", "XDG_RUNTIME_DIR", "HOME")


def candidate_dirs(pid: int, procfs_root: str = "/proc") -> list[str]:
    """Directories where master ``pid`` would have saved its map: ours, then its environment's.
    Raises ProcessGone when the master is gone (its environment then says nothing)."""
    dirs = [default_directory()]
    env = procfs.readable_environ(pid, procfs_root)
    if env is None:  # not allowed to read it: only our own directory is known
        return dirs
    heapmap_dir, runtime, home = (env.get(k) for k in _ENV_LINE)
    if heapmap_dir:
        dirs.append(heapmap_dir)
    else:
        if runtime:
            dirs.append(os.path.join(runtime, "cowprof"))
        if home:
            dirs.append(os.path.join(home, ".cache", "cowprof", "heapmaps"))
    return list(dict.fromkeys(dirs))


def find_heapmap(master: int, *, procfs_root: str = "/proc", directory: str | None = None) -> HeapMap:
    """The current heap map of ``master``: in ``directory`` if given, else in this user's heap map
    directory or the one the master's environment points to (a root profiler finds a server user's
    map). Only a file owned by us or by the master's user is read. Raises :class:`NoHeapMap` when
    there is none, :class:`CorruptHeapMap` when the master's map is unreadable and
    :class:`~cowprof.errors.ProcessGone` when the master exited meanwhile."""
    master_uid = procfs.owner(master, procfs_root)
    dirs = [directory] if directory else candidate_dirs(master, procfs_root)
    corrupt: CorruptHeapMap | None = None
    gone = ProcessGone(master, f"process {master} (the master) exited while its heap map was looked up")
    for d in dirs:
        try:
            hm = load(master, d, procfs_root, owners={os.geteuid(), master_uid})
        except CorruptHeapMap as err:
            corrupt = corrupt or err
            continue
        if hm is not None:
            # a zombie keeps its start time, so its map still looks current: the master must live
            if procfs.ProcessIdentity.lookup(master, procfs_root) is None:
                raise gone
            return hm
    if procfs.ProcessIdentity.lookup(master, procfs_root) is None:  # it exited: its map is stale now
        raise gone
    if corrupt is not None:
        raise corrupt
    raise NoHeapMap(f"no current heap map for master {master} (looked in {', '.join(dirs)}): call "
                    "cowprof.prepare_fork() in the master before it forks (heapmap=True is the default)")


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
