"""The heap map directory is private and cowprof never follows a symlink or changes what it did not
create (issue 12, item 2). Each attack of the issue, run as root with a directory or link of
uid 65534 where another user could plant one:

* ``<shared 1777 dir>/cowprof`` is a symlink to a root-owned directory and ``XDG_RUNTIME_DIR`` is
  the shared directory: the target keeps its mode and contents (no map written, nothing removed),
  and ``prepare_fork`` still prepares (it warns that the map was not saved);
* ``COWPROF_HEAPMAP_DIR`` is an existing 1777 directory: it keeps mode 1777 and is refused;
* umask 000 (or 777): every directory cowprof creates is 0700;
* symlinks, FIFOs, other users' files and non-maps named like maps in the map directory are never
  followed, opened for long or removed; a stale map of ours still is.

On cowprof before the fix these failed: the target directory became 0700 and got a map, the 1777
directory lost its sticky bit, ``~/.cache/cowprof`` was 0777, a garbage file named like a map was
deleted and a FIFO named like one hung the save.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from attribution_apps import app_python
from cowprof import heapmap, procfs
from cowprof.errors import BadInput

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="planting files of another user needs root")


def _map(pid: int, start_ticks: int | None = None) -> heapmap.HeapMap:
    ticks = procfs.read_stat(pid).starttime_ticks if start_ticks is None else start_ticks
    return heapmap.HeapMap(pid=pid, start_ticks=ticks or 1, boot_id="", created_at=0.0,
                           addr=np.array([4096, 8192], dtype=np.uint64), size=np.array([64, 32], dtype=np.uint32),
                           type=np.array([0, 1], dtype=np.uint32), type_names=np.array(["float", "str"]))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _tree(path) -> dict[str, tuple[int, int, bytes]]:
    """name -> (mode, uid, content) of every entry, to prove a directory was left alone."""
    out = {}
    for name in sorted(os.listdir(path)):
        st = os.lstat(os.path.join(path, name))
        data = open(os.path.join(path, name), "rb").read() if stat.S_ISREG(st.st_mode) else b""
        out[name] = (st.st_mode, st.st_uid, data)
    return out


@pytest.fixture
def clean_env(monkeypatch):
    for var in (heapmap.DIR_ENV, "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _shared_dir_with_planted_link(tmp_path):
    """A root-owned target directory holding a stale map of root, and a shared 1777 directory in
    which uid 65534 planted ``cowprof`` -> the target."""
    target = tmp_path / "root-owned"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    stale = heapmap.save(_map(_dead_pid(), start_ticks=5), str(tmp_path / "staging"))
    os.rename(stale, target / os.path.basename(stale))  # a real stale map: cleanup would delete it
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    link = shared / "cowprof"
    os.symlink(target, link)
    os.lchown(link, NOBODY, NOBODY)
    return shared, target


def test_symlinked_runtime_dir_is_refused_and_its_target_left_alone(tmp_path, clean_env):
    shared, target = _shared_dir_with_planted_link(tmp_path)
    clean_env.setenv("XDG_RUNTIME_DIR", str(shared))
    assert heapmap.default_directory() == str(shared / "cowprof")
    before = (_mode(target), _tree(target))
    with pytest.raises(BadInput, match="symbolic link"):
        heapmap.save(_map(os.getpid()))
    with pytest.raises(BadInput, match="symbolic link"):
        heapmap.remove_stale()
    assert (_mode(target), _tree(target)) == before


def test_prepare_fork_still_prepares_when_the_directory_is_refused(tmp_path, clean_env):
    python = app_python()
    if python is None:
        pytest.skip("the heap walk needs a CPython 3.12+ interpreter (no 3.12/3.13 venv found)")
    shared, target = _shared_dir_with_planted_link(tmp_path)
    before = (_mode(target), _tree(target))
    code = textwrap.dedent("""
        import json, warnings, cowprof
        from cowprof import _native
        keep = [{"k": i + 0.5} for i in range(1000)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = cowprof.prepare_fork()
        print(json.dumps({"path": r.heapmap_path, "immortal": _native.is_immortal(keep[3]),
                          "warned": [str(c.message) for c in caught]}))
    """)
    env = {k: v for k, v in os.environ.items() if k != heapmap.DIR_ENV}
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                          env={**env, "XDG_RUNTIME_DIR": str(shared)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["path"] is None and out["immortal"]
    assert any("heap map not saved" in m and "symbolic link" in m for m in out["warned"]), out["warned"]
    assert (_mode(target), _tree(target)) == before


def test_existing_world_writable_directory_keeps_its_mode_and_is_refused(tmp_path, clean_env):
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(public, 0o1777)
    clean_env.setenv(heapmap.DIR_ENV, str(public))
    with pytest.raises(BadInput, match="writable by other users"):
        heapmap.save(_map(os.getpid()))
    assert _mode(public) == 0o1777 and os.listdir(public) == []


def test_another_users_directory_is_refused_and_left_alone(tmp_path, clean_env):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    clean_env.setenv(heapmap.DIR_ENV, str(theirs))
    with pytest.raises(BadInput, match=f"belongs to uid {NOBODY}"):
        heapmap.save(_map(os.getpid()))
    st = os.stat(theirs)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), os.listdir(theirs)) == (NOBODY, 0o755, [])


@pytest.mark.parametrize("umask", [0o000, 0o777])
def test_every_directory_created_is_0700_whatever_the_umask(tmp_path, clean_env, umask):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    clean_env.setenv("HOME", str(home))
    assert heapmap.default_directory() == str(home / ".cache" / "cowprof" / "heapmaps")
    old = os.umask(umask)
    try:
        path = heapmap.save(_map(os.getpid()))
    finally:
        os.umask(old)
    for d in (home / ".cache", home / ".cache" / "cowprof", home / ".cache" / "cowprof" / "heapmaps"):
        assert _mode(d) == 0o700, (d, oct(_mode(d)))
    assert _mode(home) == 0o755  # existed before: not ours to change
    assert _mode(path) == 0o600
    assert heapmap.load(os.getpid()) is not None


def test_planted_entries_are_never_followed_nor_removed(tmp_path, clean_env):
    d = tmp_path / "maps"
    d.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    me, dead = os.getpid(), [_dead_pid() for _ in range(4)]
    # a valid current map of ours outside, and a valid stale one (both would be acted on if followed)
    current_elsewhere = heapmap.save(_map(me), str(outside))
    victim = heapmap.save(_map(dead[0], start_ticks=5), str(outside))
    planted = {
        f"heapmap-{dead[0]}.0.hmap": lambda p: os.symlink(victim, p),  # -> a stale map: not deleted
        f"heapmap-{me}.1.hmap": lambda p: os.symlink(current_elsewhere, p),  # -> not read by load
        f"heapmap-{dead[1]}.0.hmap": lambda p: (p.write_bytes(open(victim, "rb").read()),
                                                os.chown(p, NOBODY, NOBODY)),  # another user's file
        f"heapmap-{dead[2]}.0.hmap": lambda p: p.write_bytes(b"precious data, not a heap map"),
    }
    for name, make in planted.items():
        make(d / name)
    ours_stale = heapmap.save(_map(dead[3], start_ticks=5), str(d))  # removable: provably ours
    victim_bytes = open(victim, "rb").read()
    assert heapmap.load(me, str(d)) is None  # the symlinked current map is not followed
    heapmap.save(_map(me), str(d))
    left = set(os.listdir(d))
    assert set(planted) <= left
    assert all(os.path.islink(d / n) for n in planted if n.startswith((f"heapmap-{dead[0]}.", f"heapmap-{me}.")))
    assert os.path.basename(ours_stale) not in left
    assert open(victim, "rb").read() == victim_bytes and os.path.exists(current_elsewhere)
    assert (d / f"heapmap-{dead[2]}.0.hmap").read_bytes() == b"precious data, not a heap map"
    loaded = heapmap.load(me, str(d))
    assert loaded is not None and len(loaded) == 2


def test_a_fifo_named_like_a_map_does_not_block_a_save(tmp_path):
    """Run in a child with a timeout: opening the FIFO for reading would block forever."""
    d = tmp_path / "maps"
    d.mkdir(mode=0o700)
    os.mkfifo(d / f"heapmap-{_dead_pid()}.0.hmap")
    code = textwrap.dedent(f"""
        import os, numpy as np
        from cowprof import heapmap, procfs
        hm = heapmap.HeapMap(pid=os.getpid(), start_ticks=procfs.read_stat(os.getpid()).starttime_ticks,
                             boot_id="", created_at=0.0, addr=np.array([4096], dtype=np.uint64),
                             size=np.array([64], dtype=np.uint32), type=np.array([0], dtype=np.uint32),
                             type_names=np.array(["float"]))
        print(heapmap.save(hm, {str(d)!r}))
        print(len(heapmap.segment_paths(os.getpid(), {str(d)!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"
    assert any(stat.S_ISFIFO(os.lstat(d / n).st_mode) for n in os.listdir(d))


def test_stale_map_of_ours_is_still_removed_and_leftovers_only_when_old(tmp_path):
    """The positive control of the cleanup: what is provably ours and stale goes."""
    d = tmp_path / "maps"
    stale = heapmap.save(_map(_dead_pid(), start_ticks=5), str(d))
    leftover = d / f"heapmap-{_dead_pid()}.0.hmap.writing"
    leftover.write_bytes(bytes(32))
    fresh_leftover = d / f"heapmap-{_dead_pid()}.1.hmap.writing"
    fresh_leftover.write_bytes(bytes(32))
    os.utime(leftover, (0, 0))
    removed = heapmap.remove_stale(str(d))
    assert sorted(removed) == sorted([stale, str(leftover)])
    assert fresh_leftover.exists()
