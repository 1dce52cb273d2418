"""``python -m cowprof``: the same CLI as the ``cowprof`` command."""
import sys

from cowprof.cli import main

if __name__ == "__main__":
    code = main()
    # CPython 3.11-3.13 under ``-m`` end the process by SIGINT when a string exec/eval was ever cut
    # short by a KeyboardInterrupt, even a caught one (a Ctrl-C of `record` landing while an import
    # builds a dataclass). A string exec that ends cleanly clears that mark, so the exit code stays ours.
    exec("")
    sys.exit(code)
