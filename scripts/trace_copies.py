"""Which code first wrote each page a gunicorn worker copied, at its start and under load.

A diagnostic for cowprof's developers (it found 3.14's constant loads and the split below), not a
benchmark: the stock Django project of ``bench_warmup.py`` runs under gunicorn with cowprof's hook
(default settings unless ``--env`` says otherwise), one sync worker. ``perf record -e
exceptions:page_fault_user -g`` is attached to the master, the worker is stopped so that the master
forks a new one under the trace, and the new worker serves the load. Of its write faults, the first
on each page that cowprof's scan then finds copied is kept, and those are counted by mapping and
faulting function, split into ``boot`` (before the first request) and ``load``, and by the type of
the object of the master's heap map that holds the written byte ("no object" outside them all).

    .venv/py3.12/bin/python scripts/trace_copies.py [--requests 3000] [--env '{"COWPROF_...": "0"}']

Needs root and ``perf`` (Debian: ``apt-get install linux-perf``); says so and exits 1 without.
Function names come from the interpreter's symbols (pyenv's builds have them; Debian's stripped
packages give addresses).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]  # test helpers, the demo package
os.environ.setdefault("COWPROF_HEAPMAP_DIR", tempfile.mkdtemp(prefix="cowprof-trace-heapmaps-"))

from bench_warmup import REQUEST_MIX  # noqa: E402  (the same load as the benchmark's)
from djangoproj import make_project  # noqa: E402
from gunicorn_server import GunicornServer  # noqa: E402

from cowprof import heapmap, procfs  # noqa: E402
from cowprof.pages import scan  # noqa: E402
from demo.loadgen import run_load  # noqa: E402

FAULT = re.compile(r"address=(0x[0-9a-f]+) ip=0x[0-9a-f]+ error_code=(0x[0-9a-f]+)")
WRITE = 0x2  # x86 page fault error code: the access was a write
PAGE = os.sysconf("SC_PAGE_SIZE")


def respawned_worker(master: int, old: int, timeout: float = 20.0) -> int:
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        workers = [w.pid for w in scan(master).workers]
        if workers and old not in workers:
            return workers[0]
    raise SystemExit(f"trace_copies: the master did not fork a new worker within {timeout:.0f} s")


def first_writes(script: str, pid: int, pages: set[int]) -> list[tuple[float, int, list[str]]]:
    """(time, address, frames) of the first write fault of ``pid`` on each page of ``pages``."""
    out, seen = [], set()
    for event in script.split("\n\n"):
        lines = event.strip().splitlines()
        head = lines[0].split() if lines else []
        m = FAULT.search(event)
        if len(head) < 4 or head[1] != str(pid) or not m or not int(m[2], 16) & WRITE:
            continue
        address = int(m[1], 16)
        if address // PAGE not in pages or address // PAGE in seen:
            continue
        seen.add(address // PAGE)
        frames = [re.sub(r"\+0x[0-9a-f]+$", "", f.split()[1]) for f in lines[1:] if len(f.split()) > 1]
        out.append((float(head[3].rstrip(":")), address, [f for f in frames if "exc_page_fault" not in f]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--env", default="{}", help="JSON object of environment variables for the server")
    p.add_argument("--top", type=int, default=20, help="rows per phase")
    args = p.parse_args(argv)
    if shutil.which("perf") is None or os.geteuid() != 0:
        print("trace_copies: needs root and perf (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="cowprof-trace-"))
    env = {"COWPROF_PRELOAD_DIR": str(tmp / "preload"), **json.loads(args.env)}
    server = GunicornServer(make_project(tmp / "project"), "mysite.wsgi:application", 1, env, tmp / "server.log")
    try:
        server.wait_ready()
        perf = subprocess.Popen(["perf", "record", "-q", "-g", "-k", "CLOCK_MONOTONIC", "-e",
                                 "exceptions:page_fault_user", "-p", str(server.pid), "-o", str(tmp / "faults.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # perf attached
        worker = respawned_worker(server.pid, scan(server.pid).workers[0].pid)
        time.sleep(2.0)  # the worker's start is over
        at_boot = scan(server.pid).workers[0].copied_bytes // PAGE
        load_started = time.monotonic()
        paths = (REQUEST_MIX * (args.requests // len(REQUEST_MIX) + 1))[:args.requests]
        run_load("127.0.0.1", server.port, paths, concurrency=2, deadline=300)
        time.sleep(0.5)
        perf.send_signal(signal.SIGINT)
        perf.wait()
        report = scan(server.pid, keep_addresses=True).workers[0]
        objects = heapmap.find_heapmap(server.pid)
        copied = {int(a) // PAGE for a in (report.copied_addrs if report.copied_addrs is not None else ())}
        maps = procfs.read_maps(worker)
        script = subprocess.run(["perf", "script", "-i", str(tmp / "faults.data")], capture_output=True,
                                text=True, check=True).stdout
    finally:
        server.stop()

    def mapping(address: int) -> str:
        m = next((m for m in maps if m.start <= address < m.end), None)
        if m is None:
            return "?"
        return os.path.basename(m.path) if m.path.startswith("/") else (m.path or "anonymous")

    def holder(address: int) -> str:
        i = int(objects.addr.searchsorted(address, side="right")) - 1
        if i >= 0 and address < int(objects.addr[i]) + int(objects.size[i]):
            return str(objects.type_names[int(objects.type[i])])
        return "no object"

    writes = first_writes(script, worker, copied)
    print(f"worker {worker}: {len(copied)} pages copied ({at_boot} of them at its start), "
          f"{report.new_bytes // PAGE} new; first write traced for {len(writes)}")
    for phase, at_load in (("boot", False), ("load", True)):
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        types: collections.Counter[str] = collections.Counter()
        for t, address, frames in writes:
            if (t >= load_started) == at_load:
                counts[(mapping(address), frames[0] if frames else "?", holder(address))] += 1
                types[holder(address)] += 1
        print(f"\n{phase}: {sum(counts.values())} pages; by type: "
              + ", ".join(f"{name} {n}" for name, n in types.most_common(8)))
        for (where, function, held_by), n in counts.most_common(args.top):
            print(f"  {n:5d}  {where:22s} {function:40s} {held_by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
