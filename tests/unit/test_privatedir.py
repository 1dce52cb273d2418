"""cowprof.privatedir: a directory is used only once proven private, files are written whole and
read only when they are regular files of ours. The heap map's own checks:
tests/integration/test_heapmap_dir.py; the help cache's and learned preload's: their unit tests."""
from __future__ import annotations

import ast
import os
import pathlib
import stat

import pytest

from cowprof import preload, privatedir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o700, 0o777])
def test_every_missing_component_is_made_0700_whatever_the_umask(tmp_path, umask):
    where = tmp_path / "a" / "b" / "c"
    old = os.umask(umask)
    try:
        fd = privatedir.open_dir(str(where), create=True)
    finally:
        os.umask(old)
    os.close(fd)
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", where)] == [0o700] * 3


def test_an_existing_private_directory_is_opened_and_left_as_it_is(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o750)
    os.chmod(mine, 0o750)
    fd = privatedir.open_dir(str(mine), create=True)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(mine))
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert _mode(mine) == 0o750


def test_missing_without_create_is_file_not_found_and_nothing_is_made(tmp_path):
    with pytest.raises(FileNotFoundError):
        privatedir.open_dir(str(tmp_path / "no" / "such"), create=False)
    assert os.listdir(tmp_path) == []


def test_a_symbolic_link_as_the_directory_is_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(privatedir.NotPrivate, match="has a symbolic link at 'link'") as caught:
        privatedir.open_dir(str(link), create=True)
    assert caught.value.path == str(link) and isinstance(caught.value, OSError)


def test_a_link_planted_where_a_component_is_to_be_made_is_not_followed(tmp_path, monkeypatch):
    """The race the descriptor walk closes: the component appears as a symlink between the check
    that it is missing and its creation."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    real_mkdir = os.mkdir

    def planting_mkdir(name, mode=0o777, *, dir_fd=None):
        if name == "made":
            os.symlink(target, "made", dir_fd=dir_fd)
            raise FileExistsError(name)
        return real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", planting_mkdir)
    with pytest.raises(privatedir.NotPrivate, match="symbolic link at 'made'"):
        privatedir.open_dir(str(tmp_path / "made" / "sub"), create=True)
    assert os.listdir(target) == []


def test_a_directory_others_may_write_to_is_refused_and_keeps_its_mode(tmp_path):
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(public, 0o1777)
    with pytest.raises(privatedir.NotPrivate, match=r"is writable by other users \(mode 1777\)"):
        privatedir.open_dir(str(public), create=True)
    assert _mode(public) == 0o1777


@needs_root
def test_another_users_directory_is_refused_and_left_alone(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(privatedir.NotPrivate, match=f"belongs to uid {NOBODY}"):
        privatedir.open_dir(str(theirs), create=True)
    st = os.stat(theirs)
    assert (st.st_uid, _mode(theirs)) == (NOBODY, 0o700)


def test_write_file_replaces_whole_with_mode_0600(tmp_path):
    fd = privatedir.open_dir(str(tmp_path / "d"), create=True)
    old = os.umask(0)
    try:
        privatedir.write_file(fd, "f", b"old")
        privatedir.write_file(fd, "f", b"x" * (3 << 20))
    finally:
        os.umask(old)
        os.close(fd)
    assert (tmp_path / "d" / "f").read_bytes() == b"x" * (3 << 20)
    assert _mode(tmp_path / "d" / "f") == 0o600 and os.listdir(tmp_path / "d") == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    d = tmp_path / "d"
    fd = privatedir.open_dir(str(d), create=True)
    try:
        privatedir.write_file(fd, "f", b"old")
        (d / "sub").mkdir()
        with pytest.raises(OSError):  # a directory can't be replaced by a file
            privatedir.write_file(fd, "sub", b"new")
    finally:
        os.close(fd)
    assert sorted(os.listdir(d)) == ["f", "sub"] and (d / "f").read_bytes() == b"old"


def test_write_file_does_not_write_through_a_planted_temporary_link(tmp_path):
    d = tmp_path / "d"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    fd = privatedir.open_dir(str(d), create=True)
    try:
        os.symlink(victim, d / f"f.{os.getpid()}.tmp")
        with pytest.raises(FileExistsError):
            privatedir.write_file(fd, "f", b"new")
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"keep"


def test_read_file_takes_only_regular_files_of_ours_within_the_limit(tmp_path):
    d = tmp_path / "d"
    fd = privatedir.open_dir(str(d), create=True)
    try:
        (d / "ok").write_bytes(b"12345")
        (tmp_path / "secret").write_bytes(b"secret")
        (d / "link").symlink_to(tmp_path / "secret")
        os.mkfifo(d / "fifo")  # must not block
        assert privatedir.read_file(fd, "ok", 5) == b"12345"
        assert privatedir.read_file(fd, "ok", 4) is None
        assert privatedir.read_file(fd, "link", 100) is None
        assert privatedir.read_file(fd, "fifo", 100) is None
        assert privatedir.read_file(fd, "missing", 100) is None
        if os.geteuid() == 0:
            os.chown(d / "ok", NOBODY, NOBODY)
            assert privatedir.read_file(fd, "ok", 100) is None
    finally:
        os.close(fd)


def test_it_imports_nothing_but_errno_os_and_stat():
    """The help cache uses it before the rest of cowprof: it must stay light."""
    tree = ast.parse(pathlib.Path(privatedir.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "errno", "os", "stat"}


def test_learned_preload_refuses_a_symlinked_directory_and_makes_its_parents_private(tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setenv(preload.ENV_DIR, str(tmp_path / "link"))
    learned = preload.learn("k")
    assert learned.modules == () and "symbolic link" in (learned.error or "")
    assert os.listdir(target) == []
    monkeypatch.setenv(preload.ENV_DIR, str(tmp_path / "cache" / "cowprof" / "preload"))
    assert preload.learn("k").error is None
    assert [_mode(tmp_path / p) for p in ("cache", "cache/cowprof", "cache/cowprof/preload")] == [0o700] * 3
