"""``cowprof snapshot``: one report of the tree, as a table or JSON (see the command's help)."""
from __future__ import annotations

import enum
import sys
from typing import Any

from cowprof.commands.common import err, numpy_on_one_blas_thread

__all__ = ["By", "main"]


class By(str, enum.Enum):
    """``snapshot --by`` groupings."""

    worker = "worker"
    region = "region"
    type = "type"
    cause = "cause"
    function = "function"


def main(pid: int, *, json_out: bool = False, by: By = By.worker, top_n: int = 10) -> int:
    """One report of the tree of ``pid``: page tables by worker or region, or (``by`` type, cause,
    function) the attribution of the copied bytes; a table, or JSON with ``json_out``."""
    from cowprof.tree import find_tree

    if by in (By.type, By.cause, By.function):
        return _attribution(pid, by, json_out, top_n)
    tree = find_tree(pid)
    from cowprof.pages import scan
    from cowprof.preload import late_imports

    with numpy_on_one_blas_thread():  # the scan imports numpy while its threads read the tree
        report = scan(tree)
    late = late_imports(report.master.pid, [w.pid for w in report.workers])
    if json_out:
        from cowprof.reporters import jsonout

        jsonout.render(report, sys.stdout, extra={"late_imports": late.to_dict()} if late.workers else None)
    else:
        from cowprof.reporters import table

        table.render(report, sys.stdout, by=by.value)
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


def _attribution(pid: int, by: By, json_out: bool, top_n: int) -> int:
    """``snapshot --by type|cause|function``. Without a heap map and without the rights to read the
    master's memory: the by-region view, then one line saying what is needed (exit code 4)."""
    from cowprof import attribution
    from cowprof.reporters import attribution as attr_rep
    from cowprof.reporters import jsonout

    data: Any
    try:
        if by == By.function:
            from cowprof import functions

            data = functions.snapshot(pid, top=top_n)
        else:
            data = attribution.snapshot(pid, causes=(by == By.cause))
    except attribution.NoAttribution as exc:
        from cowprof.pages import scan
        from cowprof.reporters import table
        from cowprof.tree import find_tree

        report = scan(find_tree(pid))
        if json_out:
            jsonout.render(report, sys.stdout)
        else:
            table.render(report, sys.stdout, by="region")
        err(f"{exc}; showing copied bytes by region")
        return exc.exit_code
    if json_out:
        jsonout.render(data, sys.stdout, top=top_n)
    else:
        attr_rep.render(data, sys.stdout, by=by.value, top=top_n)
    return 0
