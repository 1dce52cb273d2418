"""What the ``cowprof`` commands share: one-line messages, output-file checks, signal handling."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cowprof.errors import BadInput

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PROG", "check_new_output", "err", "interrupt_on_term", "numpy_on_one_blas_thread", "one_line"]

PROG = "cowprof"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, line breaks included, as one space."""
    return " ".join(str(text).split())


def err(message: str) -> None:
    """Write ``cowprof: MESSAGE`` (one line) to stderr."""
    sys.stderr.write(f"{PROG}: {one_line(message)}\n")
    sys.stderr.flush()


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
