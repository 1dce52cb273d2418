"""``python -m cowprof``: the same CLI as the ``cowprof`` command."""
import sys

from cowprof.cli import main

if __name__ == "__main__":
    sys.exit(main())
