# Record format 1.0 as cowprof wrote and read it before format 1.1 (attribution lines) existed:
# a verbatim copy of cowprof/record.py at commit 870f598, kept for the compatibility tests
# (tests/unit/test_record_attribution.py): files it writes must be read by today's reader, and the
# files today's writer makes must be read by it. Do not change it; it is what old installs run.
"""Record files: page-report samples over time, as versioned JSON Lines.

Layout (``version`` 1), one JSON object per line, UTF-8::

    {"format": "cowprof-record", "version": 1, "created_at": 1763780000.0,
     "target": {"pid": 10, "requested_pid": 11, "cmdline": [...], "interval": 1.0},
     "cowprof_version": "0.1.0"}
    {"kind": "sample", "index": 0, "time": ..., "elapsed": 0.0, "lateness": 0.001,
     "error": null, "report": {<PageReport.to_dict()>}}
    {"kind": "sample", "index": 1, ..., "error": {"type": "AccessDenied", "message": "..."}, "report": null}
    {"kind": "end", "time": ..., "samples": 2, "reason": "target-exited"}

Why this shape: append-only text that survives a killed recorder. Each line goes to the kernel
with unbuffered ``write`` calls as soon as its sample completes (and is fsync'd at most every few
seconds), so a SIGKILL loses at most the sample in progress; a reader tolerates a truncated last
line. When a write fails (disk full, quota, I/O error), the file is cut back to its last complete
line and :class:`~cowprof.errors.OutputError` says how many samples it keeps. JSON, never pickle:
a record file is data, safe to open from anywhere, and read strictly: every field of the header,
the samples and the end line must have its documented type, and a line longer than
``MAX_LINE_BYTES`` is corrupt (reading never holds more than one line of it in memory at once).
Unknown ``kind`` values are skipped so later version-1 writers can add line kinds; anything that
changes the meaning of existing lines bumps ``version``.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cowprof import __version__, untrusted
from cowprof.errors import BadInput, CowprofError, OutputError, RecordFileError

if TYPE_CHECKING:
    from cowprof.pages import PageReport
    from cowprof.sampler import Sample

__all__ = ["FORMAT", "VERSION", "RecordWriter", "Recording", "RecordedSample", "read_record"]

FORMAT = "cowprof-record"
VERSION = 1
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
                 fsync_every: float = FSYNC_EVERY) -> None:
        self.path = os.fspath(path)
        self.samples = 0
        self._fsync_every = fsync_every
        self._last_fsync = time.monotonic()
        self._size = 0  # bytes of complete lines written
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except FileExistsError:
            raise BadInput(f"{self.path} already exists (use --force to overwrite it)") from None
        except IsADirectoryError:
            raise BadInput(f"{self.path} is a directory") from None
        except FileNotFoundError:
            raise BadInput(f"cannot create {self.path}: no such directory") from None
        except PermissionError:
            raise BadInput(f"cannot create {self.path}: permission denied") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BadInput(f"{self.path} is a symbolic link (not following it)") from None
            raise BadInput(f"cannot create {self.path}: {exc.strerror or exc}") from None
        self._created = not force
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        header = {"format": FORMAT, "version": VERSION, "created_at": time.time(),
                  "target": target, "cowprof_version": __version__, "hostname": socket.gethostname()}
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
        elif not isinstance(kind, str):
            raise RecordFileError(f"{path} line {lineno}: corrupt (no line kind)")
        # other kinds: added by a later version-1 writer; skipped on purpose
    return recording
