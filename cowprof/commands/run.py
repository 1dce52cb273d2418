"""``cowprof run``: gunicorn with the hook injected, its signals forwarded, its exit status; with
``--record``, its tree recorded until it exits. The runner is :mod:`cowprof.gunicorn_run`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cowprof.commands.common import check_new_output, err, numpy_on_one_blas_thread
from cowprof.errors import CowprofError

if TYPE_CHECKING:
    import subprocess

__all__ = ["main"]


def main(command: list[str], *, no_prepare: bool = False, record_file: Path | None = None,
         interval: float = 1.0, force: bool = False) -> int:
    """Run the gunicorn ``command`` with cowprof's hook (without the heap preparation with
    ``no_prepare``); with ``record_file``, record its tree every ``interval`` seconds. Returns
    gunicorn's exit status."""
    from cowprof import gunicorn_run

    cmd, env_updates = gunicorn_run.server_command(command, prepare=not no_prepare)
    if record_file is not None:
        check_new_output(record_file, force)

    def record(proc: subprocess.Popen[bytes]) -> None:
        assert record_file is not None
        try:
            _record_child(proc, cmd, record_file, interval=interval, force=force)
        except CowprofError as exc:  # the server keeps running; only the recording stopped
            err(f"recording stopped: {exc}")

    return gunicorn_run.run_server(cmd, env_updates, while_running=record if record_file is not None else None)


def _record_child(proc: subprocess.Popen[bytes], cmd: list[str], path: Path, *, interval: float,
                  force: bool) -> None:
    """``run --record``: once the server has workers, record its tree until the master exits."""
    from cowprof.commands.record import record_loop, target_info
    from cowprof.gunicorn_run import wait_for_tree
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sampler

    if not wait_for_tree(proc):
        err(f"{cmd[0]} exited before it forked workers; nothing recorded")
        return
    with numpy_on_one_blas_thread():  # the server runs already: it does not see the variable
        sampler = Sampler(proc.pid, interval=interval, is_alive=lambda _pid: proc.poll() is None)
    with RecordWriter(path, target=target_info(sampler, interval=interval, cmdline=cmd),
                      force=force) as writer:
        reason = record_loop(sampler, writer)
        writer.close(reason)
    err(f"recorded {writer.samples} samples to {path} ({reason})")
