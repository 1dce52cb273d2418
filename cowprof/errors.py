"""Domain errors. Every error a user can cause carries an exit code and a one-line message.

The CLI maps :class:`CowprofError` to ``cowprof: <message>`` on stderr and ``exit_code``;
anything else is a bug and may show a traceback.
"""
from __future__ import annotations

import os


class CowprofError(Exception):
    """Base error: ``str(err)`` is a one-line message for the user."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(CowprofError):
    """An option value, PID or file name that cannot be used."""

    exit_code = 2


class ProcessGone(CowprofError):
    """The process exited (or never existed) while it was being read."""

    exit_code = 3

    def __init__(self, pid: int, message: str | None = None) -> None:
        super().__init__(message or f"process {pid} does not exist (or exited)")
        self.pid = pid


class AccessDenied(CowprofError):
    """Not allowed to read a /proc file of the target."""

    exit_code = 4

    def __init__(self, pid: int | None, message: str | None = None) -> None:
        who = f"process {pid}" if pid is not None else "this file"
        super().__init__(message or f"permission denied reading {who}{_denied_hint()}")
        self.pid = pid


def _denied_hint() -> str:
    """What to do about a denied /proc read, for the user we run as: root cannot be told to run as root."""
    if os.geteuid() == 0:
        return (" even as root: it may belong to another user namespace or container, be protected by "
                "a security module, or this process may lack CAP_SYS_PTRACE")
    return ": run cowprof as the same user as the server, or as root"


class NotAPreforkTree(CowprofError):
    """The PID is neither a pre-fork master nor one of its workers."""

    exit_code = 5


class RecordFileError(CowprofError):
    """A record file that is corrupt, truncated, or of an unknown version."""

    exit_code = 6


class OutputError(CowprofError):
    """An output file could not be written (disk full, quota, I/O error); what was completely
    written before stays."""

    exit_code = 7
