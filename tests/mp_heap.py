"""The heap multiprocessing children share (see tests/mp_tasks.py): built at import."""
import os

from prepare_heap import build

HEAP = build(int(os.environ.get("COWPROF_TEST_MP_OBJECTS", "600000")))
