"""Shared test setup: puts tests/ on sys.path so helpers like ``forktree`` import from any test dir (and
the repository root for the demo package, ``demo/``, not installed), and the factories of page reports,
samples and record headers that tests build by hand (``from conftest import ...``).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
for _path in (REPO_ROOT, TESTS_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# Test modules import the factories below with ``from conftest import ...``: pytest loads this file
# under its own name, so that import runs it once more, which is harmless (everything here is
# idempotent) and registers no fixture twice (pytest collects fixtures from its own copy only).

# the docs' commands are a gate that scripts/test runs once (COWPROF_DOCS_CHECK=1), not per version
if os.environ.get("COWPROF_DOCS_CHECK") != "1":
    collect_ignore = ["docs_commands"]

# prepare_fork saves heap maps by default: keep the tests' maps out of the user's directory
if "COWPROF_HEAPMAP_DIR" not in os.environ:
    import tempfile

    os.environ["COWPROF_HEAPMAP_DIR"] = tempfile.mkdtemp(prefix="cowprof-test-heapmaps-")

# the workers' late-import records (cowprof.preload) likewise
if "COWPROF_PRELOAD_DIR" not in os.environ:
    import tempfile

    os.environ["COWPROF_PRELOAD_DIR"] = tempfile.mkdtemp(prefix="cowprof-test-preload-")

# and the help cache (cowprof.helpcache)
if "COWPROF_HELP_CACHE" not in os.environ:
    import tempfile

    os.environ["COWPROF_HELP_CACHE"] = tempfile.mkdtemp(prefix="cowprof-test-help-")

MiB = 1 << 20


@pytest.fixture
def preload_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A directory of late-import records (cowprof.preload) of its own, for the app key ``test-app``."""
    from cowprof import preload

    d = tmp_path / "preload"
    monkeypatch.setenv(preload.ENV_DIR, str(d))
    monkeypatch.setenv(preload.ENV_KEY, "test-app")
    return d


# --- page reports in the documented JSON shape (PageReport.to_dict / from_dict) ----------------

def region_dict(shared: int = 0, copied: int = 0, new: int = 0) -> dict[str, int]:
    return {"shared_bytes": shared, "copied_bytes": copied, "new_bytes": new}


def master_dict(pid: int = 10, *, started_at: float = 900.0, rss: int = 40 * MiB, pss: int = 20 * MiB,
                uss: int = 5 * MiB, swap: int = 0, diverged: int = 0,
                regions: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    return {"pid": pid, "started_at": started_at, "rss_bytes": rss, "pss_bytes": pss, "uss_bytes": uss,
            "swap_bytes": swap, "diverged_bytes": diverged, "regions": {} if regions is None else regions}


def worker_dict(pid: int, copied: int, *, started_at: float = 901.0, rss: int = 30 * MiB, pss: int = 10 * MiB,
                uss: int | None = None, swap: int = 0, shared: int = 16 * MiB, new: int = MiB,
                regions: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """A worker that copied ``copied`` bytes; ``uss`` defaults to them, ``regions`` to all of its
    pages in the python region."""
    return {"pid": pid, "started_at": started_at, "rss_bytes": rss, "pss_bytes": pss,
            "uss_bytes": copied if uss is None else uss, "swap_bytes": swap, "shared_bytes": shared,
            "copied_bytes": copied, "new_bytes": new,
            "regions": {"python": region_dict(shared, copied, new)} if regions is None else regions}


def report_dict(workers: Iterable[dict[str, Any]] | None = None, *, master: dict[str, Any] | None = None,
                taken_at: float = 1000.0, scan_seconds: float = 0.01, page_size: int = 4096,
                mode: str = "exclusive-bit", privileged: bool = False,
                gone: Iterable[int] = ()) -> dict[str, Any]:
    """A page report: by default master 10 with workers 11 and 12 (3 and 7 MiB copied)."""
    if workers is None:
        workers = [worker_dict(11, 3 * MiB), worker_dict(12, 7 * MiB)]
    return {"version": 1, "taken_at": taken_at, "privileged": privileged, "mode": mode, "page_size": page_size,
            "scan_seconds": scan_seconds, "master": master_dict() if master is None else master,
            "workers": list(workers), "gone": list(gone)}


def page_report(workers: Iterable[dict[str, Any]] | None = None, *,
                copied_addrs: dict[int, Iterable[int]] | None = None, **kwargs: Any) -> Any:
    """:func:`report_dict` read back as a ``cowprof.pages.PageReport``; ``copied_addrs``: the
    addresses of each worker's copied pages, as a scan keeps them for attribution."""
    import numpy as np

    from cowprof.pages import PageReport

    report = PageReport.from_dict(report_dict(workers, **kwargs))
    for w in report.workers:
        if copied_addrs is not None and w.pid in copied_addrs:
            w.copied_addrs = np.array(list(copied_addrs[w.pid]), dtype=np.uint64)
    return report


def sample(i: int, report: Any, *, error: Exception | None = None, time: float | None = None,
           elapsed: float | None = None, lateness: float = 0.0) -> Any:
    """A ``cowprof.sampler.Sample``: the ``i``-th, at the report's time unless ``time`` is given."""
    from cowprof.sampler import Sample

    if time is None:
        time = report.taken_at if report is not None else 0.0
    return Sample(index=i, time=time, elapsed=float(i) if elapsed is None else elapsed, lateness=lateness,
                  report=report, error=error)


def record_header() -> dict[str, Any]:
    """The header line of a record file (cowprof.record) of ``cowprof record 10``."""
    return {"format": "cowprof-record", "version": 1, "created_at": 1000.0,
            "target": {"pid": 10, "requested_pid": 10, "cmdline": ["gunicorn", "app:app"], "interval": 1.0,
                       "duration": None},
            "cowprof_version": "0.1.0", "hostname": "h"}


# --- the CLI in this process ---------------------------------------------------------------------

class FakeClocks:
    """A monotonic clock and a CPU clock (``clock``, ``cpu_clock``) that a test moves by hand."""

    def __init__(self, now: float = 100.0, cpu: float = 0.0) -> None:
        self.now = now
        self.cpu = cpu

    def clock(self) -> float:
        return self.now

    def cpu_clock(self) -> float:
        return self.cpu


def run_main(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``cowprof.cli.main(argv)``: its exit code, stdout and stderr (pytest's ``capsys``)."""
    from cowprof import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, code: int, expected_code: int, needle: str) -> None:
    """A user error as documented: the exit code, one ``cowprof: ...`` line naming ``needle``."""
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cowprof: ") and needle in lines[0], err
    assert "Traceback" not in err
