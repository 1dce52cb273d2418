"""Record files: page-report samples over time, as versioned JSON Lines.

Layout (format 1.1: ``version`` 1, ``minor`` 1), one JSON object per line, UTF-8::

    {"format": "cowprof-record", "version": 1, "minor": 1, "created_at": 1763780000.0,
     "target": {"pid": 10, "requested_pid": 11, "cmdline": [...], "interval": 1.0},
     "attribution": {"by": ["type", "cause"], "top": 20}, "cowprof_version": "0.1.0"}
    {"kind": "sample", "index": 0, "time": ..., "elapsed": 0.0, "lateness": 0.001,
     "error": null, "report": {<PageReport.to_dict()>}}
    {"kind": "attribution", "sample": 0, ...}    (record --by: see cowprof.record_attribution)
    {"kind": "sample", "index": 1, ..., "error": {"type": "AccessDenied", "message": "..."}, "report": null}
    {"kind": "end", "time": ..., "samples": 2, "reason": "target-exited"}

Versions: ``version`` changes when existing lines change meaning (a reader refuses a version it
does not know); ``minor`` counts compatible additions (new line kinds, new optional header keys):
1.0 files (no ``minor``) are read as 1.1 files without attribution, and a reader of 1.0 reads a
1.1 file as pages only, skipping the ``attribution`` lines. Any ``minor`` is read.

Why this shape: append-only text that survives a killed recorder. Each line goes to the kernel
with unbuffered ``write`` calls as soon as its sample completes (and is fsync'd at most every few
seconds), so a SIGKILL loses at most the sample in progress; a reader tolerates a truncated last
line. When a write fails (disk full, quota, I/O error), the file is cut back to its last complete
line and :class:`~cowprof.errors.OutputError` says how many samples it keeps. JSON, never pickle:
a record file is data, safe to open from anywhere, and read strictly: every field of the header,
the samples and the end line must have its documented type, and a line longer than
``MAX_LINE_BYTES`` is corrupt (reading never holds more than one line of it in memory at once).
Unknown ``kind`` values are skipped so later version-1 writers can add line kinds (bumping
``minor``); anything that changes the meaning of existing lines bumps ``version``.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cowprof import __version__, record_attribution, untrusted
from cowprof.errors import BadInput, CowprofError, OutputError, RecordFileError
from cowprof.outfile import open_new

if TYPE_CHECKING:
    from cowprof.attribution import Attribution
    from cowprof.attributor import SampleAttribution
    from cowprof.functions import FunctionAttribution
    from cowprof.pages import PageReport
    from cowprof.sampler import Sample

__all__ = ["FORMAT", "MINOR", "VERSION", "RecordWriter", "Recording", "RecordedSample", "read_record"]

FORMAT = "cowprof-record"
VERSION = 1
MINOR = 1
"""1: ``attribution`` lines and the header's ``attribution`` (``record --by``)."""
FSYNC_EVERY = 5.0
"""Seconds between fsyncs: a flushed line already survives the recorder being killed; fsync only
protects against the machine going down, so it need not cost a disk flush per sample."""
MAX_LINE_BYTES = 16 << 20
"""A longer line is corrupt: a sample of a tree with thousands of workers takes a few MiB."""
# fsync errors that only mean "this file cannot be synced" (a pipe, a character device)
_NO_FSYNC = (errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF)


def _error_dict(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


class RecordWriter:
    """Append samples to a new record file (mode 0600); use as a context manager.

    The header is written (and flushed) on open. An existing file is never replaced unless
    ``force=True`` (then it is truncated: a record is written incrementally, there is no temporary
    file to rename); a symlink is never followed. Opening problems raise
    :class:`~cowprof.errors.BadInput`; a failed write raises :class:`~cowprof.errors.OutputError`
    after cutting the file back to its last complete line.
    """

    def __init__(self, path: str | os.PathLike[str], *, target: dict[str, Any], force: bool = False,
                 fsync_every: float = FSYNC_EVERY, attribution: dict[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        self.samples = 0
        self._fsync_every = fsync_every
        self._last_fsync = time.monotonic()
        self._size = 0  # bytes of complete lines written
        self._fd = open_new(self.path, force=force)
        self._created = not force
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        header = {"format": FORMAT, "version": VERSION, "minor": MINOR, "created_at": time.time(),
                  "target": target, "cowprof_version": __version__, "hostname": socket.gethostname()}
        if attribution is not None:
            header["attribution"] = attribution
        try:
            self._write_line(header, sync=True)
        except OutputError:
            self._discard()
            raise

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _write_line(self, obj: dict[str, Any], *, sync: bool = False) -> None:
        data = (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()
        view = memoryview(data)
        try:
            while view:  # unbuffered: in the kernel once this returns, survives the recorder being killed
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._cut_back()
            raise self._failed(exc) from None
        self._size += len(data)
        now = time.monotonic()
        if sync or now - self._last_fsync >= self._fsync_every:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                if exc.errno not in _NO_FSYNC:
                    raise self._failed(exc) from None
            self._last_fsync = now

    def _cut_back(self) -> None:
        """Drop a partly written line: the file ends with its last complete line again."""
        if self._regular:
            try:
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                pass

    def _failed(self, exc: OSError) -> OutputError:
        kept = f"; it keeps the header and {self.samples} complete samples" if self._size else ""
        return OutputError(f"cannot write {self.path}: {exc.strerror or exc}{kept}")

    def _discard(self) -> None:
        """Close and, when this writer created the file and could write nothing into it, remove it."""
        fd, self._fd = self._fd, -1
        try:
            if self._created and self._regular and self._size == 0:
                st = os.fstat(fd)
                if os.path.samestat(st, os.lstat(self.path)):
                    os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def write(self, sample: Sample) -> None:
        """Append one sample (a report or the error it hit) as one line, in the kernel on return."""
        self._write_line({
            "kind": "sample",
            "index": sample.index,
            "time": sample.time,
            "elapsed": round(sample.elapsed, 6),
            "lateness": round(sample.lateness, 6),
            "error": _error_dict(sample.error) if sample.error is not None else None,
            "report": sample.report.to_dict() if sample.report is not None else None,
        })
        self.samples += 1

    def write_attribution(self, sample: int, attribution: SampleAttribution, *, top: int | None = None) -> None:
        """Append the attribution line of sample ``sample`` (written right after it), each
        worker's types and the functions cut to the ``top`` largest."""
        self._write_line(record_attribution.line(sample, attribution, top=top))

    def close(self, reason: str | None = None) -> None:
        """Write the end line (when ``reason`` is given), fsync and close. Idempotent."""
        if self._fd < 0:
            return
        try:
            if reason is not None:
                self._write_line({"kind": "end", "time": time.time(), "samples": self.samples,
                                  "reason": reason}, sync=True)
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()


@dataclass(frozen=True)
class RecordedSample:
    """One sample line read back: a report, or the error message that sample hit."""

    index: int
    time: float
    elapsed: float
    lateness: float
    report: PageReport | None
    error: str | None
    attribution: Attribution | None = None
    """By type (and cause) of this sample (``record --by``), when its attribution line says so."""
    functions: FunctionAttribution | None = None
    attribution_error: str | None = None
    """Why the sample has no attribution although the recording asked for one."""


@dataclass
class Recording:
    """A whole record file: header, samples in file order, end line (None if the recorder was killed)."""

    path: str
    header: dict[str, Any]
    samples: list[RecordedSample] = field(default_factory=list)
    end: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reports(self) -> list[PageReport]:
        """The samples that hold a report, in order."""
        return [s.report for s in self.samples if s.report is not None]

    @property
    def attributed_by(self) -> list[str]:
        """The groupings the recorder was asked for (``record --by``); [] for pages only."""
        a = self.header.get("attribution")
        return list(a.get("by") or []) if isinstance(a, dict) else []


def _parse_header(path: str, line: bytes) -> dict[str, Any]:
    try:
        header = untrusted.loads(line)
    except ValueError:
        raise RecordFileError(f"{path} is not a cowprof record file (no JSON header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordFileError(f"{path} is not a cowprof record file (unknown format)")
    version = header.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version != VERSION:
        raise RecordFileError(
            f"{path} has record format version {version}; this cowprof ({__version__}) reads version "
            f"{VERSION} only")
    try:
        if version != VERSION or isinstance(version, bool):
            raise ValueError("'version' is not an integer")
        untrusted.timestamp(header, "created_at")
        untrusted.string(header, "cowprof_version", optional=True)
        untrusted.string(header, "hostname", optional=True)
        target = untrusted.obj(header.get("target"), "'target'")
        untrusted.integer(target, "pid", minimum=1)
        untrusted.integer(target, "requested_pid", minimum=1, optional=True)
        untrusted.string_list(target, "cmdline", optional=True)
        untrusted.number(target, "interval", minimum=1e-9, optional=True)
        untrusted.number(target, "duration", minimum=1e-9, optional=True)
        untrusted.integer(header, "minor", minimum=0, optional=True)
        if header.get("attribution") is not None:
            attr = untrusted.obj(header["attribution"], "'attribution'")
            untrusted.string_list(attr, "by")
            untrusted.integer(attr, "top", minimum=1, optional=True)
    except ValueError as exc:
        raise RecordFileError(f"{path}: corrupt header ({exc})") from None
    return header


def _parse_sample(path: str, lineno: int, obj: dict[str, Any]) -> RecordedSample:
    from cowprof.pages import PageReport

    try:
        index = untrusted.integer(obj, "index", minimum=0) or 0
        when = untrusted.timestamp(obj, "time") or 0.0
        elapsed = untrusted.number(obj, "elapsed", optional=True) or 0.0
        lateness = untrusted.number(obj, "lateness", optional=True) or 0.0
        error = obj.get("error")
        if isinstance(error, dict):
            error = untrusted.string(error, "message")
        elif error is not None and not isinstance(error, str):
            raise ValueError("'error' is neither an object nor a string")
        if "report" not in obj:
            raise ValueError("missing 'report'")
        report = PageReport.from_dict(obj["report"]) if obj["report"] is not None else None
        if report is None and error is None:
            raise ValueError("neither a report nor an error")
        return RecordedSample(index=index, time=when, elapsed=elapsed, lateness=lateness, report=report,
                              error=error)
    except (ValueError, CowprofError) as exc:
        raise RecordFileError(f"{path} line {lineno}: corrupt sample ({exc})") from None


def _check_end(path: str, lineno: int, obj: dict[str, Any]) -> dict[str, Any]:
    try:
        untrusted.timestamp(obj, "time")
        untrusted.integer(obj, "samples", minimum=0)
        untrusted.string(obj, "reason")
    except ValueError as exc:
        raise RecordFileError(f"{path} line {lineno}: corrupt end line ({exc})") from None
    return obj


def _lines(f: Any, path: str) -> Any:
    """(line number, line without its newline, whether it ended with one) for each line of the open
    file; a line longer than MAX_LINE_BYTES is a RecordFileError before it is read whole."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        terminated = raw.endswith(b"\n")
        if terminated:
            raw = raw[:-1]
        elif len(raw) > MAX_LINE_BYTES:
            raise RecordFileError(f"{path} line {lineno}: corrupt (longer than {MAX_LINE_BYTES >> 20} MiB)")
        yield lineno, raw, terminated


def read_record(path: str | os.PathLike[str]) -> Recording:
    """Read a record file written by :class:`RecordWriter`.

    A truncated last line (the recorder was killed mid-write) is dropped with a warning in
    ``Recording.warnings``; a missing or foreign header, an unknown version, a field of the wrong
    type, a line longer than ``MAX_LINE_BYTES`` or a corrupt line anywhere else raises
    :class:`~cowprof.errors.RecordFileError` (``BadInput`` if the file cannot be opened).
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with f:
            return _read_lines(path, _lines(f, path))
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_lines(path: str, lines: Any) -> Recording:
    first = next(lines, None)
    if first is None or not first[1].strip():
        raise RecordFileError(f"{path} is empty (not a cowprof record file)")
    _, head, head_terminated = first
    recording = Recording(path=path, header=_parse_header(path, head))
    if not head_terminated:
        recording.warnings.append(f"{path}: header line not terminated; the recorder was probably killed")
    for lineno, raw, terminated in lines:
        if not raw.strip():
            continue
        try:
            obj = untrusted.loads(raw)
        except ValueError:
            if not terminated:  # only the last line can lack its newline
                recording.warnings.append(
                    f"{path}: last line truncated (recorder killed mid-sample?); kept "
                    f"{len(recording.samples)} complete samples")
                break
            raise RecordFileError(f"{path} line {lineno}: corrupt (not JSON)") from None
        if not isinstance(obj, dict):
            raise RecordFileError(f"{path} line {lineno}: corrupt (not a JSON object)")
        if recording.end is not None:
            raise RecordFileError(f"{path} line {lineno}: data after the end line")
        kind = obj.get("kind")
        if kind == "sample":
            recording.samples.append(_parse_sample(path, lineno, obj))
        elif kind == "end":
            recording.end = _check_end(path, lineno, obj)
        elif kind == record_attribution.KIND:
            _attach(recording, path, lineno, obj)
        elif not isinstance(kind, str):
            raise RecordFileError(f"{path} line {lineno}: corrupt (no line kind)")
        # other kinds: added by a later version-1 writer; skipped on purpose
    return recording


def _attach(recording: Recording, path: str, lineno: int, obj: dict[str, Any]) -> None:
    """Read an attribution line into the sample it follows."""
    try:
        ra = record_attribution.parse(obj)
    except (ValueError, CowprofError) as exc:
        raise RecordFileError(f"{path} line {lineno}: corrupt attribution ({exc})") from None
    last = recording.samples[-1] if recording.samples else None
    if last is None or last.index != ra.sample:
        raise RecordFileError(f"{path} line {lineno}: corrupt attribution (of sample {ra.sample}, "
                              "which is not the sample before it)")
    recording.warnings.extend(f"{path} line {lineno}: {w}" for w in ra.warnings)
    recording.samples[-1] = dataclasses.replace(last, attribution=ra.attribution, functions=ra.functions,
                                                attribution_error=ra.error or ra.functions_error)
