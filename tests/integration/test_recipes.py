"""cowprof.recipes for other pre-fork servers: a real os.fork in a child interpreter."""
from __future__ import annotations

import os
import subprocess
import sys


_FORK_PROG = """
import gc, os, sys
from cowprof import disable_gc_until_fork
from cowprof.recipes import prepare_parent, register_after_fork, uwsgi_postfork
disable_gc_until_fork()
data = [{"k": str(i), "v": float(i)} for i in range(10000)]
report = prepare_parent()
again = register_after_fork()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, b"1" if gc.isenabled() else b"0")
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(r, 1).decode(), int(gc.isenabled()), int(again), int(uwsgi_postfork()), int(report.frozen > 0))
"""


def test_prepare_parent_restores_gc_in_forked_children():
    env = {k: v for k, v in os.environ.items() if not k.startswith("COWPROF_") or k.endswith("_DIR")}  # the suite's dirs
    proc = subprocess.run([sys.executable, "-c", _FORK_PROG], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    # child: GC back on (after_fork ran through os.register_at_fork); parent: still off until its
    # own fork-time policy says otherwise; a second registration is refused; no uWSGI here
    assert proc.stdout.split() == ["1", "0", "0", "0", "1"]
