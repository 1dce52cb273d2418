"""cowprof.tree.find_tree on real processes: a plain os.fork() tree, gunicorn, and the errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from forktree import ForkTree, unprivileged_python

from cowprof.errors import AccessDenied, NotAPreforkTree, ProcessGone
from cowprof.tree import Tree, find_tree


@pytest.fixture(scope="module")
def tree():
    with ForkTree(workers=3, master_mb=1) as t:
        yield t


def test_from_master_and_from_each_worker(tree):
    want = Tree(tree.master_pid, tuple(sorted(tree.worker_pids)))
    assert find_tree(tree.master_pid) == want
    for pid in tree.worker_pids:
        assert find_tree(pid) == want


def test_exec_child_of_same_interpreter_is_not_a_worker():
    # pytest -> python child: same executable, but exec'd, not forked: not a pre-fork tree
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.DEVNULL)
    try:
        assert psutil.Process(child.pid).exe() == psutil.Process().exe()
        with pytest.raises(NotAPreforkTree, match="no forked children"):
            find_tree(child.pid)
    finally:
        child.kill()
        child.wait()


def test_master_of_exec_children_is_not_a_tree():
    # the baseline of the test above: the same exec'd child seen from its parent side
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
         " print(p.pid, flush=True); p.wait()"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        kid = int(parent.stdout.readline())
        assert psutil.Process(kid).ppid() == parent.pid
        with pytest.raises(NotAPreforkTree):
            find_tree(parent.pid)
        with pytest.raises(NotAPreforkTree):
            find_tree(kid)
    finally:
        for p in psutil.Process(parent.pid).children():
            p.kill()
        parent.kill()
        parent.wait()


def test_killed_worker_is_not_listed():
    with ForkTree(workers=2, master_mb=1) as t:
        dead = t.worker_pids[0]
        t.kill_worker(dead)
        assert find_tree(t.master_pid) == Tree(t.master_pid, (t.worker_pids[0],))


def test_master_without_live_workers_is_not_a_tree():
    with ForkTree(workers=1, master_mb=1) as t:
        t.kill_worker(t.worker_pids[0])
        with pytest.raises(NotAPreforkTree) as ei:
            find_tree(t.master_pid)
        assert ei.value.exit_code == 5 and "\n" not in str(ei.value)


def test_missing_and_invalid_pids():
    with pytest.raises(ProcessGone):
        find_tree(2**22 + 12345)  # above pid_max's default range
    with pytest.raises(NotAPreforkTree):
        find_tree(0)


def test_zombie_is_process_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ProcessGone):
            find_tree(child.pid)
    finally:
        child.wait()


APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_master_and_workers(tmp_path, preload):
    pytest.importorskip("gunicorn")
    (tmp_path / "tinyapp.py").write_text(APP)
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:0", "--chdir", str(tmp_path),
           "--graceful-timeout", "1", "tinyapp:app"]
    if preload:
        cmd.insert(-1, "--preload")
    master = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc = psutil.Process(master.pid)
        deadline = time.monotonic() + 30
        while len(proc.children()) < 2:
            assert master.poll() is None, master.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "gunicorn workers did not start"
            time.sleep(0.05)
        workers = tuple(sorted(c.pid for c in proc.children()))
        assert find_tree(master.pid) == Tree(master.pid, workers)
        assert find_tree(workers[1]) == Tree(master.pid, workers)
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(timeout=15)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


def test_other_users_tree_is_access_denied_when_unprivileged(tree):
    py, why = unprivileged_python()
    if py is None:
        pytest.skip(why)
    code = ("import sys\nfrom cowprof.tree import find_tree\nfrom cowprof.errors import CowprofError\n"
            "try:\n    find_tree(int(sys.argv[1]))\nexcept CowprofError as e:\n"
            "    print(type(e).__name__, e); sys.exit(e.exit_code)\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c", code,
                        str(tree.master_pid)], cwd="/", capture_output=True, timeout=60)
    out = r.stdout.decode()
    assert r.returncode == AccessDenied.exit_code, (out, r.stderr.decode())
    assert out.startswith("AccessDenied") and "same user" in out and "root" in out


def test_same_user_tree_is_found_when_unprivileged():
    py, why = unprivileged_python()
    if py is None:
        pytest.skip(why)
    with ForkTree(workers=2, master_mb=1, user=(65534, 65534), python=py) as t:
        code = "import sys\nfrom cowprof.tree import find_tree\nprint(find_tree(int(sys.argv[1])))"
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c", code,
                            str(t.worker_pids[0])], cwd="/", capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().strip() == repr(Tree(t.master_pid, tuple(sorted(t.worker_pids))))
        assert os.stat(f"/proc/{t.master_pid}").st_uid == 65534
