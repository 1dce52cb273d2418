"""The Typer app of the ``cowprof`` command: every option, its parsing and the help.

Each command's options are parsed here (an interval through :func:`cowprof.timer.check_interval`,
the check the library uses too), then the command calls ``main`` of its module in
:mod:`cowprof.commands`. :func:`cowprof.cli.main` (the
entry point) builds this app only when it needs it: for help, for every command but the common
one-shot ``snapshot`` forms, and for any argument those forms do not cover. The group's ``main``
turns every :class:`~cowprof.errors.CowprofError` and usage error into one line on stderr and an
exit code, never a traceback, for ``main`` and for ``typer.testing.CliRunner`` alike.

Annotations here are objects, not strings (no ``from __future__ import annotations``): Typer reads
them with ``typing.get_type_hints``, which would compile every string annotation at start-up.
"""
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from cowprof.cli import PROG, guarded

if TYPE_CHECKING:
    import importlib.abc


class _MarkdownStandIn:
    """``rich.markdown.Markdown`` for ``typer.rich_utils``, imported when first used."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from rich.markdown import Markdown

        return Markdown(*args, **kwargs)


class _TracebackStandIn:
    """``rich.traceback.Traceback`` for ``typer.rich_utils``, imported when first used."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from rich.traceback import Traceback

        return Traceback(*args, **kwargs)

    @classmethod
    def from_exception(cls, *args: Any, **kwargs: Any) -> Any:
        from rich.traceback import Traceback

        return Traceback.from_exception(*args, **kwargs)


_STAND_INS = (("rich.markdown", "Markdown", _MarkdownStandIn), ("rich.traceback", "Traceback", _TracebackStandIn))


class _LeanTyperHelp:
    """Imports ``typer.rich_utils`` (Typer's help and error rendering, which Typer imports when it
    first renders one) without ``rich.markdown`` and ``rich.traceback``: it imports both at the top
    but uses them only for Markdown help (cowprof's is Rich markup) and for pretty tracebacks
    (cowprof prints one-line errors), ~40% of the help's start-up. While it runs, stand-ins that
    import the real class on first use take their place; the real modules stay importable as
    ever. Installed first in ``sys.meta_path``; gone after that one import. (A finder and loader by
    protocol: importlib.abc would cost more to import than this saves in part.)"""

    def __init__(self) -> None:
        self._real: Any = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "typer.rich_utils":
            return None
        self.remove()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or any(name in sys.modules for name, _a, _c in _STAND_INS):
            return spec
        self._real = spec.loader
        spec.loader = cast("importlib.abc.Loader", self)
        return spec

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        assert self._real is not None
        stand_ins = {}
        for name, attr, cls in _STAND_INS:
            stand_ins[name] = types.ModuleType(name, f"cowprof's stand-in for {name}")
            setattr(stand_ins[name], attr, cls)
        sys.modules.update(stand_ins)
        try:
            self._real.exec_module(module)
        finally:
            for name, stand_in in stand_ins.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]

    def install(self) -> None:
        if "typer.rich_utils" not in sys.modules and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


_LeanTyperHelp().install()

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cowprof import __version__  # noqa: E402
from cowprof.commands import common  # noqa: E402
from cowprof.commands.record import RecordBy  # noqa: E402
from cowprof.commands.snapshot import By  # noqa: E402
from cowprof.errors import BadInput  # noqa: E402
from cowprof.timer import DEFAULT_EXPORT_MAX_CPU, DEFAULT_TOP_MAX_CPU, check_interval  # noqa: E402

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer with click as a dependency
    from click import exceptions as _click_exc  # type: ignore[no-redef]

__all__ = ["app", "main"]


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
            raise SystemExit(code)
        return code


def _run_group(group: TyperGroup, args: Sequence[str] | None, prog_name: str,
               complete_var: str | None, extra: dict[str, Any]) -> int:
    def parse_and_run() -> Any:
        try:
            return TyperGroup.main(group, args=args, prog_name=prog_name, complete_var=complete_var,
                                   standalone_mode=False, **extra)
        except _click_exc.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                return exc.exit_code  # the help was already printed
            where = exc.ctx.command_path if exc.ctx is not None else PROG
            common.err(f"{exc.format_message()} (see '{where} --help')")
            return exc.exit_code
        except _click_exc.ClickException as exc:
            common.err(exc.format_message())
            return exc.exit_code
        except typer.Abort:
            common.err("aborted")
            return 1

    return guarded(parse_and_run)


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
    """Parser of interval/duration options: a finite number of seconds > 0
    (:func:`cowprof.timer.check_interval`)."""
    try:
        return check_interval(value)
    except BadInput as exc:
        raise typer.BadParameter(str(exc)) from None


def _number(value: Any) -> float:
    """Parser of ``export --interval``: a number; its limits are the exporter's
    (:func:`cowprof.exporter.check_options`, run by the command before anything else)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number of seconds") from None


def _path(value: Any) -> Path:
    """Parser of file options and arguments: a non-empty path (``Path("")`` would be ``.``)."""
    if isinstance(value, Path):
        return value
    if not str(value).strip():
        raise typer.BadParameter("the path is empty")
    return Path(value)


PidArg = Annotated[int, typer.Argument(min=1, show_default=False,
                                       help="PID of the master or of any worker of the tree.")]
IntervalOpt = Annotated[float, typer.Option("--interval", "-i", parser=_seconds, metavar="SECONDS",
                                            help="Seconds between samples (> 0).")]


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
    from cowprof.commands import snapshot as command

    return command.main(pid, json_out=json_out, by=by, top_n=top_n)


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
                                             "have changed (or every 5 refreshes, more on big trees).")
                 ] = False,
    iterations: Annotated[int | None, typer.Option(min=1, hidden=True,
                                                   help="Stop after N samples (tests).")] = None,
) -> int:
    """Live view of the tree, refreshed in place.

    Per worker: RSS, PSS, USS, shared, copied, new, and copied MiB/s. Workers that appear or
    disappear (max_requests recycling, HUP reload) just show up or drop out. Without a terminal
    (a pipe, a log), each refresh prints a new table.

    Each refresh checks in /proc/PID/stat whether the tree can have changed (page faults) and
    re-reads the page tables (12-20 ms of CPU for a 1 GiB tree) once more than 0.1% of its memory
    can have changed, or every 5 refreshes (more on trees whose re-read costs more than 0.2% of a
    core over 5 refreshes: every ~25-40 for 4 GiB, at most 60); meanwhile the header says how old the page
    figures are and by how much they can be off. --exact re-reads on every change. On trees too busy for that,
    top refreshes less often than --interval to stay under --max-cpu (the header says so). top
    classifies pages with the exclusive bit even as root: the same columns for less CPU than the
    PFN mode.
    """
    from cowprof.commands import top as command

    return command.main(pid, interval=interval, max_cpu=max_cpu, exact=exact, iterations=iterations)


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
    from cowprof.commands import record as command

    return command.main(pid, output=output, interval=interval, duration=duration, force=force,
                        count=count, by=by, top_n=top_n)


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
    from cowprof.commands import report as command

    return command.main(file, html=html, json_out=json_out, force=force)


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
    from cowprof.commands import run as run_command

    return run_command.main(command, no_prepare=no_prepare, record_file=record_file, interval=interval,
                            force=force)


@app.command(epilog="Examples: [bold]cowprof export 1234 --port 9464[/bold], then scrape "
                    "http://127.0.0.1:9464/metrics  ·  "
                    "[bold]cowprof export --pidfile /run/gunicorn.pid[/bold]")
def export(
    pid: Annotated[int | None, typer.Argument(min=1, show_default=False,
                                              help="PID of the master or of any worker (optional "
                                                   "with --pidfile or --cmdline).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port of the /metrics endpoint "
                                                              "(0: any free port).")] = 9464,
    interval: Annotated[float, typer.Option("--interval", "-i", parser=_number, metavar="SECONDS",
                                            help="Seconds between scans.")] = 5.0,
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    pidfile: Annotated[Path | None, typer.Option(metavar="FILE", parser=_path,
                                                 help="gunicorn pidfile: where the master is, "
                                                      "also after a restart.")] = None,
    cmdline: Annotated[str | None, typer.Option(metavar="TEXT",
                                                help="The master's command line, to find it "
                                                     "again after a restart.")] = None,
    max_cpu: Annotated[float, typer.Option("--max-cpu", min=0, max=100, metavar="PERCENT",
                                           help="CPU budget of the exporter, in % of one core: "
                                                "page-table re-reads wait while it is used up "
                                                "(0: no budget).")] = DEFAULT_EXPORT_MAX_CPU,
    exact: Annotated[bool, typer.Option("--exact",
                                        help="Re-read the page tables at every interval where "
                                             "anything changed, with no budget, instead of once "
                                             "0.1% of the tree's memory can have changed (or every "
                                             "12 intervals).")] = False,
) -> int:
    """Serve Prometheus metrics of the tree's page accounting (needs cowprof\\[prometheus]).

    Every interval the exporter checks in /proc/PID/stat whether the tree can have changed (page
    faults) and re-reads the page tables once more than 0.1% of its memory can have changed, or
    every 12 intervals, within its --max-cpu budget; cowprof_pages_drift_bytes says by how much
    the figures can be off meanwhile, cowprof_pages_read_timestamp_seconds when they were read.
    """
    from cowprof.commands import export as command

    return command.main(pid, port=port, interval=interval, bind=bind, pidfile=pidfile, cmdline=cmdline,
                        max_cpu=max_cpu, exact=exact)


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
    """Parse ``argv`` (default ``sys.argv[1:]``) with the Typer app and run it; returns the exit code."""
    command = typer.main.get_command(app)
    code: int = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    return code
