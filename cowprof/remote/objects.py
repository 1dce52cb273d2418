"""Python objects read from outside: verified type objects and their names, str contents, dict
look-ups, and the function a code object belongs to.

Every value is checked before it is believed: a type is a type when its own type is ``type`` (or a
metatype whose type is ``type``) and its flags say it is ready; a name is a str when its ``ob_type``
is the target's ``str``; a heap type's ``ht_name`` must spell its ``tp_name``. What fails a check
is ``None`` (the caller reports it as unknown).
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

from .target import (
    TPFLAGS_HAVE_GC,
    TPFLAGS_HEAPTYPE,
    TPFLAGS_PREHEADER,
    TPFLAGS_READY,
    TPFLAGS_TYPE_SUBCLASS,
    Interpreter,
    Memory,
)

__all__ = ["TypeInfo", "TypeTable", "read_str"]

_MAX_NAME = 4096


@dataclasses.dataclass(frozen=True)
class TypeInfo:
    addr: int
    name: str  # module.qualname as cowprof.heapmap names types ("float", "sample_app.data.Customer")
    module: str  # "builtins" for builtins
    flags: int
    basicsize: int
    itemsize: int
    preheader: int  # GC header + managed dict/weakref pre-header bytes before the object


def read_str(mem: Memory, interp: Interpreter, addr: int, limit: int = _MAX_NAME) -> str | None:
    """The contents of the exact str at ``addr`` (compact strings only), or None."""
    lay = interp.layout
    head = mem.read(addr, lay.str_compact_data) if addr and addr % 8 == 0 else None
    if head is None or struct.unpack_from("<Q", head, 8)[0] != interp.symbols["PyUnicode_Type"]:
        return None
    length = struct.unpack_from("<q", head, lay.str_length)[0]
    state = struct.unpack_from("<I", head, lay.str_state)[0]
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or not 0 <= length <= limit or kind not in (1, 2, 4):
        return None
    if ascii_:
        data = mem.read(addr + lay.str_ascii_data, length)
        return None if data is None else data.decode("ascii", "replace")
    data = mem.read(addr + lay.str_compact_data, length * kind)
    if data is None:
        return None
    return data.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind], "replace")


def dict_get_str(mem: Memory, interp: Interpreter, addr: int, key: str) -> int | None:
    """The value (an address) stored under the str ``key`` in the combined dict at ``addr``."""
    lay = interp.layout
    keys, values = mem.word(addr + lay.ma_keys), mem.word(addr + lay.ma_values)
    if not keys or values:
        return None
    head = mem.read(keys, lay.dk_indices)
    if head is None:
        return None
    log2_index_bytes, kind = head[lay.dk_log2_index_bytes], head[lay.dk_kind]
    nentries = struct.unpack_from("<q", head, lay.dk_nentries)[0]
    if not 0 <= nentries <= 1 << 16 or log2_index_bytes > 40 or kind > 2:
        return None
    entry, koff = (24, 8) if kind == 0 else (16, 0)
    raw = mem.read(keys + lay.dk_indices + (1 << log2_index_bytes), nentries * entry)
    if raw is None:
        return None
    for i in range(nentries):
        k, v = struct.unpack_from("<QQ", raw, i * entry + koff)
        if k and v and read_str(mem, interp, k, len(key)) == key:
            return int(v)
    return None


class TypeTable:
    """Type objects of the target found so far; each candidate address is checked once.

    Verified types are numbered in the order found (``infos``); :meth:`lookup` maps many addresses
    to (index, pre-header) at once."""

    def __init__(self, mem: Memory, interp: Interpreter, writable: np.ndarray) -> None:
        self.mem, self.interp = mem, interp
        self._writable = writable  # (n, 2) uint64 [start, end) of the writable mappings, sorted
        self.infos: list[TypeInfo] = []
        self._by_addr: dict[int, int] = {}  # verified address -> index in infos
        self._seen = np.zeros(0, dtype=np.uint64)  # every candidate checked so far, sorted
        self._known = np.zeros(0, dtype=np.uint64)  # verified addresses, sorted
        self._known_index = np.zeros(0, dtype=np.int64)
        self._known_pre = np.zeros(0, dtype=np.int64)
        self._type = interp.symbols["PyType_Type"]
        #: 16 KiB-aligned bases of verified pymalloc pools: no type object lives there (a heap type
        #: is far bigger than pymalloc's 512 bytes, static types are in a binary's data)
        self.pool_bases = np.zeros(0, dtype=np.uint64)

    def _in_writable(self, addrs: np.ndarray) -> np.ndarray:
        starts, ends = self._writable[:, 0], self._writable[:, 1]
        i = np.searchsorted(starts, addrs, side="right") - 1
        ok = i >= 0
        ok[ok] = addrs[ok] < ends[i[ok]]
        aligned: np.ndarray = ok & (addrs % np.uint64(8) == 0)
        return aligned

    def resolve(self, candidates: np.ndarray) -> np.ndarray:
        """Verify the type addresses in ``candidates``; returns a bool array: which are types."""
        cand = np.unique(np.asarray(candidates, dtype=np.uint64))
        new = cand[~np.isin(cand, self._seen, assume_unique=True)] if self._seen.size else cand
        if new.size:
            lay = self.interp.layout
            keep = new[self._in_writable(new)]
            if self.pool_bases.size:
                keep = keep[~np.isin(keep & ~np.uint64((16 << 10) - 1), self.pool_bases)]
            offs = np.array([8, lay.tp_flags, lay.tp_basicsize], dtype=np.uint64)
            vals, oks = self.mem.words_uncached((keep[:, None] + offs[None, :]).reshape(-1))
            vals, oks = vals.reshape(-1, 3), oks.reshape(-1, 3)
            meta, flags, basic = vals[:, 0], vals[:, 1], vals[:, 2]
            ok1, ok2, ok3 = oks[:, 0], oks[:, 1], oks[:, 2]
            plausible = ok1 & ok2 & ok3 & ((flags & np.uint64(TPFLAGS_READY)) != 0) & (basic >= 16) & (basic < 1 << 24)
            for c, m, f in zip(keep[plausible].tolist(), meta[plausible].tolist(), flags[plausible].tolist()):
                if c not in self._by_addr and (m == self._type or self._is_metatype(m)):
                    self._add(self._info(c, f))
            self._seen = np.union1d(self._seen, new)
            order = np.argsort(np.array(list(self._by_addr), dtype=np.uint64), kind="stable")
            self._known = np.array(list(self._by_addr), dtype=np.uint64)[order]
            self._known_index = np.array(list(self._by_addr.values()), dtype=np.int64)[order]
            self._known_pre = np.array([self.infos[i].preheader for i in self._known_index.tolist()], dtype=np.int64)
        return self.lookup(np.asarray(candidates, dtype=np.uint64))[0] >= 0

    def lookup(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index in ``infos`` or -1, pre-header or -1) of each address (verified types only)."""
        if self._known.size == 0:
            return np.full(addrs.size, -1, dtype=np.int64), np.full(addrs.size, -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self._known, addrs), self._known.size - 1)
        hit = self._known[i] == addrs
        return np.where(hit, self._known_index[i], -1), np.where(hit, self._known_pre[i], -1)

    def _add(self, info: TypeInfo | None) -> int:
        if info is None:
            return -1
        if info.addr not in self._by_addr:
            self._by_addr[info.addr] = len(self.infos)
            self.infos.append(info)
        return self._by_addr[info.addr]

    def _is_metatype(self, m: int) -> bool:
        if m in self._by_addr:
            return bool(self.infos[self._by_addr[m]].flags & TPFLAGS_TYPE_SUBCLASS)
        if self.mem.word(m + 8) != self._type:
            return False
        f = self.mem.word(m + self.interp.layout.tp_flags)
        i = self._add(self._info(m, f)) if f is not None and f & TPFLAGS_READY else -1
        return i >= 0 and bool(self.infos[i].flags & TPFLAGS_TYPE_SUBCLASS)

    def _info(self, addr: int, flags: int) -> TypeInfo | None:
        mem, lay = self.mem, self.interp.layout
        tp_name_ptr = mem.word(addr + lay.tp_name)
        tp_name = mem.cstring(tp_name_ptr, _MAX_NAME) if tp_name_ptr else None
        basic, item = mem.word(addr + lay.tp_basicsize), mem.word(addr + lay.tp_itemsize)
        if tp_name is None or basic is None or item is None:
            return None
        preheader = (lay.gc_head if flags & TPFLAGS_HAVE_GC else 0) + \
            (lay.managed_preheader if flags & TPFLAGS_PREHEADER else 0)
        if not flags & TPFLAGS_HEAPTYPE:
            static_module, _, _ = tp_name.rpartition(".")
            return TypeInfo(addr, tp_name, static_module or "builtins", flags, basic, item, preheader)
        # heap type: ht_name spells tp_name; ht_qualname follows ht_slots; __module__ is in its dict
        ht_name = mem.word(addr + lay.ht_name)
        qual_ptr = mem.word(addr + lay.ht_name + 16)
        if ht_name is None or read_str(self.mem, self.interp, ht_name) != tp_name or qual_ptr is None:
            return None
        qualname = read_str(self.mem, self.interp, qual_ptr)
        if qualname is None:
            return None
        module = None
        tp_dict = mem.word(addr + lay.tp_dict)
        if tp_dict and mem.word(tp_dict + 8) == self.interp.symbols["PyDict_Type"]:
            mod_ptr = dict_get_str(mem, self.interp, tp_dict, "__module__")
            module = read_str(mem, self.interp, mod_ptr) if mod_ptr else None
        name = qualname if module in (None, "builtins") else f"{module}.{qualname}"
        return TypeInfo(addr, name, module or "builtins", flags, basic, item, preheader)

    def get(self, addr: int) -> TypeInfo | None:
        i = self._by_addr.get(addr)
        return None if i is None else self.infos[i]
