"""``cowprof report``: a recording as tables (or JSON), optionally an HTML report too."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cowprof.commands.common import check_new_output, err

__all__ = ["main"]


def main(file: Path, *, html: Path | None = None, json_out: bool = False, force: bool = False) -> int:
    """Read the record ``file`` and print it (tables, or JSON with ``json_out``); with ``html``,
    also write the HTML report there (a new file unless ``force``)."""
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
        html_reporter.render(recording, buf)
        html_text = buf.getvalue()
    if json_out:
        from cowprof.reporters import jsonout

        jsonout.render(recording, sys.stdout)
    else:
        from cowprof.reporters import table

        table.render(recording, sys.stdout)
    if html is not None and html_text is not None:
        from cowprof.outfile import write_new

        write_new(os.fspath(html), html_text.encode("utf-8"), force=force)
        err(f"wrote {html}")
    return 0
