"""``python -m demo`` (run from the repository root, as ``scripts/demo`` does)."""
import sys

from demo.run import main

sys.exit(main())
