"""Record files: page-report samples over time, as versioned JSON Lines.

Layout (``version`` 1), one JSON object per line, UTF-8::

    {"format": "cowprof-record", "version": 1, "created_at": 1763780000.0,
     "target": {"pid": 10, "requested_pid": 11, "cmdline": [...], "interval": 1.0},
     "cowprof_version": "0.1.0"}
    {"kind": "sample", "index": 0, "time": ..., "elapsed": 0.0, "lateness": 0.001,
     "error": null, "report": {<PageReport.to_dict()>}}
    {"kind": "sample", "index": 1, ..., "error": {"type": "AccessDenied", "message": "..."}, "report": null}
    {"kind": "end", "time": ..., "samples": 2, "reason": "target-exited"}

Why this shape: append-only text that survives a killed recorder. Each line is written with one
``write`` and flushed as soon as its sample completes (and fsync'd at most every few seconds), so a
SIGKILL loses at most the sample in progress; a reader tolerates a truncated last line. JSON, never
pickle: a record file is data, safe to open from anywhere. Unknown ``kind`` values are skipped so
later version-1 writers can add line kinds; anything that changes the meaning of existing lines bumps
``version``.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from cowprof import __version__
from cowprof.errors import BadInput, CowprofError, RecordFileError

if TYPE_CHECKING:
    from cowprof.pages import PageReport
    from cowprof.sampler import Sample

__all__ = ["FORMAT", "VERSION", "RecordWriter", "Recording", "RecordedSample", "read_record"]

FORMAT = "cowprof-record"
VERSION = 1
FSYNC_EVERY = 5.0
"""Seconds between fsyncs: a flushed line already survives the recorder being killed; fsync only
protects against the machine going down, so it need not cost a disk flush per sample."""


def _error_dict(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


class RecordWriter:
    """Append samples to a new record file; use as a context manager.

    The header is written (and flushed) on open. An existing file is never replaced unless
    ``force=True`` (then it is truncated: a record is written incrementally, there is no temporary
    file to rename). Opening problems raise :class:`~cowprof.errors.BadInput`.
    """

    def __init__(self, path: str | os.PathLike[str], *, target: dict[str, Any], force: bool = False,
                 fsync_every: float = FSYNC_EVERY) -> None:
        self.path = os.fspath(path)
        self.samples = 0
        self._fsync_every = fsync_every
        self._last_fsync = time.monotonic()
        try:
            self._file: IO[str] = open(self.path, "w" if force else "x", encoding="utf-8")
        except FileExistsError:
            raise BadInput(f"{self.path} already exists (use --force to overwrite it)") from None
        except IsADirectoryError:
            raise BadInput(f"{self.path} is a directory") from None
        except FileNotFoundError:
            raise BadInput(f"cannot create {self.path}: no such directory") from None
        except PermissionError:
            raise BadInput(f"cannot create {self.path}: permission denied") from None
        except OSError as exc:
            raise BadInput(f"cannot create {self.path}: {exc.strerror or exc}") from None
        header = {"format": FORMAT, "version": VERSION, "created_at": time.time(),
                  "target": target, "cowprof_version": __version__, "hostname": socket.gethostname()}
        self._write_line(header, sync=True)

    def _write_line(self, obj: dict[str, Any], *, sync: bool = False) -> None:
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"
        self._file.write(line)
        self._file.flush()  # in the kernel now: survives the recorder being killed
        now = time.monotonic()
        if sync or now - self._last_fsync >= self._fsync_every:
            try:
                os.fsync(self._file.fileno())
            except OSError:
                pass  # e.g. a pipe or a filesystem without fsync: the flush is what matters here
            self._last_fsync = now

    def write(self, sample: Sample) -> None:
        """Append one sample (a report or the error it hit) as one flushed line."""
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
        if self._file.closed:
            return
        try:
            if reason is not None:
                self._write_line({"kind": "end", "time": time.time(), "samples": self.samples,
                                  "reason": reason}, sync=True)
        finally:
            self._file.close()

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
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RecordFileError(f"{path} is not a cowprof record file (no JSON header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordFileError(f"{path} is not a cowprof record file (unknown format)")
    version = header.get("version")
    if version != VERSION:
        raise RecordFileError(
            f"{path} has record format version {version!r}; this cowprof ({__version__}) reads version "
            f"{VERSION} only")
    if not isinstance(header.get("target"), dict):
        raise RecordFileError(f"{path}: corrupt header (no target)")
    return header


def _parse_sample(path: str, lineno: int, obj: dict[str, Any]) -> RecordedSample:
    from cowprof.pages import PageReport

    try:
        report_d = obj["report"]
        report = PageReport.from_dict(report_d) if report_d is not None else None
        error = obj.get("error")
        message = None
        if error is not None:
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if report is None and message is None:
            raise ValueError("neither a report nor an error")
        return RecordedSample(index=int(obj["index"]), time=float(obj["time"]),
                              elapsed=float(obj.get("elapsed", 0.0)),
                              lateness=float(obj.get("lateness", 0.0)), report=report, error=message)
    except (KeyError, TypeError, ValueError, AttributeError, CowprofError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise RecordFileError(f"{path} line {lineno}: corrupt sample ({detail})") from None


def read_record(path: str | os.PathLike[str]) -> Recording:
    """Read a record file written by :class:`RecordWriter`.

    A truncated last line (the recorder was killed mid-write) is dropped with a warning in
    ``Recording.warnings``; a missing or foreign header, an unknown version, or a corrupt line
    anywhere else raises :class:`~cowprof.errors.RecordFileError` (``BadInput`` if the file cannot
    be opened).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise RecordFileError(f"{path} is empty (not a cowprof record file)")
    lines = data.split(b"\n")
    complete_last = data.endswith(b"\n")
    if complete_last:
        lines.pop()  # the empty string after the final newline
    recording = Recording(path=path, header=_parse_header(path, lines[0]))
    if len(lines) == 1 and not complete_last:
        recording.warnings.append(f"{path}: header line not terminated; the recorder was probably killed")
    for lineno, raw in enumerate(lines[1:], start=2):
        is_last = lineno == len(lines)
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if is_last and not complete_last:
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
            recording.end = obj
        elif not isinstance(kind, str):
            raise RecordFileError(f"{path} line {lineno}: corrupt (no line kind)")
        # other kinds: added by a later version-1 writer; skipped on purpose
    return recording
