"""The /proc layer as one piece: the one OSError translator (procfs.wrap_exceptions), the process
identity (procfs.ProcessIdentity), the readers the rest of cowprof used to open by hand, and the
heap-map discovery (heapmap.candidate_dirs, heapmap.find_heapmap), on fake procfs roots."""
from __future__ import annotations

import ast
import errno
import os
import pathlib

import numpy as np
import pytest

from cowprof import heapmap, procfs
from cowprof.errors import AccessDenied, CowprofError, ProcessGone
from cowprof.memreader import MemoryAccessDenied, MemReader, ptrace_requirement

PATH = "/fake/proc/4242/maps"
COWPROF = pathlib.Path(__file__).resolve().parents[2] / "cowprof"


# ------------------------------------------------------------------------ wrap_exceptions


def _raised(err: BaseException, pid: int | None = 4242, **kw) -> BaseException:
    with pytest.raises(BaseException) as ei, procfs.wrap_exceptions(pid, PATH, **kw):
        raise err
    return ei.value


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ESRCH])
def test_a_missing_file_or_process_is_process_gone(code):
    exc = _raised(OSError(code, os.strerror(code), PATH))
    assert type(exc) is ProcessGone and exc.pid == 4242 and exc.exit_code == 3
    assert str(exc) == "process 4242 does not exist (or exited)"
    assert exc.__cause__ is None and exc.__suppress_context__  # one line, no chained OSError


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ESRCH])
def test_a_missing_file_of_the_system_is_a_missing_kernel_feature(code):
    exc = _raised(OSError(code, os.strerror(code)), pid=None)
    assert type(exc) is CowprofError and exc.exit_code == 1
    assert str(exc) == f"{PATH} does not exist (kernel without this feature?)"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_no_rights_is_access_denied(code, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    exc = _raised(OSError(code, os.strerror(code)))
    assert type(exc) is AccessDenied and exc.pid == 4242 and exc.exit_code == 4
    assert str(exc) == ("permission denied reading process 4242: run cowprof as the same user as the "
                        "server, or as root")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_no_rights_to_a_file_of_the_system_says_root_is_needed(code):
    exc = _raised(OSError(code, os.strerror(code)), pid=None)
    assert type(exc) is AccessDenied and exc.pid is None and exc.exit_code == 4
    assert str(exc) == f"permission denied reading {PATH}: this needs root (CAP_SYS_ADMIN)"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_denied_makes_the_access_error(code):
    made = MemoryAccessDenied(4242)
    exc = _raised(OSError(code, os.strerror(code)), denied=lambda: made)
    assert exc is made
    # the other errors keep their meaning
    assert type(_raised(OSError(errno.ESRCH, "No such process"), denied=lambda: made)) is ProcessGone


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.ENOMEM, errno.EBUSY, errno.EFAULT])
def test_any_other_errno_is_one_line_naming_the_file(code):
    exc = _raised(OSError(code, os.strerror(code)))
    assert type(exc) is CowprofError and exc.exit_code == 1
    assert str(exc) == f"cannot read {PATH}: {os.strerror(code)}"
    assert str(_raised(OSError(code, os.strerror(code)), verb="open")) == f"cannot open {PATH}: {os.strerror(code)}"


@pytest.mark.parametrize(("err", "kind"), [(FileNotFoundError(), ProcessGone), (ProcessLookupError(), ProcessGone),
                                           (PermissionError(), AccessDenied)])
def test_the_subclass_counts_without_an_errno(err, kind):
    assert type(_raised(err)) is kind


def test_other_exceptions_and_success_pass_unchanged():
    for err in (ValueError("x"), KeyboardInterrupt(), ProcessGone(1)):
        assert _raised(err) is err
    with procfs.wrap_exceptions(4242, PATH) as w:
        pass
    assert w.translate(OSError(errno.ESRCH, "x")).pid == 4242  # reusable: it holds no state


def test_a_real_syscall_error_is_translated(tmp_path):
    with pytest.raises(ProcessGone), procfs.wrap_exceptions(7, str(tmp_path / "7" / "stat")):
        os.open(str(tmp_path / "7" / "stat"), os.O_RDONLY)
    with pytest.raises(CowprofError, match="cannot read .*: Is a directory"), procfs.wrap_exceptions(7, str(tmp_path)):
        with open(tmp_path, "rb") as f:
            f.read()


@pytest.mark.parametrize(("code", "kind"), [(errno.ENOENT, ProcessGone), (errno.ESRCH, ProcessGone),
                                            (errno.EACCES, AccessDenied), (errno.EPERM, AccessDenied),
                                            (errno.EIO, CowprofError)])
def test_every_reader_translates_through_it(tmp_path, monkeypatch, code, kind):
    """The readers that used to open /proc by hand elsewhere (heapmap, attribution, preload, tree,
    memreader, remote) each give the same typed error for the same errno."""
    root = _root(tmp_path)
    _proc(root, 4242, "S", 100, environ=b"HOME=/h\0")

    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code))

    calls = {
        "read_environ": lambda: procfs.read_environ(4242, root),
        "read_children": lambda: procfs.read_children(4242, root),
        "read_link": lambda: procfs.read_link(4242, "exe", root),
        "owner": lambda: procfs.owner(4242, root),
        "open_fd": lambda: procfs.open_fd(4242, "mem", root),
        "read_stat": lambda: procfs.read_stat(4242, root),
        "identity": lambda: procfs.ProcessIdentity.read(4242, root),
        "pagemap": lambda: procfs.Pagemap(4242, root),
    }
    for fn in ("open", "listdir", "readlink", "stat"):
        monkeypatch.setattr(os, fn, fail)
    monkeypatch.setattr(procfs, "open", fail, raising=False)
    for name, call in calls.items():
        with pytest.raises(kind) as ei:
            call()
        assert type(ei.value) is kind, name
        assert "\n" not in str(ei.value) and (kind is CowprofError or ei.value.pid == 4242), name


def test_memreader_keeps_its_ptrace_message(tmp_path, monkeypatch):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 100)
    (pathlib.Path(root) / "sys/kernel/yama").mkdir(parents=True)
    (pathlib.Path(root) / "sys/kernel/yama/ptrace_scope").write_text("2\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(MemoryAccessDenied) as ei:
        MemReader(4242, root)
    assert ei.value.exit_code == 4 and ei.value.pid == 4242
    assert str(ei.value) == (f"reading the memory of process 4242 (/proc/4242/mem) needs ptrace rights: "
                             f"{ptrace_requirement(root)}")
    assert "ptrace_scope=0 (it is 2)" in str(ei.value)
    monkeypatch.undo()
    with pytest.raises(ProcessGone):
        MemReader(999, root)


def test_no_module_outside_procfs_opens_proc_files():
    """Every /proc read goes through cowprof.procfs: no other module builds a path from a procfs
    root (or a "/proc/" literal) and hands it to a call that touches the file system."""
    touching = {"open", "join", "stat", "lstat", "listdir", "scandir", "readlink", "exists", "lexists",
                "isdir", "isfile"}
    found = []
    for path in sorted(COWPROF.rglob("*.py")):
        if "procfs" in path.relative_to(COWPROF).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in touching:
                continue
            for arg in ast.walk(ast.Module(body=[ast.Expr(a) for a in node.args], type_ignores=[])):
                if (isinstance(arg, ast.Name) and arg.id == "procfs_root") or (
                        isinstance(arg, ast.Attribute) and arg.attr == "procfs_root") or (
                        isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("/proc/")):
                    found.append(f"{path.relative_to(COWPROF)}:{node.lineno}")
    assert not found, sorted(set(found))


# ----------------------------------------------------------------------- ProcessIdentity


def _root(tmp_path: pathlib.Path, boot_id: str | None = "b00t-1") -> str:
    root = tmp_path / "proc"
    (root / "sys/kernel/random").mkdir(parents=True)
    if boot_id is not None:
        (root / "sys/kernel/random/boot_id").write_text(boot_id + "\n")
    return str(root)


def _proc(root: str, pid: int, state: str, ticks: int, *, ppid: int = 1, environ: bytes | None = None) -> None:
    d = pathlib.Path(root) / str(pid)
    d.mkdir(exist_ok=True)
    fields = ["0"] * 50  # fields 3..52
    fields[0], fields[1], fields[22 - 3] = state, str(ppid), str(ticks)
    (d / "stat").write_text(f"{pid} (my (odd) app) " + " ".join(fields) + "\n")
    if environ is not None:
        (d / "environ").write_bytes(environ)


def test_identity_is_read_from_stat_and_boot_id(tmp_path):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 123456)
    me = procfs.ProcessIdentity.read(4242, root)
    assert me == procfs.ProcessIdentity(4242, 123456, "b00t-1")
    assert (me.pid, me.start_ticks, me.boot_id) == (4242, 123456, "b00t-1")
    assert me.replace(start_ticks=1) == procfs.ProcessIdentity(4242, 1, "b00t-1")
    assert hash(me) == hash(procfs.ProcessIdentity(4242, 123456, "b00t-1"))
    assert repr(me) == "ProcessIdentity(pid=4242, start_ticks=123456, boot_id='b00t-1')"


def test_identity_without_a_boot_id_has_an_empty_one(tmp_path):
    root = _root(tmp_path, boot_id=None)
    _proc(root, 4242, "S", 5)
    assert procfs.ProcessIdentity.read(4242, root) == procfs.ProcessIdentity(4242, 5, "")
    assert procfs.read_boot_id(root) == ""


def test_the_boot_id_of_proc_is_read_once(monkeypatch):
    monkeypatch.setattr(procfs, "_boot_id", [])
    reads = []
    real = procfs.read_bytes

    def counted(pid, name, procfs_root="/proc"):
        reads.append((procfs_root, name))
        return real(pid, name, procfs_root)

    monkeypatch.setattr(procfs, "read_bytes", counted)
    first = procfs.read_boot_id()
    assert len(first) == 36 and first.count("-") == 4  # a UUID
    assert procfs.read_boot_id() == first and procfs.ProcessIdentity.read(os.getpid()).boot_id == first
    assert reads.count(("/proc", "sys/kernel/random/boot_id")) == 1


def test_identity_of_a_gone_or_zombie_process(tmp_path):
    root = _root(tmp_path)
    with pytest.raises(ProcessGone):
        procfs.ProcessIdentity.read(4242, root)
    assert procfs.ProcessIdentity.lookup(4242, root) is None
    _proc(root, 4242, "Z", 77)
    assert procfs.ProcessIdentity.read(4242, root).start_ticks == 77  # a zombie keeps its start time
    with pytest.raises(ProcessGone, match="zombie"):
        procfs.ProcessIdentity.read(4242, root, live=True)
    assert procfs.ProcessIdentity.lookup(4242, root) is None


def test_lookup_of_an_unreadable_process_knows_only_its_pid(tmp_path, monkeypatch):
    def denied(pid, procfs_root="/proc"):
        raise AccessDenied(pid)

    root = _root(tmp_path)
    monkeypatch.setattr(procfs, "read_stat", denied)
    assert procfs.ProcessIdentity.lookup(4242, root) == procfs.ProcessIdentity(4242, 0, "")
    with pytest.raises(AccessDenied):
        procfs.ProcessIdentity.read(4242, root)


def test_is_current_until_the_pid_is_reused_or_the_machine_rebooted(tmp_path, monkeypatch):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 100)
    me = procfs.ProcessIdentity.read(4242, root)
    assert me.is_current(root) and me.is_current(root, live=True)
    assert me.replace(boot_id="").is_current(root)  # no boot id: not compared
    _proc(root, 4242, "Z", 100)  # exited, not reaped yet
    assert me.is_current(root) and not me.is_current(root, live=True)
    _proc(root, 4242, "S", 101)  # the PID reused by another process
    assert not me.is_current(root)
    _proc(root, 4242, "S", 100)
    (pathlib.Path(root) / "sys/kernel/random/boot_id").write_text("b00t-2\n")  # same ticks, another boot
    assert not me.is_current(root) and me.replace(boot_id="b00t-2").is_current(root)
    (pathlib.Path(root) / "4242/stat").unlink()  # gone
    assert not me.replace(boot_id="b00t-2").is_current(root)

    def denied(pid, procfs_root="/proc"):
        raise AccessDenied(pid)

    _proc(root, 4242, "S", 100)
    monkeypatch.setattr(procfs, "read_stat", denied)
    assert not me.replace(boot_id="b00t-2").is_current(root)  # cannot tell: not current


@pytest.mark.parametrize(("a", "b", "same"), [
    ((1, 10, "x"), (1, 10, "x"), True),
    ((1, 10, "x"), (2, 10, "x"), False),  # another PID
    ((1, 10, "x"), (1, 11, "x"), False),  # the PID reused
    ((1, 10, "x"), (1, 10, "y"), False),  # another boot
    ((1, 0, ""), (1, 11, "y"), True),  # unknown start and boot: the PID alone
    ((1, 10, "x"), (1, 0, ""), True),
    ((1, 10, ""), (1, 10, "y"), True),
    ((1, 0, "x"), (1, 10, "y"), False),
])
def test_same_process_as_far_as_both_know(a, b, same):
    a, b = procfs.ProcessIdentity(*a), procfs.ProcessIdentity(*b)
    assert a.same_process(b) is same and b.same_process(a) is same


def test_a_heap_map_is_current_through_its_identity(tmp_path):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 100)
    hm = heapmap.HeapMap(pid=4242, start_ticks=100, boot_id="b00t-1", created_at=0.0,
                         addr=np.zeros(0, np.uint64), size=np.zeros(0, np.uint32), type=np.zeros(0, np.uint32),
                         type_names=np.array([""]))
    assert hm.identity == procfs.ProcessIdentity(4242, 100, "b00t-1")
    assert hm.is_current(root)
    _proc(root, 4242, "S", 200)
    assert not hm.is_current(root)


# ----------------------------------------------------------------------- the other readers


def test_environ_names_and_values(tmp_path):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 1, environ=b"HOME=/home/srv\0A=1\0A=2\0noequals\0EMPTY=\0X=a=b\0U=\xff\0")
    env = procfs.read_environ(4242, root)
    assert env == {"HOME": "/home/srv", "A": "2", "EMPTY": "", "X": "a=b", "U": "\udcff"}


def test_children_of_every_thread(tmp_path):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 1)
    for tid, kids in (("4242", "30 10 "), ("4243", "20\n"), ("4244", "")):
        (pathlib.Path(root) / "4242/task" / tid).mkdir(parents=True)
        (pathlib.Path(root) / "4242/task" / tid / "children").write_text(kids)
    assert procfs.read_children(4242, root) == [10, 20, 30]
    (pathlib.Path(root) / "4242/task/4244/children").write_text("x")
    with pytest.raises(CowprofError, match="not a list of PIDs"):
        procfs.read_children(4242, root)
    (pathlib.Path(root) / "4242/task/4244/children").unlink()  # CONFIG_PROC_CHILDREN off
    with pytest.raises(ProcessGone):
        procfs.read_children(4242, root)


@pytest.mark.parametrize(("text", "scope"), [("0\n", 0), ("1\n", 1), ("3", 3), ("", 0), ("x\n", None), (None, None)])
def test_ptrace_scope(tmp_path, text, scope):
    root = _root(tmp_path)
    if text is not None:
        (pathlib.Path(root) / "sys/kernel/yama").mkdir(parents=True)
        (pathlib.Path(root) / "sys/kernel/yama/ptrace_scope").write_text(text)
    assert procfs.ptrace_scope(root) == scope


def test_links_owner_and_descriptors(tmp_path):
    root = _root(tmp_path)
    _proc(root, 4242, "S", 1)
    os.symlink("/usr/bin/python3 (deleted)", os.path.join(root, "4242", "exe"))
    assert procfs.read_link(4242, "exe", root) == "/usr/bin/python3 (deleted)"
    assert procfs.owner(4242, root) == os.stat(os.path.join(root, "4242")).st_uid
    fd = procfs.open_fd(4242, "stat", root)
    try:
        assert os.read(fd, 5) == b"4242 "
    finally:
        os.close(fd)
    assert procfs.proc_path(4242, "mem", root) == os.path.join(root, "4242", "mem")
    assert procfs.proc_path(None, "kpagecount", root) == os.path.join(root, "kpagecount")
    for call in (lambda: procfs.read_link(9, "exe", root), lambda: procfs.owner(9, root),
                 lambda: procfs.open_fd(9, "mem", root)):
        with pytest.raises(ProcessGone):
            call()


# ----------------------------------------------------------------------- heap-map discovery


@pytest.mark.parametrize(("environ", "theirs"), [
    (b"COWPROF_HEAPMAP_DIR=/srv/maps\0XDG_RUNTIME_DIR=/run/user/7\0HOME=/home/srv\0", ["/srv/maps"]),
    (b"XDG_RUNTIME_DIR=/run/user/7\0HOME=/home/srv\0", ["/run/user/7/cowprof", "/home/srv/.cache/cowprof/heapmaps"]),
    (b"HOME=/home/srv\0", ["/home/srv/.cache/cowprof/heapmaps"]),
    (b"COWPROF_HEAPMAP_DIR=\0PATH=/bin\0", []),
])
def test_candidate_dirs_come_from_the_masters_environment(tmp_path, monkeypatch, environ, theirs):
    monkeypatch.setenv(heapmap.DIR_ENV, str(tmp_path / "mine"))
    root = _root(tmp_path)
    _proc(root, 4242, "S", 1, environ=environ)
    assert heapmap.candidate_dirs(4242, root) == [str(tmp_path / "mine"), *theirs]


def test_candidate_dirs_of_a_gone_or_unreadable_master(tmp_path, monkeypatch):
    monkeypatch.setenv(heapmap.DIR_ENV, str(tmp_path / "mine"))
    root = _root(tmp_path)
    with pytest.raises(ProcessGone):
        heapmap.candidate_dirs(4242, root)

    def denied(pid, procfs_root="/proc"):
        raise AccessDenied(pid)

    monkeypatch.setattr(procfs, "read_environ", denied)
    assert heapmap.candidate_dirs(4242, root) == [str(tmp_path / "mine")]


def test_find_heapmap_takes_the_current_map_of_a_live_master(tmp_path):
    root = _root(tmp_path)
    maps = tmp_path / "maps"
    _proc(root, 4242, "S", 100, environ=f"COWPROF_HEAPMAP_DIR={maps}\0".encode())
    hm = heapmap.HeapMap(pid=4242, start_ticks=100, boot_id="b00t-1", created_at=5.0,
                         addr=np.array([4096], np.uint64), size=np.array([32], np.uint32),
                         type=np.zeros(1, np.uint32), type_names=np.array(["dict"]))
    heapmap.save(hm, str(maps))
    found = heapmap.find_heapmap(4242, procfs_root=root)
    assert found.identity == hm.identity and found.addr.tolist() == [4096]
    assert heapmap.find_heapmap(4242, procfs_root=root, directory=str(maps)).created_at == 5.0
    _proc(root, 4242, "Z", 100)  # exited, not reaped: its map still looks current, the master is gone
    with pytest.raises(ProcessGone, match="exited while its heap map was looked up"):
        heapmap.find_heapmap(4242, procfs_root=root)
    _proc(root, 4242, "S", 101)  # the PID reused: the map is not this process's
    with pytest.raises(heapmap.NoHeapMap, match="no current heap map for master 4242") as ei:
        heapmap.find_heapmap(4242, procfs_root=root)
    assert ei.value.exit_code == 2
    (pathlib.Path(root) / "4242/stat").unlink()
    with pytest.raises(ProcessGone):
        heapmap.find_heapmap(4242, procfs_root=root, directory=str(maps))


def test_memreader_takes_an_address_no_offset_can_name_as_unreadable():
    """A pointer read from a target's memory may be anything: an address at or above 2**63 (what
    preadv's signed offset cannot name) is a page that cannot be read, not an OverflowError."""
    from cowprof.remote.target import Memory

    here = np.zeros(4096, dtype=np.uint8)
    with MemReader(os.getpid()) as reader:
        addrs = np.array([1 << 63, 0xFFFF_FFFF_FFFF_F000], dtype=np.uint64)
        ok = reader.read_pages(addrs, np.zeros((2, 4096), dtype=np.uint8), 4096)
        assert ok.tolist() == [False, False]
        page = here.ctypes.data & ~4095
        readable = reader.read_pages(np.array([page], dtype=np.uint64), np.zeros((1, 4096), np.uint8), 4096)
        assert readable.tolist() == [True]
    with Memory(os.getpid()) as mem:
        assert mem.word((1 << 63) + 8) is None and mem.word((1 << 64) - 4) is None and mem.read(-8, 8) is None
