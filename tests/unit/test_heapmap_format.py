"""The heap map's file formats (issue 17): format 3 (compact, written by default) and format 2 (16 bytes
a record, written before; still read). Records round-trip exactly in both, whatever their addresses,
sizes and types; a file written by the format 2 code path of earlier versions reads as it did; a
malformed format 3 file is CorruptHeapMap, never an exception of numpy or a wrong map."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cowprof import heapmap, procfs

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _map(addr, size, typ, names) -> heapmap.HeapMap:
    return heapmap.HeapMap(pid=os.getpid(), start_ticks=procfs.read_stat(os.getpid()).starttime_ticks, boot_id="",
                           created_at=5.0, addr=np.asarray(addr, dtype=np.uint64),
                           size=np.asarray(size, dtype=np.uint32), type=np.asarray(typ, dtype=np.uint32),
                           type_names=np.array(names), type_preheader=np.zeros(len(names), dtype=np.uint8))


def _heap_like(n: int, seed: int = 1) -> heapmap.HeapMap:
    """Records the way a walk makes them: mostly short hops in 16-byte steps between a few pools,
    some jumps back and far away, a few unaligned buffers, sizes mostly the type's usual one."""
    rng = np.random.default_rng(seed)
    pools = np.uint64(0x7F00_0000_0000) + rng.integers(0, 1 << 30, 8).astype(np.uint64) * np.uint64(16)
    hop = rng.integers(1, 8, n).astype(np.uint64) * np.uint64(16)
    pool = rng.integers(0, 8, n)
    addr = pools[pool] + np.cumsum(hop)
    far = rng.random(n) < 0.01
    addr[far] = rng.integers(0x1000, 1 << 47, int(far.sum())).astype(np.uint64)
    odd = rng.random(n) < 0.001
    addr[odd] += np.uint64(8)
    typ = rng.choice([0, 1, 2, 3, 300], n, p=[0.4, 0.3, 0.2, 0.09, 0.01])
    usual = np.array([32, 48, 24, 64] + [56] * 297)
    size = usual[typ].astype(np.uint32)
    own = rng.random(n) < 0.2
    size[own] = rng.integers(1, 1 << 20, int(own.sum()))
    return _map(addr, size, typ, [f"t{i}" for i in range(301)])


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("case", ["heap-like", "extremes", "empty"])
def test_records_round_trip_exactly(tmp_path, version, case):
    if case == "heap-like":
        hm = _heap_like(3 * heapmap.CHUNK_RECORDS + 123)  # several chunks, the last one partial
    elif case == "extremes":  # unaligned, the largest address, deltas that wrap around, huge sizes
        hm = _map([1, 2**64 - 1, 0, 2**63 + 7, 2**40 + 3, 2**40 + 3, 17],
                  [0, 2**32 - 1, 1, 2**31, 7, 7, 0], [0, 1, 70000, 1, 0, 0, 69999],
                  [f"t{i}" for i in range(70001)])
    else:
        hm = _map([], [], [], [])
    path = heapmap.save(hm, str(tmp_path), format_version=version)
    got = heapmap._read_segment(path)  # in the order written (read() sorts)
    assert got.format_version == version
    for field in ("addr", "size", "type"):
        assert np.array_equal(getattr(got, field), getattr(hm, field)), field
    assert (got.pid, got.start_ticks, got.created_at) == (hm.pid, hm.start_ticks, hm.created_at)


def test_format_3_is_small_and_format_2_is_not(tmp_path):
    """The bar (<= 8 bytes a record on heap-like records) fails for the format written before."""
    hm = _heap_like(100_000)
    sizes = {}
    for version in (2, 3):
        raw = open(heapmap.save(hm, str(tmp_path / str(version)), format_version=version), "rb").read()
        sizes[version] = heapmap.parse_header(raw).records_bytes / len(hm)
    assert sizes[3] <= 8 < sizes[2] == 16, sizes


def test_each_stream_takes_its_shortest_width():
    one = heapmap._stream_bytes(np.arange(1000, dtype=np.uint64) % 200)
    assert heapmap.STREAM.unpack_from(one) == (1, 0) and len(one) == 5 + 1000
    rare = np.full(1000, 3, dtype=np.uint64)
    rare[[5, 700]] = 2**40  # two values that need 6 bytes: exceptions, not a 6-byte stream
    s = heapmap._stream_bytes(rare)
    assert heapmap.STREAM.unpack_from(s) == (1, 2) and len(s) == 5 + 1000 + 2 * 12
    wide = heapmap._stream_bytes(np.arange(1000, dtype=np.uint64) % 200 * np.uint64(2**40))  # < 2**48
    assert heapmap.STREAM.unpack_from(wide)[0] == 6


def test_a_format_2_file_written_by_the_earlier_code_reads_as_before():
    """tests/unit/fixtures/heapmap-format2.hmap was written by heapmap.save of main at 90d2811 (format
    2, before format 3 existed), for these records."""
    hm = heapmap.read(os.path.join(FIXTURES, "heapmap-format2.hmap"))
    assert hm.format_version == 2
    assert (hm.pid, hm.start_ticks, hm.boot_id, hm.created_at) == (4242, 777, "b00t", 1764650000.5)
    assert hm.addr.tolist() == [0x55D0C0FFEE10, 0x7F0000000040, 0x7F0000001000, 0x7F0000001030]  # sorted
    assert hm.size.tolist() == [24, 4096, 48, 1 << 31]
    assert [str(hm.type_names[t]) for t in hm.type] == ["float", "dict", "__main__.Record", "__main__.Record"]
    assert hm.type_preheader.tolist() == [16, 0, 32]
    assert hm.layout["gc_head"] == 16 and hm.layout["basicsize"] == {"list": 40}


def _records_region(path: str) -> tuple[bytes, heapmap.Header]:
    raw = open(path, "rb").read()
    return raw, heapmap.parse_header(raw)


# byte offsets in a one-chunk map: chunk header (16), then the address stream's header (width, exceptions)
CORRUPT = {
    "records fewer than the header says": lambda r, o: r[:o] + (5).to_bytes(4, "little") + r[o + 4:],
    "own sizes more than records": lambda r, o: r[:o + 4] + (10**6).to_bytes(4, "little") + r[o + 8:],
    "shift above 63": lambda r, o: r[:o + 8] + (64).to_bytes(4, "little") + r[o + 12:],
    "no types in a chunk": lambda r, o: r[:o + 12] + (0).to_bytes(4, "little") + r[o + 16:],
    "width 0": lambda r, o: r[:o + 16] + b"\x00" + r[o + 17:],
    "width 9": lambda r, o: r[:o + 16] + b"\x09" + r[o + 17:],
    "exceptions past the end": lambda r, o: r[:o + 17] + (10**6).to_bytes(4, "little") + r[o + 21:],
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_malformed_format_3_records_are_corrupt(tmp_path, how):
    path = heapmap.save(_heap_like(1000), str(tmp_path))
    raw, head = _records_region(path)
    assert head.version == 3
    with open(path, "wb") as f:
        f.write(CORRUPT[how](raw, head.offset))
    with pytest.raises(heapmap.CorruptHeapMap, match="corrupt heap map records"):
        heapmap.read(path)


def test_type_indexes_and_exception_indexes_are_checked(tmp_path):
    path = heapmap.save(_heap_like(1000), str(tmp_path))
    raw, head = _records_region(path)
    m = json.loads(raw[head.offset + head.records_bytes:])
    for key in ("type_names", "type_size", "type_preheader"):
        m[key] = m[key][:3]  # types 3 and 300 lose their name
    new_meta = json.dumps(m).encode()
    with open(path, "wb") as f:
        f.write(heapmap.HEADER_V3.pack(heapmap.MAGIC, 3, len(new_meta), head.records, head.offset,
                                       head.records_bytes) + raw[heapmap.HEADER_V3.size:head.offset + head.records_bytes]
                + new_meta)
    with pytest.raises(heapmap.CorruptHeapMap, match="type index has no name"):
        heapmap.read(path)
    # a record whose type is not among its chunk's types
    u64 = lambda *v: np.array(v, dtype=np.uint64)  # noqa: E731
    chunk = (heapmap.CHUNK.pack(2, 0, 0, 1) + heapmap._stream_bytes(u64(32, 32)) + heapmap._stream_bytes(u64(0))
             + heapmap._stream_bytes(u64(0, 2)) + heapmap._stream_bytes(u64()))
    with pytest.raises(ValueError, match="not among its chunk's"):
        heapmap._decode_v3(np.frombuffer(chunk, dtype=np.uint8), 2, np.zeros(1, dtype=np.uint32), 1)
    # an exception whose index is past its stream's values
    rare = np.full(10, 3, dtype=np.uint64)
    rare[4] = 2**40
    stream = bytearray(heapmap._stream_bytes(rare))
    stream[-12:-8] = (10).to_bytes(4, "little")
    with pytest.raises(ValueError, match="out of range"):
        heapmap._read_stream(np.frombuffer(bytes(stream), dtype=np.uint8), 0, 10, np.empty(10, dtype=np.uint64))


def test_the_write_format_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(heapmap.FORMAT_ENV, raising=False)
    assert heapmap.write_format() == 3
    monkeypatch.setenv(heapmap.FORMAT_ENV, "2")
    assert heapmap.write_format() == 2
    monkeypatch.setenv(heapmap.FORMAT_ENV, "16")
    with pytest.raises(heapmap.BadInput, match="must be 2 or 3"):
        heapmap.write_format()
