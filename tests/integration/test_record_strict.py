"""Record files are read strictly (issue 12, item 3), measured in a child interpreter: a huge line
is refused without reading it whole (tests/unit/test_record_strict.py has the other cases)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import record_header

HEADER = record_header()


def test_a_300_mb_line_costs_no_300_mb_to_refuse(tmp_path):
    """A child reads a sparse file whose second line is 300 MB; its peak RSS must stay far below
    the line (reading it whole cost ~950 MB before)."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(HEADER).encode() + b"\n")
        f.truncate(f.tell() + 300 * (1 << 20))  # 300 MB of NUL bytes, no newline: nothing on disk
    code = textwrap.dedent(f"""
        import resource, sys
        from cowprof.record import read_record
        from cowprof.errors import RecordFileError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_record({str(path)!r})
            print("accepted")
        except RecordFileError as exc:
            print("refused", str(exc))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdict, grown_kib = proc.stdout.splitlines()[0], int(proc.stdout.splitlines()[-1])
    assert verdict.startswith("refused") and "longer than" in verdict
    assert grown_kib < 100 * 1024, f"peak RSS grew by {grown_kib} KiB reading it"
