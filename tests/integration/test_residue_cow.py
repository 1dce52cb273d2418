"""The residual causes of copies after prepare_fork, each with its fix on and off (same bar, so the
test can fail): the allocator fill (a child allocating into the master's partly used pools), hot
code relocation (a child whose calls write the code objects they run) and the released type
attribute cache (a child whose lookups free the names only that cache held) and the malloc fill
(a child whose malloc() reuses the master's free chunks) and, on 3.14, the settled constant loads (a
child whose LOAD_CONST_MORTAL writes the refcounts of constants made immortal) and the huge-page
advice (a range of the shared heap collapsed into a huge page, as khugepaged does, in the child)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from cowprof.pages import scan

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="immortalization needs CPython 3.12+")
PAGE = os.sysconf("SC_PAGE_SIZE")


def run_scenario(scenario: str, mode: str) -> dict:
    """Runs tests/residue_heap.py, scans its tree while the child waits, returns the script's JSON
    plus the child's copied and new bytes."""
    proc = subprocess.Popen([sys.executable, os.path.join(TESTS_DIR, "residue_heap.py"), scenario, mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=TESTS_DIR)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"{line!r}\n{proc.stderr.read()}"
        _, master, child = line.split()
        report = scan(int(master))
        worker = next(w for w in report.workers if w.pid == int(child))
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["child_status"] == 0
    result.update(copied=worker.copied_bytes, new=worker.new_bytes)
    return result


@pytest.fixture(scope="module")
def residue() -> Callable[[str, str], dict]:
    """``residue(scenario, mode)``: run_scenario's result, each pair run once per module."""
    return functools.cache(run_scenario)


# measured on 3.12 (2026-12-01): pools on ~160 pages copied (the child's list buffer lands in a
# malloc free chunk), off ~1,600; code on ~270 (1,500 code objects of 328 bytes: 120 pages when
# packed), off ~1,600
POOLS_BAR = 400 * PAGE
CODE_BAR = 700 * PAGE
# measured 2026-12-03 with 8,000 names (the 4,096-entry cache full whatever the hash seed; with
# 4,000, off went as low as 187 pages): caches on 104-115 pages on 3.12-3.15 (the cache's own
# array, the child's names), off 277-373 (the master's names freed all over its pools, and the
# child's allocated in their place)
CACHES_BAR = 180 * PAGE
# measured on 3.12 (2026-12-02): malloc on ~80 pages copied and ~2,000 new (the child's 6,000
# bytes objects packed in fresh memory), off ~4,000 copied and ~160 new (each one in a free chunk
# of the master's, a page copied for each)
MALLOC_BAR = 1000 * PAGE


@needs_312
@pytest.mark.slow
def test_fill_keeps_child_allocations_out_of_shared_pools(residue):
    on = residue("pools", "on")
    assert on["fill_skipped"] is None and on["filler_bytes"] > 0
    assert on["copied"] < POOLS_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the fill"


@needs_312
@pytest.mark.slow
def test_without_fill_child_allocations_copy_shared_pools(residue):
    off = residue("pools", "off")
    assert off["filler_bytes"] == 0
    assert off["copied"] >= POOLS_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages without the fill"


@needs_312
@pytest.mark.slow
def test_relocated_hot_code_is_copied_on_few_pages(residue):
    on = residue("code", "on")
    assert on["relocation"]["skipped"] is None and on["relocation"]["hot"] >= 1500
    assert on["copied"] < CODE_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with relocation"


@needs_312
@pytest.mark.slow
def test_scattered_hot_code_is_copied_on_many_pages(residue):
    off = residue("code", "off")
    assert off["relocation"] is None
    assert off["copied"] >= CODE_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages without relocation"


@needs_312
@pytest.mark.slow
def test_released_type_cache_leaves_no_names_for_the_child_to_free(residue):
    on = residue("caches", "on")
    assert on["copied"] < CACHES_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the cache released"


@needs_312
@pytest.mark.slow
def test_names_left_in_the_type_cache_are_freed_on_shared_pages(residue):
    off = residue("caches", "off")
    assert off["copied"] >= CACHES_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages with the cache kept"


@needs_312
@pytest.mark.slow
def test_malloc_fill_sends_child_allocations_to_fresh_memory(residue):
    on = residue("malloc", "on")
    assert on["malloc_fill_skipped"] is None and on["malloc_filler_bytes"] > 0
    assert on["copied"] < MALLOC_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the malloc fill"
    # and it is not only moved: packed densely, the child's memory is smaller as a whole
    off = residue("malloc", "off")
    assert on["copied"] + on["new"] < 0.75 * (off["copied"] + off["new"])


@needs_312
@pytest.mark.slow
def test_without_malloc_fill_child_allocations_copy_shared_chunks(residue):
    off = residue("malloc", "off")
    assert off["malloc_filler_bytes"] == 0 and off["malloc_fill_skipped"] == "turned off"
    assert off["copied"] >= MALLOC_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages without the malloc fill"


# measured 2026-12-02: consts on ~85 pages copied on 3.12-3.15 (the child's own frames, its loop's
# code), off ~263 on 3.14 (every constant's page: LOAD_CONST_MORTAL increfs without the immortal check)
CONSTS_BAR = 160 * PAGE
needs_mortal_loads = pytest.mark.skipif(
    "LOAD_CONST_MORTAL" not in getattr(__import__("opcode"), "_specialized_opmap", {}),
    reason="this CPython has no LOAD_CONST_MORTAL (3.14 only): nothing writes an immortal constant to compare with")


@needs_312
@pytest.mark.slow
def test_settled_constant_loads_leave_constants_shared(residue):
    on = residue("consts", "on")
    assert on["copied"] < CONSTS_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the loads settled"


@needs_312
@needs_mortal_loads
@pytest.mark.slow
def test_mortal_constant_loads_copy_the_constants(residue):
    on, off = residue("consts", "on"), residue("consts", "off")
    assert on["const_loads_settled"] >= 3000 and off["const_loads_settled"] == 0
    assert off["copied"] >= CONSTS_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages with mortal loads"


# measured on 3.12 (2026-12-02): late on ~190 pages copied (the child's bytes packed in fresh pools:
# ~1,600 new), off ~3,400 (each of the master's post-prepare free blocks taken on a shared page)
LATE_BAR = 1000 * PAGE


@needs_312
@pytest.mark.slow
def test_fill_before_fork_covers_what_the_master_freed_after_preparing(residue):
    on = residue("late", "on")
    assert on["copied"] < LATE_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the fill before fork"


@needs_312
@pytest.mark.slow
def test_without_fill_before_fork_the_child_reuses_the_masters_late_free_blocks(residue):
    off = residue("late", "off")
    assert off["copied"] >= LATE_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages without the fill before fork"


# measured 2026-12-03 on 3.12/3.15: hugepages on ~210 pages copied (the child's ctypes), off ~1,740
# (three 2 MiB ranges collapsed, each copied whole)
HUGEPAGES_BAR = 1000 * PAGE


@pytest.mark.slow
def test_shared_heap_advised_no_huge_pages_is_never_collapsed(residue):
    on = residue("hugepages", "on")
    assert on["no_hugepages_skipped"] is None and on["no_hugepages_bytes"] >= 8 << 20
    assert on["child_result"] and all(e != 0 for e in on["child_result"]), on["child_result"]  # refused
    assert on["copied"] < HUGEPAGES_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with huge pages kept off"


@pytest.mark.slow
def test_a_collapsed_huge_page_copies_the_whole_shared_range(residue):
    off = residue("hugepages", "off")
    if off["child_result"] and all(e == 22 for e in off["child_result"]):  # EINVAL: no MADV_COLLAPSE
        pytest.skip(f"this kernel ({os.uname().release}) has no MADV_COLLAPSE (Linux 6.1+) to collapse with")
    assert off["no_hugepages_bytes"] == 0 and off["no_hugepages_skipped"] == "not requested"
    assert off["child_result"] and not any(off["child_result"]), off["child_result"]
    assert off["copied"] >= HUGEPAGES_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages when collapsed"


# measured 2026-12-04: on ~180 pages copied on 3.12, ~360 on 3.13-3.15 (the instances' own pages,
# which materializing their dicts writes, and the child's run time), off ~1,490 on 3.12, ~1,680 on
# 3.13-3.15 (a class's shared key table on nearly every page of the 3,000 classes)
KEYS_BAR = 600 * PAGE


@needs_312
def test_immortal_shared_key_tables_are_not_counted_by_instance_dicts(residue):
    on = residue("keys", "on")
    assert on["child_result"] == 3000
    assert on["copied"] < KEYS_BAR, f"child copied {on['copied'] / PAGE:.0f} pages with the tables immortal"


@needs_312
def test_instance_dicts_count_mortal_shared_key_tables_on_shared_pages(residue):
    off = residue("keys", "off")
    assert off["copied"] >= KEYS_BAR, f"child copied only {off['copied'] / PAGE:.0f} pages with mortal tables"
