"""``cowprof record``: samples to a JSON Lines file (with ``--by``, each followed by its
attribution), with a progress line on a terminal. :func:`record_loop` is also ``run --record``'s."""
from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowprof.commands.common import check_new_output, err, interrupt_on_term, numpy_on_one_blas_thread

if TYPE_CHECKING:
    from cowprof.attributor import Attributor
    from cowprof.record import RecordWriter
    from cowprof.sampler import Sample, Sampler

__all__ = ["RecordBy", "main", "record_loop", "target_info", "written_samples"]


class RecordBy(str, enum.Enum):
    """``record --by`` groupings stored in each sample (``cause`` includes ``type``)."""

    type = "type"
    cause = "cause"
    function = "function"


def target_info(sampler: Sampler, *, interval: float, duration: float | None = None,
                cmdline: list[str] | None = None) -> dict[str, Any]:
    """The record header's ``target``: which tree, its command line, the sampling settings."""
    from cowprof import procfs
    from cowprof.errors import CowprofError

    if cmdline is None:
        try:
            cmdline = procfs.read_cmdline(sampler.master)
        except CowprofError:
            cmdline = None
    return {"pid": sampler.master, "requested_pid": sampler.requested_pid, "cmdline": cmdline,
            "interval": interval, "duration": duration}


def written_samples(sampler: Sampler, writer: RecordWriter, *, attributor: Attributor | None = None,
                    top: int | None = None) -> Iterator[Sample]:
    """Each sample of ``sampler``, once written (with ``attributor``: and its attribution line).
    The first sample whose attribution fails says why on stderr."""
    warned = False
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
        yield sample


def record_loop(sampler: Sampler, writer: RecordWriter,
                on_sample: Callable[[Sample], None] | None = None, *,
                attributor: Attributor | None = None, top: int | None = None,
                view: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None) -> str:
    """Write every sample of ``sampler`` (:func:`written_samples`), shown through ``view`` (a
    reporter that passes the samples on, e.g. :func:`cowprof.reporters.progress.render`), then
    ``on_sample``; returns why it stopped. Ctrl-C/SIGTERM stop it cleanly (the sample in progress
    is dropped, every written line is complete)."""
    samples: Iterable[Sample] = written_samples(sampler, writer, attributor=attributor, top=top)
    if view is not None:
        samples = view(samples)
    try:
        for sample in samples:
            if on_sample is not None:
                on_sample(sample)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        close = getattr(samples, "close", None)  # a view left half-way (on_sample raised) ends now
        if close is not None:
            close()
    return sampler.stop_reason or "stopped"


def main(pid: int, *, output: Path, interval: float = 1.0, duration: float | None = None,
         force: bool = False, count: int | None = None, by: Sequence[RecordBy] | None = None,
         top_n: int = 20) -> int:
    """Record the tree of ``pid`` to ``output`` every ``interval`` seconds until the master exits,
    ``duration`` or ``count`` ends, or Ctrl-C/SIGTERM; with ``by``, each sample's attribution."""
    from cowprof.record import RecordWriter
    from cowprof.reporters import progress
    from cowprof.sampler import Sampler

    check_new_output(output, force)  # fail before touching the target
    groupings = sorted({b.value for b in by or ()}, key=[b.value for b in RecordBy].index)
    with numpy_on_one_blas_thread():
        sampler = Sampler(pid, interval=interval, duration=duration, count=count, keep_addresses=bool(groupings))
    attributor = None
    if groupings:
        from cowprof.attributor import Attributor

        attributor = Attributor(sampler.master, causes="cause" in groupings, functions="function" in groupings)
    failed = 0

    def count_failed(sample: Sample) -> None:
        nonlocal failed
        failed += sample.report is None

    def view(samples: Iterable[Sample]) -> Iterable[Sample]:
        return progress.render(samples, sys.stderr, title=f"recording master {sampler.master} to {output}",
                               duration=duration)

    with RecordWriter(output, target=target_info(sampler, interval=interval, duration=duration),
                      force=force, attribution={"by": groupings, "top": top_n} if groupings else None) as writer:
        with interrupt_on_term():
            reason = record_loop(sampler, writer, count_failed, attributor=attributor, top=top_n, view=view)
            writer.close(reason)
    fail_note = f", {failed} failed" if failed else ""
    err(f"recorded {writer.samples} samples{fail_note} to {output} ({reason})")
    return 0
