"""The ``cowprof record`` progress line: on a terminal, a spinner (a bar with a duration), the time
so far and the last sample's figures, refreshed in place and gone at the end; nothing otherwise.

:func:`render` passes the samples it is given on, one by one, as it shows them (the recorder
writes each before it gets here): ``for sample in render(samples, sys.stderr, title=...)``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

from cowprof.reporters import fmt_bytes

if TYPE_CHECKING:
    from cowprof.sampler import Sample

__all__ = ["render", "status"]


def status(sample: Sample, samples: int) -> str:
    """The progress line's figures after ``samples`` samples, ``sample`` the last."""
    r = sample.report
    if r is None:
        return f"{samples} samples  last failed: {sample.error}"
    return (f"{samples} samples  {len(r.workers)} workers  copied "
            f"{fmt_bytes(sum(w.copied_bytes for w in r.workers))}")


def render(samples: Iterable[Sample], file: IO[str] | None = None, *, title: str,
           duration: float | None = None) -> Iterator[Sample]:
    """Show the progress of ``samples`` on ``file`` (default stderr) while passing each on.
    ``title`` is plain text (never markup); ``duration`` (seconds) adds a bar. Only when ``file``
    is a terminal; the line is cleared when the samples end or an exception passes through."""
    console = Console(stderr=True, highlight=False) if file is None else Console(file=file, highlight=False)
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
    if duration is not None:
        columns.append(BarColumn())
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(escape(title), total=duration, status="")
        count = 0
        for sample in samples:
            count += 1
            progress.update(task, completed=sample.elapsed, status=escape(status(sample, count)))
            yield sample
