"""The ``cowprof`` command line: snapshot, top, record, report, run, export.

Thin commands: each validates its input, calls the library (:mod:`cowprof.tree`, :mod:`cowprof.pages`,
:mod:`cowprof.sampler`, :mod:`cowprof.record`) and hands the data to a reporter. :func:`main` is the
entry point (``cowprof = "cowprof.cli:main"``) and what tests call; it turns every
:class:`~cowprof.errors.CowprofError` and every usage error into one line on stderr and an exit
code, never a traceback.
"""
from __future__ import annotations

import enum
import importlib.util
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from cowprof import __version__
from cowprof.errors import BadInput, CowprofError, NotAPreforkTree, ProcessGone

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer with click as a dependency
    from click import exceptions as _click_exc  # type: ignore[no-redef]

if TYPE_CHECKING:
    from cowprof.attributor import Attributor
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sample, Sampler

__all__ = ["app", "main", "gunicorn_command"]

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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _err(message: str) -> None:
    sys.stderr.write(f"{PROG}: {_one_line(message)}\n")
    sys.stderr.flush()


class CowprofGroup(TyperGroup):
    """The top-level command group: Typer's parsing, cowprof's error handling.

    Overriding ``main`` (rather than only :func:`main`) makes ``typer.testing.CliRunner`` see exactly
    what a user sees: one-line errors and the same exit codes.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        code = _run_group(self, args, prog_name or PROG, complete_var,
                          {"windows_expand_args": windows_expand_args, **extra})
        if standalone_mode:
            sys.exit(code)
        return code


def _run_group(group: TyperGroup, args: Sequence[str] | None, prog_name: str,
               complete_var: str | None, extra: dict[str, Any]) -> int:
    try:
        rv = TyperGroup.main(group, args=args, prog_name=prog_name, complete_var=complete_var,
                             standalone_mode=False, **extra)
    except CowprofError as exc:
        _err(str(exc))
        return exc.exit_code
    except _click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            return exc.exit_code  # the help was already printed
        where = exc.ctx.command_path if exc.ctx is not None else PROG
        _err(f"{exc.format_message()} (see '{where} --help')")
        return exc.exit_code
    except _click_exc.ClickException as exc:
        _err(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        _err("aborted")
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # e.g. Rich on a broken pipe
        return exc.code if isinstance(exc.code, int) else 1
    except BrokenPipeError:
        # `cowprof snapshot 1 --json | head`: not worth a traceback; point stdout at /dev/null so
        # the interpreter's final flush does not complain either
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    if isinstance(rv, bool) or not isinstance(rv, int):
        return 0
    return rv


app = typer.Typer(
    cls=CowprofGroup,
    name=PROG,
    help="Copy-on-write memory profiler for Python pre-fork servers (gunicorn preload_app, uWSGI, "
         "Celery prefork, multiprocessing fork): how much of each worker's memory is still shared "
         "with the master, how much was copied, and where.",
    epilog="Examples:\n\n"
           "  [bold]cowprof snapshot $(pgrep -o gunicorn)[/bold]     one-shot table of the tree\n\n"
           "  [bold]cowprof top 1234[/bold]                          live view (Ctrl-C to quit)\n\n"
           "  [bold]cowprof record 1234 -o run.jsonl[/bold]          record samples to a file\n\n"
           "  [bold]cowprof report run.jsonl --html run.html[/bold]  summary and HTML charts\n\n"
           "  [bold]cowprof run -- gunicorn -w 4 --preload app:app[/bold]  run gunicorn with the hook",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cowprof {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                          callback=_version_callback, is_eager=True)] = False,
) -> None:
    """Copy-on-write memory profiler for Python pre-fork servers."""


# ---------------------------------------------------------------------------------------------
# option helpers


def _seconds(value: Any) -> float:
    """Parser of interval/duration options: a finite number of seconds > 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise typer.BadParameter(f"{value} must be a number of seconds > 0")
    return seconds


def _path(value: Any) -> Path:
    """Parser of file options and arguments: a non-empty path (``Path("")`` would be ``.``)."""
    if isinstance(value, Path):
        return value
    if not str(value).strip():
        raise typer.BadParameter("the path is empty")
    return Path(value)


def _check_new_output(path: Path, force: bool) -> None:
    """Fail before touching the target when ``path`` cannot become the new output file."""
    if path.is_dir():
        raise BadInput(f"{path} is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{path} already exists (use --force to overwrite it)")


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


PidArg = Annotated[int, typer.Argument(min=1, show_default=False,
                                       help="PID of the master or of any worker of the tree.")]
IntervalOpt = Annotated[float, typer.Option("--interval", "-i", parser=_seconds, metavar="SECONDS",
                                            help="Seconds between samples (> 0).")]


@contextmanager
def _interrupt_on_term() -> Iterator[None]:
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
    import psutil

    if cmdline is None:
        try:
            cmdline = psutil.Process(sampler.master).cmdline()
        except (psutil.Error, OSError):
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
                    _err(f"sample {sample.index} has no attribution{'' if sa.error else ' by function'}: "
                         f"{problem} (pages are still recorded)")
            if on_sample is not None:
                on_sample(sample)
    except KeyboardInterrupt:
        return "interrupted"
    return sampler.stop_reason or "stopped"


# ---------------------------------------------------------------------------------------------
# commands


@app.command(epilog="Examples: [bold]cowprof snapshot 1234[/bold]  ·  "
                    "[bold]cowprof snapshot 1234 --by region[/bold]  ·  "
                    "[bold]cowprof snapshot 1234 --by type --top 20[/bold]  ·  "
                    "[bold]cowprof snapshot 1234 --by cause[/bold]  ·  "
                    "[bold]cowprof snapshot 1234 --json > snap.json[/bold]")
def snapshot(
    pid: PidArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print the page-report JSON "
                                           "(docs/measure.md) instead of a table.")] = False,
    by: Annotated[By, typer.Option("--by", case_sensitive=False,
                                   help="Group by worker, memory region, Python type of the copied "
                                        "bytes (from the master's heap map, else read from its memory: "
                                        "root or ptrace rights), cause of the copies (reads process "
                                        "memory), or function of the copied code objects and module "
                                        "of the copied instances (reads the master's memory).")] = By.worker,
    top_n: Annotated[int, typer.Option("--top", min=1, help="Rows for --by type/cause/function.")] = 10,
) -> int:
    """One-shot report: per worker, how much memory is shared with the master, copied, or new.

    Workers are sorted by copied bytes, with the master row and totals. With --by type or --by
    cause, each worker's copied bytes are attributed to Python types or to the kind of write.
    """
    from cowprof.pages import scan
    from cowprof.tree import find_tree

    if by in (By.type, By.cause, By.function):
        return _snapshot_attribution(pid, by, json_out, top_n)
    from cowprof.preload import late_imports

    report = scan(find_tree(pid))
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
        _err(f"{exc}; showing copied bytes by region")
        return exc.exit_code
    if json_out:
        attr_rep.render_json(attr, top=top_n, file=sys.stdout)
    else:
        attr_rep.render(attr, by=by.value, top=top_n, file=sys.stdout)
    return 0


@app.command(epilog="Example: [bold]cowprof top 1234 --interval 2[/bold]  (Ctrl-C to quit)")
def top(
    pid: PidArg,
    interval: IntervalOpt = 1.0,
    max_cpu: Annotated[float, typer.Option("--max-cpu", min=0, max=100, metavar="PERCENT",
                                           help="Cap top's own CPU use at this % of one core by "
                                                "refreshing less often on big trees (0: no cap).")
                       ] = DEFAULT_TOP_MAX_CPU,
    exact: Annotated[bool, typer.Option("--exact",
                                        help="Re-read the page tables on every refresh where anything "
                                             "changed, instead of once 0.1% of the tree's memory can "
                                             "have changed (or every 5 refreshes).")] = False,
    iterations: Annotated[int | None, typer.Option(min=1, hidden=True,
                                                   help="Stop after N samples (tests).")] = None,
) -> int:
    """Live view of the tree, refreshed in place.

    Per worker: RSS, PSS, USS, shared, copied, new, and copied MiB/s. Workers that appear or
    disappear (max_requests recycling, HUP reload) just show up or drop out. Without a terminal
    (a pipe, a log), each refresh prints a new table.

    Each refresh checks in /proc/PID/stat whether the tree can have changed (page faults) and
    re-reads the page tables (12-20 ms of CPU for a 1 GiB tree) once more than 0.1% of its memory
    can have changed, or every 5 refreshes; meanwhile the header says how old the page figures are
    and by how much they can be off. --exact re-reads on every change. On trees too busy for that,
    top refreshes less often than --interval to stay under --max-cpu (the header says so). top
    classifies pages with the exclusive bit even as root: the same columns for less CPU than the
    PFN mode.
    """
    from cowprof.reporters import live
    from cowprof.sampler import Sampler, StopReason

    cap = max_cpu / 100.0 if max_cpu > 0 else None
    sampler = Sampler(pid, interval=interval, count=iterations, privileged=False, max_cpu=cap,
                      tolerance=0.0 if exact else TOP_TOLERANCE,
                      max_age=None if exact else TOP_MAX_AGE_INTERVALS * interval)
    with _interrupt_on_term():
        try:
            live.run(sampler, interval=interval, file=sys.stdout, max_cpu=cap)
        except KeyboardInterrupt:
            return 0
    if sampler.stop_reason == StopReason.TARGET_EXITED:
        _err(f"master {sampler.master} exited")
    return 0


@app.command(epilog="Example: [bold]cowprof record 1234 -o run.jsonl --interval 1 --duration "
                    "600[/bold]  then  [bold]cowprof report run.jsonl --html run.html[/bold]")
def record(
    pid: PidArg,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", show_default=False, parser=_path,
                                         help="Record file to create (JSON Lines).")],
    interval: IntervalOpt = 1.0,
    duration: Annotated[float | None, typer.Option(parser=_seconds, metavar="SECONDS",
                                                   help="Stop after this many seconds "
                                                        "(default: until the master exits or "
                                                        "Ctrl-C).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f",
                                        help="Overwrite FILE if it exists.")] = False,
    count: Annotated[int | None, typer.Option(min=1, hidden=True,
                                              help="Stop after N samples (tests).")] = None,
    by: Annotated[list[RecordBy] | None, typer.Option(
        "--by", case_sensitive=False,
        help="Also store each sample's copied bytes by Python type, by cause (includes type; reads "
             "process memory every sample) or by function (reads the master's memory); repeat for "
             "several. Uses the master's heap map, else reads its objects from memory (root or ptrace "
             "rights).")] = None,
    top_n: Annotated[int, typer.Option("--top", min=1, help="Types per worker and functions kept "
                                                           "per sample with --by.")] = 20,
) -> int:
    """Record samples to a file until the master exits, --duration ends, or Ctrl-C.

    Every completed sample is on disk at once (one flushed JSON line each), so killing the recorder
    loses at most the sample in progress. View it with `cowprof report`. With --by, each sample
    line is followed by its attribution (see docs/live-record.md, `record --by`).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cowprof.record import RecordWriter
    from cowprof.reporters import fmt_bytes
    from cowprof.sampler import Sampler

    _check_new_output(output, force)  # fail before touching the target
    groupings = sorted({b.value for b in by or ()}, key=[b.value for b in RecordBy].index)
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

        with _interrupt_on_term():
            reason = _record_loop(sampler, writer, on_sample, attributor=attributor, top=top_n)
            writer.close(reason)
    fail_note = f", {failed} failed" if failed else ""
    _err(f"recorded {writer.samples} samples{fail_note} to {output} ({reason})")
    return 0


@app.command(epilog="Examples: [bold]cowprof report run.jsonl --html run.html[/bold]  ·  "
                    "[bold]cowprof report run.jsonl --json > run.json[/bold]")
def report(
    file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False, parser=_path,
                                         help="A record file from `cowprof record`.")],
    html: Annotated[Path | None, typer.Option("--html", metavar="OUT", parser=_path,
                                              help="Also write a self-contained HTML report with "
                                                   "charts (needs cowprof\\[html]); OUT must not "
                                                   "exist unless --force.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the recording over time as JSON "
                                           "(docs/attribute.md) instead of tables.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace the --html OUT file if it "
                                                              "exists (never a symlink).")] = False,
) -> int:
    """Summarize a recording in the terminal, optionally also as an HTML report with charts.

    The charts: copied MiB per worker over time, shared % over time, region breakdown; for a
    recording made with --by, copied bytes by type and by cause over time and the top functions.
    """
    import io

    from cowprof.record import read_record

    if html is not None and not force:
        _check_new_output(html, force)  # before reading or rendering anything
    recording = read_record(file)
    for warning in recording.warnings:
        _err(f"warning: {warning}")
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
        _err(f"wrote {html}")
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


def _exit_status(returncode: int) -> int:
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


@app.command(
    context_settings={"allow_interspersed_args": False},
    epilog="Examples: [bold]cowprof run -- gunicorn -w 4 --preload app:app[/bold]  ·  "
           "[bold]cowprof run --record run.jsonl -- gunicorn -c gunicorn.conf.py app:app[/bold]",
)
def run(
    command: Annotated[list[str], typer.Argument(metavar="GUNICORN_COMMAND", show_default=False,
                                                 help="The gunicorn command line, after --.")],
    no_prepare: Annotated[bool, typer.Option("--no-prepare",
                                             help="Hook only; skip the heap preparation before "
                                                  "fork (a baseline to compare with).")] = False,
    record_file: Annotated[Path | None, typer.Option("--record", metavar="FILE", parser=_path,
                                                     help="Record the server's tree to FILE until "
                                                          "it exits.")] = None,
    interval: IntervalOpt = 1.0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the --record FILE if it "
                                                              "exists.")] = False,
) -> int:
    """Run gunicorn with the cowprof hook injected (no config edit), optionally recording it.

    Your -c/--config (or ./gunicorn.conf.py) still applies: cowprof's hook module loads it.
    SIGINT/SIGTERM/SIGHUP... go to gunicorn; the exit status is gunicorn's.
    """
    if importlib.util.find_spec(HOOK_MODULE) is None:
        raise CowprofError(f"{HOOK_MODULE} is missing from this cowprof installation")
    cmd, env_updates = gunicorn_command(command, cwd=os.getcwd(), environ=os.environ,
                                        prepare=not no_prepare)
    cmd = _resolve_executable(cmd)
    if record_file is not None:
        _check_new_output(record_file, force)
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
                _err(f"recording stopped: {exc}")
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
    return _exit_status(returncode)


def _record_child(proc: subprocess.Popen[bytes], cmd: list[str], path: Path, *, interval: float,
                  force: bool) -> None:
    """``run --record``: once the server has workers, record its tree until the master exits."""
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sampler

    if not _wait_for_tree(proc):
        _err(f"{cmd[0]} exited before it forked workers; nothing recorded")
        return
    sampler = Sampler(proc.pid, interval=interval, is_alive=lambda _pid: proc.poll() is None)
    with RecordWriter(path, target=_target_info(sampler, interval=interval, cmdline=cmd),
                      force=force) as writer:
        reason = _record_loop(sampler, writer)
        writer.close(reason)
    _err(f"recorded {writer.samples} samples to {path} ({reason})")


# --- export -----------------------------------------------------------------------------------


@app.command(epilog="Examples: [bold]cowprof export 1234 --port 9464[/bold], then scrape "
                    "http://127.0.0.1:9464/metrics  ·  "
                    "[bold]cowprof export --pidfile /run/gunicorn.pid[/bold]")
def export(
    pid: Annotated[int | None, typer.Argument(min=1, show_default=False,
                                              help="PID of the master or of any worker (optional "
                                                   "with --pidfile or --cmdline).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port of the /metrics endpoint "
                                                              "(0: any free port).")] = 9464,
    interval: Annotated[float, typer.Option("--interval", "-i", parser=_seconds, metavar="SECONDS",
                                            help="Seconds between scans.")] = 5.0,
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    pidfile: Annotated[Path | None, typer.Option(metavar="FILE", parser=_path,
                                                 help="gunicorn pidfile: where the master is, "
                                                      "also after a restart.")] = None,
    cmdline: Annotated[str | None, typer.Option(metavar="TEXT",
                                                help="The master's command line, to find it "
                                                     "again after a restart.")] = None,
) -> int:
    """Serve Prometheus metrics of the tree's page accounting (needs cowprof\\[prometheus])."""
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
    return serve(pid, port=port, bind=bind, interval=interval,
                 pidfile=os.fspath(pidfile) if pidfile is not None else None, cmdline=cmdline)


def _reflow_help() -> None:
    """Command docstrings are wrapped for the source; Typer's Rich help keeps their line breaks and
    wraps again at the terminal's width. Join the lines of each paragraph so it wraps only once."""
    import inspect

    for info in app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))


_reflow_help()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    command = typer.main.get_command(app)
    code: int = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    return code
