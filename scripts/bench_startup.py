#!/usr/bin/env python3
"""Benchmark of cowprof's start-up: ``cowprof --help`` whole, and ``cowprof snapshot PID --json`` up
to its first /proc read (where start-up ends and the work begins), with peers from the same run.

Each round runs every case once, as a fresh process (interleaved, ``--repeat`` rounds, medians):

* ``cowprof --help`` and ``cowprof --version``: whole process, wall and CPU time (user + system,
  from ``wait4``); ``--help`` three ways: served from the help cache (what every request after the
  first prints from, cowprof.helpcache), first (an empty cache: Typer renders it and it is
  stored) and with the cache off (``COWPROF_HELP_CACHE=0``: Typer only);
* ``cowprof snapshot PID --json`` up to its first /proc read: the same entry point (``from
  cowprof.cli import main; sys.exit(main())``, what the ``cowprof`` script runs) under ``python
  -c`` with an audit hook (``sys.addaudithook``; Python's ``open`` event fires for ``open()`` and
  ``os.open()``) that, at the first open of a ``/proc/<pid>/...`` file, writes the time
  (CLOCK_MONOTONIC, system-wide, against the one taken right before the process was started) and
  the process's CPU time so far, and exits. No change to cowprof itself, no ptrace overhead; the
  hook costs a Python call per audited event (a few hundred here);
* ``cowprof snapshot PID --json`` whole, on a small fork tree (tests/forktree_prog.py), for scale;
* peers: ``python -c pass`` (this interpreter: its site-packages, e.g. an editable install's
  finder, are in every figure above), ``smem --help`` (when installed; Debian's, on the system
  Python) and ``/usr/bin/python3 -c pass`` (smem's interpreter).

Then, once each: ``python -X importtime`` of both (the top-level imports, by cumulative time) and a
cProfile count of ``compile``/``exec``/``eval`` calls up to the same point (code generated at
start-up: dataclasses, namedtuples, typing's ForwardRef compiles). ``--strace`` cross-checks the
first-/proc-read mark with ``strace -f -ttt -e trace=execve,openat`` on the real ``cowprof`` script
(the time from its execve to the first openat of /proc/<pid>/; tracing slows every traced call).
Target (issue 17): both under 150 ms.

    .venv/py3.12/bin/python scripts/bench_startup.py [--repeat 11] [--strace] [--json]
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from forktree import ForkTree  # noqa: E402

HELP_PROFILE = """
import cProfile, pstats, sys
from cowprof.cli import main
p = cProfile.Profile(); p.enable()
try:
    main(['--help'])
except SystemExit:
    pass
p.disable()
c = {k[2]: v[1] for k, v in pstats.Stats(p).stats.items() if k[0] == '~'}
print({n: c.get(f'<built-in method builtins.{n}>', 0) for n in ('compile', 'exec', 'eval')}, file=sys.stderr)
"""
ENTRY = "import sys\nfrom cowprof.cli import main\nsys.exit(main())\n"
MARK = r'''
import os, sys, time
_fd = int(os.environ.pop("COWPROF_BENCH_FD"))
_prof = None
if os.environ.pop("COWPROF_BENCH_PROFILE", None):
    import cProfile
    _prof = cProfile.Profile()

def _first_proc_read(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/") and args[0][6:7].isdigit():
        t, cpu = time.clock_gettime(time.CLOCK_MONOTONIC), time.process_time()
        generated = ""
        if _prof is not None:
            _prof.disable()
            import json, pstats
            calls = {k[2]: v[1] for k, v in pstats.Stats(_prof).stats.items() if k[0] == "~"}
            generated = " " + json.dumps({n: calls.get(f"<built-in method builtins.{n}>", 0)
                                          for n in ("compile", "exec", "eval")})
        os.write(_fd, f"{t} {cpu} {args[0]}{generated}\n".encode())
        os._exit(0)

sys.addaudithook(_first_proc_read)
if _prof is not None:
    _prof.enable()
''' + ENTRY


def run(cmd: list[str], env: dict[str, str] | None = None, mark: bool = False) -> tuple[float, float, str]:
    """(wall s, CPU s, mark line) of one process: wall and CPU to its first /proc read when ``mark``."""
    r, w = os.pipe() if mark else (-1, -1)
    env = dict(os.environ if env is None else env)
    if mark:
        env["COWPROF_BENCH_FD"] = str(w)
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    # cwd "/": ``python -c`` puts the working directory first on sys.path
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd="/",
                            pass_fds=(w,) if mark else ())
    if mark:
        os.close(w)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.clock_gettime(time.CLOCK_MONOTONIC) - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {err[-500:]}")
    line = ""
    if mark:
        with os.fdopen(r, "rb") as f:
            line = f.read().decode().strip()
        if not line:
            raise RuntimeError(f"{cmd}: no /proc read seen")
        t_mark, cpu_mark = line.split()[:2]
        return float(t_mark) - t0, float(cpu_mark), line
    return wall, ru.ru_utime + ru.ru_stime, line


def importtime(python: str, args: list[str], top: int) -> list[str]:
    err = subprocess.run([python, "-X", "importtime", "-c", MARK, *args], capture_output=True, text=True,
                         env={**os.environ, "COWPROF_BENCH_FD": "2", "COWPROF_HELP_CACHE": "0"}, cwd="/").stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[3]) <= 3:  # top-level imports and their direct children
            rows.append((int(m[2]), int(m[1]), len(m[3]) // 2, m[4]))
    total = sum(c for c, _s, depth, _n in rows if depth == 0)
    out = [f"  imports before it: {total / 1000:.1f} ms in all (top level, cumulative)"]
    for cum, own, depth, name in sorted(rows, reverse=True)[:top]:
        out.append(f"  {cum / 1000:7.1f} ms cumulative {own / 1000:6.1f} self  {'  ' * depth}{name}")
    return out


def strace_mark(cowprof: str, args: list[str]) -> float | None:
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        subprocess.run([strace, "-f", "-qq", "-ttt", "--seccomp-bpf", "-e", "trace=execve,openat", "-o", log.name,
                        cowprof, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        start = first = None
        for line in log:
            m = re.match(r"\d+\s+(\d+\.\d+) (\w+)\((.*)", line)
            if not m:
                continue
            if m[2] == "execve" and start is None:
                start = float(m[1])
            elif m[2] == "openat" and re.search(r'"/proc/\d+/', m[3]):
                first = float(m[1])
                break
    return first - start if start is not None and first is not None else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--top", type=int, default=12, help="importtime rows shown")
    ap.add_argument("--strace", action="store_true", help="cross-check the mark with strace")
    ap.add_argument("--json", action="store_true", help="also print the medians as one JSON line")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                    help="time the cowprof cases again with the checkout DIR first on PYTHONPATH "
                         "(e.g. main=../main), interleaved in the same rounds")
    args = ap.parse_args(argv)

    # as installed: bytecode for every module (PYTHONDONTWRITEBYTECODE or a fresh checkout would
    # have each run compile cowprof's sources again)
    for where in [ROOT, *(spec.partition("=")[2] for spec in args.also)]:
        compileall.compile_dir(os.path.join(os.path.abspath(where), "cowprof"), quiet=1)
    py = sys.executable
    cowprof = os.path.join(os.path.dirname(py), "cowprof")
    smem = shutil.which("smem")
    sys_python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
    print(f"python {platform.python_version()} ({py}), {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    if smem is None:
        print("smem is not installed (Debian: apt-get install smem): no smem peer")
    with ForkTree(workers=2, master_mb=16, write_pages=64) as tree:
        pid = str(tree.master_pid)
        help_dirs = tempfile.mkdtemp(prefix="cowprof-bench-help-")  # the help caches of this run
        help_dir = tempfile.mkdtemp(dir=help_dirs)
        cases: list[tuple] = [
            ("cowprof --help", [cowprof, "--help"], False, {**os.environ, "COWPROF_HELP_CACHE": help_dir}),
            ("cowprof --help, first", [cowprof, "--help"], False, {**os.environ, "COWPROF_HELP_CACHE": ""}),
            ("cowprof --help, no cache", [cowprof, "--help"], False, {**os.environ, "COWPROF_HELP_CACHE": "0"}),
            ("cowprof --version", [cowprof, "--version"], False, None),
            ("snapshot to first /proc read", [py, "-c", MARK, "snapshot", pid, "--json"], True, None),
            ("snapshot whole (small tree)", [cowprof, "snapshot", pid, "--json"], False, None),
            ("python -c pass", [py, "-c", "pass"], False, None),
        ]
        for spec in args.also:
            label, _, where = spec.partition("=")
            env = {**os.environ, "PYTHONPATH": os.path.abspath(where)}
            cases += [(f"{label}: {name}", cmd, mark, {**(case_env or os.environ), **env})
                      for name, cmd, mark, case_env in cases[:6]]
        if smem:
            cases.append(("smem --help", [smem, "--help"], False, None))
        if sys_python:
            cases.append(("/usr/bin/python3 -c pass", [sys_python, "-c", "pass"], False, None))
        res: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in cases}
        marks = set()
        for rnd in range(args.repeat + 1):  # round 0 warms caches and is not counted
            for name, cmd, mark, env in cases:
                if name.endswith(", first"):  # an empty cache directory each time
                    env = {**env, "COWPROF_HELP_CACHE": tempfile.mkdtemp(dir=help_dirs)}
                if rnd == 0:
                    # and writes the bytecode of every module the case imports, as `pip install`
                    # (which compiles what it installs) would have: scripts/_env.sh installs with
                    # --no-compile, and under PYTHONDONTWRITEBYTECODE Typer, Rich and Click would
                    # be compiled again at every start (~200 ms of `--help`)
                    env = {k: v for k, v in (os.environ if env is None else env).items()
                           if k != "PYTHONDONTWRITEBYTECODE"}
                wall, cpu, line = run(cmd, env=env, mark=mark)
                if mark:
                    marks.add(line.split()[2].split("/")[3] if line else "")
                if rnd:
                    res[name][0].append(wall)
                    res[name][1].append(cpu)
        print(f"median of {args.repeat} interleaved rounds (first /proc read: /proc/<pid>/{', '.join(sorted(marks))}):")
        summary = {}
        for name, (walls, cpus) in res.items():
            summary[name] = {"wall_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3}
            print(f"  {name:30s} wall {summary[name]['wall_ms']:6.1f} ms (min {min(walls) * 1e3:6.1f})  "
                  f"CPU {summary[name]['cpu_ms']:6.1f} ms")
        base = summary["python -c pass"]
        for name in ("cowprof --help", "cowprof --help, first", "cowprof --help, no cache",
                     "snapshot to first /proc read"):
            print(f"  {name}: {summary[name]['wall_ms'] - base['wall_ms']:.1f} ms wall over python -c pass "
                  f"(target: at most 150 ms in all)")

        for title, cmd_args in (("cowprof --help", ["--help"]), ("snapshot to first /proc read",
                                                                 ["snapshot", pid, "--json"])):
            print(f"{title}, python -X importtime:")
            print("\n".join(importtime(py, cmd_args, args.top)))
        r, w = os.pipe()
        subprocess.run([py, "-c", MARK, "snapshot", pid, "--json"], pass_fds=(w,), stdout=subprocess.DEVNULL, cwd="/",
                       env={**os.environ, "COWPROF_BENCH_FD": str(w), "COWPROF_BENCH_PROFILE": "1"}, check=True)
        os.close(w)
        with os.fdopen(r) as f:
            line = f.read().strip()
        generated = json.loads(line.split(" ", 3)[3]) if line.count(" ") >= 3 else {}
        print(f"snapshot to first /proc read, cProfile: built-in calls {generated} (compile: generated code "
              f"and string annotations Typer resolves; exec/eval: dataclass and namedtuple methods, imports)")
        helpgen = subprocess.run([py, "-c", HELP_PROFILE], capture_output=True, text=True, cwd="/",
                                 env={**os.environ, "COWPROF_HELP_CACHE": "0"}).stderr.strip().splitlines()[-1]
        print(f"cowprof --help, cProfile: built-in calls {helpgen}")
        if args.strace:
            s = strace_mark(cowprof, ["snapshot", pid, "--json"])
            print("strace cross-check: " + (f"execve to the first openat of /proc/<pid>/ {s * 1e3:.1f} ms (traced)"
                                            if s is not None else "strace not installed or no mark"))
        shutil.rmtree(help_dirs)
    if args.json:
        print(json.dumps({"load": os.getloadavg()[0], "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
