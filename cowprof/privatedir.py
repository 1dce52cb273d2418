"""Private directories and files: where cowprof keeps what it writes between runs.

Heap maps (:mod:`cowprof.heapmap`), the learned preload lists (:mod:`cowprof.preload`) and the help
cache (:mod:`cowprof.helpcache`) live in directories used only once proven private
(:func:`open_dir`): a real directory, reached without a symbolic link at any component made here
nor at the last one, owned by this user, that neither group nor others may write to. Missing
components are made here with mode 0700, whatever the umask; an existing directory is never
changed. Files are 0600, written whole through a temporary file renamed into place
(:func:`write_file`), and read only when they are regular files of this user, never through a
symbolic link and never blocking on a FIFO (:func:`read_file`).

It imports nothing beyond ``os``, ``stat`` and ``errno``: the help cache uses it before any other
part of cowprof is loaded.
"""
from __future__ import annotations

import errno
import os
import stat

__all__ = ["NotPrivate", "open_dir", "read_file", "write_file"]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotPrivate(OSError):
    """A directory that is not private: a symbolic link on the way, another user's, or writable by
    others. ``why`` says which; the message is ``"<path> <why>"``."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path} {why}")
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return f"{self.path} {self.why}"


def open_dir(path: str, *, create: bool) -> int:
    """A descriptor (close-on-exec) of directory ``path`` once it is proven private. With ``create``,
    each missing component is made here with mode 0700. Symbolic links above the deepest component
    that already exists are followed (``/home`` may be one); none is followed below it. Raises
    FileNotFoundError when it is missing and not ``create``, NotPrivate, or another OSError."""
    path = os.path.abspath(path)
    head, names = path, []
    while head != os.path.dirname(head):  # up to the deepest component that exists
        try:
            os.lstat(head)
            break
        except FileNotFoundError:
            if not create:
                raise
            head, name = os.path.split(head)
            names.append(name)
    names.reverse()
    missing = bool(names)  # then every name is created here
    if not names:  # it exists: open its parent, then it without following a link
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
                except FileExistsError:  # made meanwhile by someone else: checked like any other
                    pass
            try:
                sub = os.open(name, _O_DIR | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise NotPrivate(path, f"has a symbolic link at {name!r}") from None
                raise
            os.close(fd)
            fd = sub
            if made and stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
                os.fchmod(fd, 0o700)  # ours, just made: a umask such as 0o700 must not leave it unusable
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise NotPrivate(path, f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
        if st.st_mode & 0o022:
            raise NotPrivate(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Writes ``data`` as file ``name`` (mode 0600) of the directory ``dir_fd``, through a temporary
    file renamed into place: a reader sees the old file or the whole new one. Raises OSError (the
    temporary file is removed then)."""
    tmp = f"{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, _O_WRITE, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The content of file ``name`` of the directory ``dir_fd``; None when it is missing, not a
    regular file (a symbolic link, a FIFO), another user's, longer than ``limit`` bytes, or
    unreadable."""
    try:
        fd = os.open(name, _O_READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > limit:
            return None
        parts, left = [], limit + 1
        while left > 0:
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)
