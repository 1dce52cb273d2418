"""Test helper: synthetic recordings made with ``record --by cause --by function`` (format 1.1).

``attributed(i)`` is sample ``i`` of a tree whose two workers copy more str (and a little float)
every second, with its attribution; ``write_attributed(path)`` writes four such samples, then one
whose attribution failed, through :class:`cowprof.record.RecordWriter`.
"""
from __future__ import annotations

from cowprof.attribution import Attribution, WorkerAttribution
from cowprof.attributor import SampleAttribution
from cowprof.errors import AccessDenied
from cowprof.functions import Function, FunctionAttribution
from cowprof.pages import PageReport
from cowprof.record import RecordWriter
from cowprof.sampler import Sample
from conftest import MiB, master_dict, page_report, region_dict, sample, worker_dict

PAGE = 4096


def report(t: float, copied: dict[int, int]) -> PageReport:
    """Master 10 and workers that copied ``copied[pid]`` bytes (none new)."""
    return page_report([worker_dict(pid, c, shared=8 * MiB, new=0) for pid, c in copied.items()], taken_at=t,
                       page_size=PAGE, master=master_dict(regions={"python": region_dict(8 * MiB)}))


def attributed(i: int) -> tuple[Sample, SampleAttribution]:
    """Sample ``i`` of a tree whose two workers copy more str (and a little float) every second."""
    t = 1000.0 + i
    copied = {11: (4 + 2 * i) * MiB, 12: (2 + i) * MiB}
    workers = []
    for pid, c in copied.items():
        strs, floats, no_obj = c * 3 // 4, c // 8, c // 16
        rest = c - strs - floats - no_obj  # small types, beyond a top-2 cut
        workers.append(WorkerAttribution(
            pid=pid, copied_bytes=c, types=[("str", strs), ("float", floats), ("dict", rest // 2),
                                            ("tuple", rest - rest // 2)],
            no_object_bytes=no_obj,
            causes={"refcount": c // 2, "gc_header": 0, "str_hash": c // 4, "other_field": c // 8,
                    "allocator": c - c // 2 - c // 4 - c // 8, "identical": 0, "unknown": 0},
            changed_words={"refcount": 10, "gc_header": 0, "str_hash": 5, "other_field": 2, "allocator": 1,
                           "identical": 0, "unknown": 0},
            originals={"master": c, "sibling": 0, "master_assumed": 0, "none": 0}))
    attr = Attribution(version=1, master=10, taken_at=t, page_size=PAGE, mode="exclusive-bit",
                       heapmap_records=1234, heapmap_created_at=900.5, workers=workers, seconds=0.01)
    fa = FunctionAttribution(master=10, taken_at=t, source="heapmap", copied_bytes=sum(copied.values()),
                             code_bytes=(3 + i) * 8192,
                             functions=[(Function("app.views.hot", "/srv/app/views.py", 12), (2 + i) * 8192),
                                        (Function("app.models.save", "/srv/app/models.py", 40), 8192),
                                        (Function("<lambda>", "<string>", 1), 4096)],
                             modules=[("builtins", 100), ("app.models", 50)])
    return sample(i, report(t, copied)), SampleAttribution(attr, fa, None, seconds=0.02)


def write_attributed(path, n: int = 4, *, top: int = 2) -> None:
    with RecordWriter(path, target={"pid": 10, "interval": 1.0},
                      attribution={"by": ["cause", "function"], "top": top}) as w:
        for i in range(n):
            s, sa = attributed(i)
            w.write(s)
            w.write_attribution(i, sa, top=top)
        w.write(sample(n, report(1000.0 + n, {11: MiB})))
        w.write_attribution(n, SampleAttribution(None, None, AccessDenied(10, "no heap map and no ptrace rights")),
                            top=top)
        w.close("count")
