"""Output files cowprof creates (record files, HTML reports): private, never through a symlink.

Every file is created with mode 0600 (the umask can only narrow it) and ``O_NOFOLLOW``; an existing
path is an error unless the caller was given ``--force``. Problems opening are
:class:`~cowprof.errors.BadInput` (exit status 2), a failed write (disk full, quota, file size
limit, I/O error) :class:`~cowprof.errors.OutputError` (exit status 7).
"""
from __future__ import annotations

import errno
import os
import secrets
import stat

from cowprof.errors import BadInput, OutputError

__all__ = ["open_new", "write_new"]

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _open_error(path: str, exc: OSError) -> BadInput:
    if isinstance(exc, FileExistsError):
        return BadInput(f"{path} already exists (use --force to overwrite it)")
    if isinstance(exc, IsADirectoryError):
        return BadInput(f"{path} is a directory")
    if isinstance(exc, FileNotFoundError):
        return BadInput(f"cannot create {path}: no such directory")
    if isinstance(exc, PermissionError):
        return BadInput(f"cannot create {path}: permission denied")
    if exc.errno == errno.ELOOP:
        return BadInput(f"{path} is a symbolic link (not following it)")
    return BadInput(f"cannot create {path}: {exc.strerror or exc}")


def open_new(path: str, *, force: bool = False) -> int:
    """A descriptor of ``path``, created 0600 for writing; with ``force`` an existing file is
    truncated (a symlink is still refused, its target left alone)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise _open_error(path, exc) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_error(path: str, exc: OSError) -> Exception:
    cls = OutputError if exc.errno in _FULL else BadInput
    return cls(f"cannot write {path}: {exc.strerror or exc}")


def write_new(path: str, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` as the whole new file ``path`` (mode 0600).

    Without ``force`` an existing ``path`` (a symlink included, even a dangling one) is an error and
    the file is created exclusively; a failed write removes it. With ``force`` an existing regular
    file is replaced at once: the data goes to a new private file in the same directory, renamed
    over it (readers see the old or the new file, never a part); a symlink, a directory or any
    other kind of file there is refused.
    """
    if not force:
        fd = open_new(path)
        try:
            _write_all(fd, data)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise _write_error(path, exc) from None
        os.close(fd)
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _open_error(path, exc) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise BadInput(f"{path} is a symbolic link (not following it)")
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{path} is not a regular file (not replacing it)")
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = open_new(tmp)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename never follows a symlink: one swapped in since the check is replaced, not written through
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, IsADirectoryError):
            raise BadInput(f"{path} is a directory") from None
        raise _write_error(path, exc) from None
