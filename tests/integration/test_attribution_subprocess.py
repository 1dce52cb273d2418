"""Attribution facts that need a process of their own: what the heap walk writes into an object
(in a fresh interpreter), and the heap-map directories read from a master's environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cowprof import heapmap

needs_native = pytest.mark.skipif(sys.version_info < (3, 12), reason="the object layout comes from cowprof._native, "
                                  "which walks only on CPython 3.12+ (the 3.11 run is the profiler side)")


@needs_native
def test_immortalizing_writes_only_the_refcount_word():
    """What the walk writes into an object lies inside the layout's refcount word, so a worker page
    changed there is attributed to "refcount"."""
    out = subprocess.run([sys.executable, "-c", """
import ctypes, json, sys
from cowprof import _native, heapmap
lay = heapmap.object_layout(*heapmap.preheader_sizes())
obj = [float(i) + 0.5 for i in range(3)]
x = obj[1]
before = ctypes.string_at(id(x), sys.getsizeof(x))
_native.walk(hash_strings=False, tag_types=False)
after = ctypes.string_at(id(x), sys.getsizeof(x))
changed = [i for i in range(len(before)) if before[i] != after[i]]
print(json.dumps({"changed": changed, "lo": lay["refcount_offset"], "hi": lay["refcount_offset"] + lay["refcount_size"],
                  "immortal": _native.is_immortal(x)}))
"""], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["immortal"] and r["changed"]
    assert all(r["lo"] <= i < r["hi"] for i in r["changed"]), r


def test_candidate_dirs_come_from_the_masters_environment(tmp_path):
    code = "import sys; print('up', flush=True); sys.stdin.read()"
    env = {"PATH": os.environ.get("PATH", ""), "XDG_RUNTIME_DIR": "/run/user/4242", "HOME": "/home/srv"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e)
             for e in (env, {**env, "COWPROF_HEAPMAP_DIR": str(tmp_path / "maps")})]
    try:
        for p in procs:
            assert p.stdout.readline() == b"up\n"
        plain, explicit = (heapmap.candidate_dirs(p.pid, "/proc") for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=10)
            p.stdout.close()
    assert "/run/user/4242/cowprof" in plain and "/home/srv/.cache/cowprof/heapmaps" in plain
    assert str(tmp_path / "maps") in explicit and "/run/user/4242/cowprof" not in explicit
