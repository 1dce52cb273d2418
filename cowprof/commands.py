"""What each ``cowprof`` command does, once its arguments are parsed and valid.

The option definitions and help live in :mod:`cowprof.cli_app` (Typer); :mod:`cowprof.cli` runs
the common one-shot forms without it. Both call these functions with plain values. Each calls the
library (:mod:`cowprof.tree`, :mod:`cowprof.pages`, :mod:`cowprof.sampler`, :mod:`cowprof.record`)
and hands the data to a reporter; errors are :class:`~cowprof.errors.CowprofError` (one line and an
exit code, printed by the caller). Imports only the standard library at import time: what a
command needs is imported when it runs.
"""
from __future__ import annotations

import enum
import importlib.util
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowprof.errors import BadInput, CowprofError, NotAPreforkTree, ProcessGone

if TYPE_CHECKING:
    import subprocess

    from cowprof.attributor import Attributor
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sample, Sampler

PROG = "cowprof"
DEFAULT_TOP_MAX_CPU = 1.5
"""``top --max-cpu`` default, % of one core: under the 2% budget of a live view, with a margin for
what the cap cannot see (interpreter start, terminal output)."""
TOP_TOLERANCE = 0.001
"""``top`` re-reads page tables once this fraction of the tree's resident pages (at least 64 pages)
can have changed since the last read (counted in page faults of the tree), or after
``TOP_MAX_AGE_INTERVALS`` refreshes; ``--exact`` re-reads them whenever anything changed."""
TOP_MAX_AGE_INTERVALS = 5
HOOK_MODULE = "cowprof.gunicorn"
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTTIN",
                     "SIGTTOU")
"""Signals ``cowprof run`` passes on to gunicorn (its documented master signals, minus WINCH,
which a terminal resize would send to both of us anyway)."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def err(message: str) -> None:
    """Write ``cowprof: MESSAGE`` (one line) to stderr."""
    sys.stderr.write(f"{PROG}: {one_line(message)}\n")
    sys.stderr.flush()


class By(str, enum.Enum):
    """``snapshot --by`` groupings."""

    worker = "worker"
    region = "region"
    type = "type"
    cause = "cause"
    function = "function"


class RecordBy(str, enum.Enum):
    """``record --by`` groupings stored in each sample (``cause`` includes ``type``)."""

    type = "type"
    cause = "cause"
    function = "function"


def check_new_output(path: Path, force: bool) -> None:
    """Fail before touching the target when ``path`` cannot become the new output file."""
    if path.is_dir():
        raise BadInput(f"{path} is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{path} already exists (use --force to overwrite it)")


@contextmanager
def interrupt_on_term() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt for the duration (normal stops of top/record).

    SIGINT is set explicitly because a process started in the background by a non-interactive shell
    inherits SIGINT as ignored.
    """

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _target_info(sampler: Sampler, *, interval: float, duration: float | None = None,
                 cmdline: list[str] | None = None) -> dict[str, Any]:
    """The record header's ``target``: which tree, its command line, the sampling settings."""
    from cowprof import procfs

    if cmdline is None:
        try:
            cmdline = procfs.read_cmdline(sampler.master)
        except CowprofError:
            cmdline = None
    return {"pid": sampler.master, "requested_pid": sampler.requested_pid, "cmdline": cmdline,
            "interval": interval, "duration": duration}


def _record_loop(sampler: Sampler, writer: RecordWriter,
                 on_sample: Callable[[Sample], None] | None = None, *,
                 attributor: Attributor | None = None, top: int | None = None) -> str:
    """Write every sample of ``sampler`` (and with ``attributor`` its attribution line); returns
    why it stopped. Ctrl-C/SIGTERM stop it cleanly (the sample in progress is dropped, every
    written line is complete). The first sample whose attribution fails says why on stderr."""
    warned = False
    try:
        for sample in sampler:
            writer.write(sample)
            if attributor is not None and sample.report is not None:
                sa = attributor.attribute(sample.report)
                writer.write_attribution(sample.index, sa, top=top)
                problem = sa.error or sa.functions_error
                if problem is not None and not warned:
                    warned = True
                    err(f"sample {sample.index} has no attribution{'' if sa.error else ' by function'}: "
                        f"{problem} (pages are still recorded)")
            if on_sample is not None:
                on_sample(sample)
    except KeyboardInterrupt:
        return "interrupted"
    return sampler.stop_reason or "stopped"


@contextmanager
def numpy_on_one_blas_thread() -> Iterator[None]:
    """While numpy gets imported: OpenBLAS, which numpy loads at import, starts one thread per core
    then (measured: 70 ms of CPU on 2 cores, a third of numpy's import); cowprof never multiplies
    matrices. ``OPENBLAS_NUM_THREADS=1`` for the duration unless the user set it or numpy is
    loaded already; the environment is as it was afterwards (a server ``run`` starts sees it so)."""
    if "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)


# --- snapshot ---------------------------------------------------------------------------------


def snapshot(pid: int, *, json_out: bool = False, by: By = By.worker, top_n: int = 10) -> int:
    """``cowprof snapshot``: one report of the tree, as a table or JSON (see the command's help)."""
    from cowprof.tree import find_tree

    if by in (By.type, By.cause, By.function):
        return _snapshot_attribution(pid, by, json_out, top_n)
    tree = find_tree(pid)
    from cowprof.pages import scan
    from cowprof.preload import late_imports

    with numpy_on_one_blas_thread():  # the scan imports numpy while its threads read the tree
        report = scan(tree)
    late = late_imports(report.master.pid, [w.pid for w in report.workers])
    if json_out:
        from cowprof.reporters import jsonout

        jsonout.render(report, file=sys.stdout, extra={"late_imports": late.to_dict()} if late.workers else None)
    else:
        from cowprof.reporters import table

        table.render(report, file=sys.stdout, by=by.value)
        if late.workers:
            print(_late_imports_line(late, len(report.workers)))
    return 0


def _late_imports_line(late: Any, workers: int, shown: int = 6) -> str:
    """The note under the snapshot table about modules the workers imported after the fork."""
    mods = late.modules
    names = ", ".join(mods[:shown]) + (f" (+{len(mods) - shown} more)" if len(mods) > shown else "")
    return (f"late imports: {len(late.workers)} of {workers} workers imported {len(mods)} modules after the fork "
            f"(each loaded once per worker, not shared): {names}. COWPROF_PRELOAD=learned imports them in the "
            "master at its next start; --json lists them all.")


def _snapshot_attribution(pid: int, by: By, json_out: bool, top_n: int) -> int:
    """``snapshot --by type|cause|function``. Without a heap map and without the rights to read the
    master's memory: the by-region view, then one line saying what is needed (exit code 4)."""
    from cowprof import attribution
    from cowprof.reporters import attribution as attr_rep

    try:
        if by == By.function:
            from cowprof import functions

            fattr = functions.snapshot(pid, top=top_n)
            if json_out:
                attr_rep.render_functions_json(fattr, top=top_n, file=sys.stdout)
            else:
                attr_rep.render_functions(fattr, top=top_n, file=sys.stdout)
            return 0
        attr = attribution.snapshot(pid, causes=(by == By.cause))
    except attribution.NoAttribution as exc:
        from cowprof.pages import scan
        from cowprof.reporters import jsonout, table
        from cowprof.tree import find_tree

        report = scan(find_tree(pid))
        if json_out:
            jsonout.render(report, file=sys.stdout)
        else:
            table.render(report, file=sys.stdout, by="region")
        err(f"{exc}; showing copied bytes by region")
        return exc.exit_code
    if json_out:
        attr_rep.render_json(attr, top=top_n, file=sys.stdout)
    else:
        attr_rep.render(attr, by=by.value, top=top_n, file=sys.stdout)
    return 0


# --- top, record, report ------------------------------------------------------------------------


def top(pid: int, *, interval: float = 1.0, max_cpu: float = DEFAULT_TOP_MAX_CPU, exact: bool = False,
        iterations: int | None = None) -> int:
    """``cowprof top``: the live view until Ctrl-C or the master exits."""
    from cowprof.reporters import live
    from cowprof.sampler import Sampler, StopReason

    cap = max_cpu / 100.0 if max_cpu > 0 else None
    with numpy_on_one_blas_thread():
        sampler = Sampler(pid, interval=interval, count=iterations, privileged=False, max_cpu=cap,
                          tolerance=0.0 if exact else TOP_TOLERANCE,
                          max_age=None if exact else TOP_MAX_AGE_INTERVALS * interval)
    with interrupt_on_term():
        try:
            live.run(sampler, interval=interval, file=sys.stdout, max_cpu=cap)
        except KeyboardInterrupt:
            return 0
    if sampler.stop_reason == StopReason.TARGET_EXITED:
        err(f"master {sampler.master} exited")
    return 0


def record(pid: int, *, output: Path, interval: float = 1.0, duration: float | None = None,
           force: bool = False, count: int | None = None, by: Sequence[RecordBy] | None = None,
           top_n: int = 20) -> int:
    """``cowprof record``: samples to a JSON Lines file (with ``by``, each followed by its
    attribution), with a progress line on a terminal."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cowprof.record import RecordWriter
    from cowprof.reporters import fmt_bytes
    from cowprof.sampler import Sampler

    check_new_output(output, force)  # fail before touching the target
    groupings = sorted({b.value for b in by or ()}, key=[b.value for b in RecordBy].index)
    with numpy_on_one_blas_thread():
        sampler = Sampler(pid, interval=interval, duration=duration, count=count, keep_addresses=bool(groupings))
    attributor = None
    if groupings:
        from cowprof.attributor import Attributor

        attributor = Attributor(sampler.master, causes="cause" in groupings, functions="function" in groupings)
    console = Console(stderr=True, highlight=False)
    failed = 0
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if duration is not None:
        columns.append(BarColumn())
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with RecordWriter(output, target=_target_info(sampler, interval=interval, duration=duration),
                      force=force, attribution={"by": groupings, "top": top_n} if groupings else None) as writer, \
            Progress(*columns, console=console, transient=True,
                     disable=not console.is_terminal) as progress:
        task = progress.add_task(escape(f"recording master {sampler.master} to {output}"),
                                 total=duration, status="")

        def on_sample(sample: Sample) -> None:
            nonlocal failed
            if sample.report is not None:
                r = sample.report
                status = (f"{writer.samples} samples  {len(r.workers)} workers  copied "
                          f"{fmt_bytes(sum(w.copied_bytes for w in r.workers))}")
            else:
                failed += 1
                status = f"{writer.samples} samples  last failed: {sample.error}"
            progress.update(task, completed=sample.elapsed, status=escape(status))

        with interrupt_on_term():
            reason = _record_loop(sampler, writer, on_sample, attributor=attributor, top=top_n)
            writer.close(reason)
    fail_note = f", {failed} failed" if failed else ""
    err(f"recorded {writer.samples} samples{fail_note} to {output} ({reason})")
    return 0


def report(file: Path, *, html: Path | None = None, json_out: bool = False, force: bool = False) -> int:
    """``cowprof report``: a recording as tables (or JSON), optionally an HTML report too."""
    import io

    from cowprof.record import read_record

    if html is not None and not force:
        check_new_output(html, force)  # before reading or rendering anything
    recording = read_record(file)
    for warning in recording.warnings:
        err(f"warning: {warning}")
    html_text = None
    if html is not None:  # render before printing anything: a missing plotly fails fast
        from cowprof.reporters import html as html_reporter

        buf = io.StringIO()
        html_reporter.render(recording, file=buf)
        html_text = buf.getvalue()
    if json_out:
        from cowprof.reporters import jsonout

        jsonout.render_recording(recording, file=sys.stdout)
    else:
        from cowprof.reporters import table

        table.render_recording(recording, file=sys.stdout)
    if html is not None and html_text is not None:
        from cowprof.outfile import write_new

        write_new(os.fspath(html), html_text.encode("utf-8"), force=force)
        err(f"wrote {html}")
    return 0


# --- run ------------------------------------------------------------------------------------

_CONFIG_LONG = ("--config", "--confi", "--conf", "--con")  # argparse accepts unique prefixes


def _split_config(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove every ``-c X`` / ``-cX`` / ``--config X`` / ``--config=X`` from gunicorn arguments.

    Returns the remaining arguments and the last config value (argparse: the last one wins).
    Arguments after a ``--`` are left alone.
    """
    rest: list[str] = []
    config = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        name, eq, val = a.partition("=")
        if a == "-c" or (name in _CONFIG_LONG and not eq):
            if i + 1 >= len(args):
                raise BadInput(f"gunicorn option {a} needs a value")
            config = args[i + 1]
            i += 2
            continue
        if eq and name in _CONFIG_LONG:
            config = val
        elif a.startswith("-c") and not a.startswith("--"):
            config = a[2:]
        else:
            rest.append(a)
        i += 1
    return rest, config


def gunicorn_command(argv: Sequence[str], *, cwd: str | os.PathLike[str],
                     environ: Mapping[str, str], prepare: bool = True) -> tuple[list[str], dict[str, str]]:
    """Rewrite ``gunicorn ARGS...`` to load cowprof's hook module without editing the user's config.

    The user's config (``-c/--config`` in ARGS, else in ``GUNICORN_CMD_ARGS``, else
    ``./gunicorn.conf.py`` when it exists: gunicorn's own order) moves to the environment variable
    ``COWPROF_GUNICORN_CONFIG`` and ARGS get ``-c python:cowprof.gunicorn``, which loads it.
    ``prepare=False`` sets ``COWPROF_PREPARE=0``. Returns the new argv and the environment
    variables to set. Accepts ``gunicorn``, a path to it, or ``PYTHON -m gunicorn``.
    """
    argv = list(argv)
    if not argv:
        raise BadInput("nothing to run (usage: cowprof run -- gunicorn ARGS...)")
    if os.path.basename(argv[0]).startswith("gunicorn"):
        head, args = argv[:1], argv[1:]
    elif argv[1:3] == ["-m", "gunicorn"]:
        head, args = argv[:3], argv[3:]
    else:
        raise BadInput(f"run wraps gunicorn, not {argv[0]!r} (usage: cowprof run -- gunicorn ARGS...)")
    rest, config = _split_config(args)
    env: dict[str, str] = {}
    if config is None and environ.get("GUNICORN_CMD_ARGS"):
        try:
            _, config = _split_config(shlex.split(environ["GUNICORN_CMD_ARGS"]))
        except ValueError:
            config = None
    if config is None and os.path.isfile(os.path.join(cwd, "gunicorn.conf.py")):
        config = os.path.join(cwd, "gunicorn.conf.py")
    if config is not None and config != f"python:{HOOK_MODULE}":
        if not config.startswith("python:"):
            config = os.path.normpath(os.path.join(cwd, config))
        env["COWPROF_GUNICORN_CONFIG"] = config
    if not prepare:
        env["COWPROF_PREPARE"] = "0"
    return head + ["-c", f"python:{HOOK_MODULE}"] + rest, env


def _resolve_executable(cmd: list[str]) -> list[str]:
    """A bare ``gunicorn`` from PATH, else the one next to this Python (same virtual env)."""
    import shutil

    exe = cmd[0]
    if os.sep in exe:
        if not os.access(exe, os.X_OK):
            raise BadInput(f"{exe}: not an executable file")
        return cmd
    found = shutil.which(exe)
    if found is None:
        sibling = os.path.join(os.path.dirname(sys.executable), exe)
        if os.access(sibling, os.X_OK):
            found = sibling
    if found is None:
        raise BadInput(f"{exe}: command not found (is gunicorn installed in this environment?)")
    return [found] + cmd[1:]


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _wait_for_tree(proc: subprocess.Popen[bytes], poll: float = 0.2) -> bool:
    """Wait until the server's master has forked workers; False if it exited first."""
    from cowprof.tree import find_tree

    while proc.poll() is None:
        try:
            find_tree(proc.pid)
            return True
        except (NotAPreforkTree, ProcessGone):
            time.sleep(poll)
    return False


def run(command: list[str], *, no_prepare: bool = False, record_file: Path | None = None,
        interval: float = 1.0, force: bool = False) -> int:
    """``cowprof run``: gunicorn with the hook injected, its signals forwarded, its exit status."""
    import subprocess

    if importlib.util.find_spec(HOOK_MODULE) is None:
        raise CowprofError(f"{HOOK_MODULE} is missing from this cowprof installation")
    cmd, env_updates = gunicorn_command(command, cwd=os.getcwd(), environ=os.environ,
                                        prepare=not no_prepare)
    cmd = _resolve_executable(cmd)
    if record_file is not None:
        check_new_output(record_file, force)
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **env_updates})
    except OSError as exc:
        raise BadInput(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None

    def forward(signum: int, frame: object) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {}
    for name in FORWARDED_SIGNALS:
        sig = getattr(signal, name)
        old[sig] = signal.signal(sig, forward)
    try:
        if record_file is not None:
            try:
                _record_child(proc, cmd, record_file, interval=interval, force=force)
            except CowprofError as exc:  # the server keeps running; only the recording stopped
                err(f"recording stopped: {exc}")
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # an unexpected error in cowprof itself: do not orphan the server
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return exit_status(returncode)


def _record_child(proc: subprocess.Popen[bytes], cmd: list[str], path: Path, *, interval: float,
                  force: bool) -> None:
    """``run --record``: once the server has workers, record its tree until the master exits."""
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sampler

    if not _wait_for_tree(proc):
        err(f"{cmd[0]} exited before it forked workers; nothing recorded")
        return
    with numpy_on_one_blas_thread():  # the server runs already: it does not see the variable
        sampler = Sampler(proc.pid, interval=interval, is_alive=lambda _pid: proc.poll() is None)
    with RecordWriter(path, target=_target_info(sampler, interval=interval, cmdline=cmd),
                      force=force) as writer:
        reason = _record_loop(sampler, writer)
        writer.close(reason)
    err(f"recorded {writer.samples} samples to {path} ({reason})")


# --- export -----------------------------------------------------------------------------------


def export(pid: int | None, *, port: int = 9464, interval: float = 5.0, bind: str = "127.0.0.1",
           pidfile: Path | None = None, cmdline: str | None = None) -> int:
    """``cowprof export``: serve the Prometheus metrics until stopped."""
    if pid is None and pidfile is None and not cmdline:
        raise BadInput("export needs a PID, --pidfile or --cmdline")
    try:
        from cowprof.exporter import serve
    except ModuleNotFoundError as exc:
        if exc.name == "prometheus_client":
            raise CowprofError("the exporter needs prometheus_client: "
                               "pip install 'cowprof[prometheus]'") from None
        if exc.name in ("cowprof.exporter", "cowprof"):
            raise CowprofError("the Prometheus exporter (cowprof.exporter) is missing from this "
                               "cowprof installation") from None
        raise
    with numpy_on_one_blas_thread():
        import numpy  # noqa: F401 - the exporter's scans need it (this process starts no program)
    return serve(pid, port=port, bind=bind, interval=interval,
                 pidfile=os.fspath(pidfile) if pidfile is not None else None, cmdline=cmdline)
