"""Shared test setup: puts tests/ on sys.path so helpers like ``forktree`` import from any test dir, and
the repository root for the demo package (``demo/``, not installed)."""
import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
for _path in (REPO_ROOT, TESTS_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# prepare_fork saves heap maps by default: keep the tests' maps out of the user's directory
if "COWPROF_HEAPMAP_DIR" not in os.environ:
    import tempfile

    os.environ["COWPROF_HEAPMAP_DIR"] = tempfile.mkdtemp(prefix="cowprof-test-heapmaps-")

# the workers' late-import records (cowprof.preload) likewise
if "COWPROF_PRELOAD_DIR" not in os.environ:
    import tempfile

    os.environ["COWPROF_PRELOAD_DIR"] = tempfile.mkdtemp(prefix="cowprof-test-preload-")
