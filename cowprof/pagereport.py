"""The page report of a scan (:func:`cowprof.pages.scan`): per worker and for the master, bytes
shared, copied and new by region, and its documented JSON (``to_dict``/``from_dict``, strict on
input). Plain classes (:mod:`cowprof._values`), no numpy.

Each class lists its JSON fields once, in ``_json``: (name, kind) pairs in the documented key order,
the attribute and the key having the same name. A kind is a (read, write) pair: ``read(d, key)``
checks and returns the attribute's value from a JSON object (``ValueError`` naming the key), and
``write(value)`` gives the JSON value (None: the value as it is). :class:`_Json` holds the one
``to_dict``/``from_dict`` that walk that list (``from_dict`` in ``_checks`` order where a class
gives one: the order the hand-written readers checked keys in, so that an input with several
faults is refused with the same message as before).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import untrusted
from ._values import Mutable
from .errors import BadInput
from .regions import REGIONS

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    import numpy as np

    _Read = Callable[[dict[str, Any], str], Any]
    _Write = Callable[[Any], Any]
    _Kind = tuple[_Read, _Write | None]

VERSION = 1
#: mapcounts above this are folded into the last bucket of ``sharers``
SHARERS_MAX = 64


# --- the kinds of field ---------------------------------------------------------------------------

def _bytes(d: dict[str, Any], key: str, *, optional: bool = True) -> int:
    """A byte count of a report read back: a non-negative integer (0 when optional and absent)."""
    return untrusted.integer(d, key, minimum=0, optional=optional) or 0


def _required_bytes(d: dict[str, Any], key: str) -> int:
    return untrusted.integer(d, key, minimum=0) or 0


def _maybe_bytes(d: dict[str, Any], key: str) -> int | None:
    return untrusted.integer(d, key, minimum=0, optional=True)


def _pid(d: dict[str, Any], key: str) -> int:
    return untrusted.integer(d, key, minimum=1) or 0


def _started_at(d: dict[str, Any], key: str) -> float:
    return untrusted.timestamp(d, key, optional=True) or 0.0


def _regions_read(d: dict[str, Any], key: str) -> dict[str, RegionPages]:
    return {k: RegionPages.from_dict(v) for k, v in untrusted.obj(d.get(key, {}), f"'{key}'").items()}


def _regions_write(regions: dict[str, RegionPages]) -> dict[str, dict[str, int]]:
    return {k: regions[k].to_dict() for k in REGIONS if k in regions}


def _sharers_read(d: dict[str, Any], key: str) -> dict[int, int] | None:
    sharers = d.get(key)
    if sharers is None:
        return None
    if not all(k.isdecimal() and len(k) < 4 for k in untrusted.obj(sharers, f"'{key}'")):
        raise ValueError(f"'{key}' keys are not mapping counts")
    return {int(k): _bytes(sharers, k, optional=False) for k in sharers}


def _sharers_write(sharers: dict[int, int] | None) -> dict[str, int] | None:
    return None if sharers is None else {str(k): v for k, v in sorted(sharers.items())}


_BYTES: _Kind = (_required_bytes, None)
"""A byte count that must be there."""
_OPTIONAL_BYTES: _Kind = (_bytes, None)
"""A byte count, 0 when absent or null."""
_MAYBE_BYTES: _Kind = (_maybe_bytes, None)
"""A byte count or None (null: not measured in this mode)."""
_PID: _Kind = (_pid, None)
_STARTED_AT: _Kind = (_started_at, None)
"""A unix time, 0.0 when absent."""
_REGION_MAP: _Kind = (_regions_read, _regions_write)
"""Region name -> :class:`RegionPages`; written in :data:`REGIONS` order, unknown names left out."""
_SHARERS: _Kind = (_sharers_read, _sharers_write)
"""Mapcount -> bytes, or None; written with string keys in mapcount order."""


class _Json(Mutable):
    """A report class whose JSON is its ``_json`` fields (see the module doc)."""

    __slots__ = ()
    _json: tuple[tuple[str, _Kind], ...] = ()
    _what = "a value"  # what refusals call the object: "<_what> is not a JSON object"
    #: the order ``from_dict`` checks the keys in, when not ``_json``'s (an input with several
    #: faults names the first): a name reads that field; a (name, read) pair is an early check
    #: of that key, whose value a later read of the same name replaces
    _checks: tuple[str | tuple[str, _Read], ...] = ()
    _reads: tuple[tuple[str, _Read], ...] = ()  # from _checks or _json, per class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reads = {name: read for name, (read, _write) in cls._json}
        cls._reads = tuple(c if isinstance(c, tuple) else (c, reads[c]) for c in cls._checks or tuple(reads))

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (docs/measure.md), keys in the documented order."""
        return {name: getattr(self, name) if write is None else write(getattr(self, name))
                for name, (_read, write) in self._json}

    @classmethod
    def from_dict(cls, d: Any) -> Self:
        """Rebuild one from its JSON form; ``ValueError`` naming the first bad key."""
        d = untrusted.obj(d, cls._what)
        return cls(**{name: read(d, name) for name, read in cls._reads})


class RegionPages(_Json):
    """Bytes of one region kind in one process."""

    __slots__ = ("shared_bytes", "copied_bytes", "new_bytes")
    _fields = __slots__
    _json = (("shared_bytes", _OPTIONAL_BYTES), ("copied_bytes", _OPTIONAL_BYTES), ("new_bytes", _OPTIONAL_BYTES))
    _what = "a region"

    def __init__(self, shared_bytes: int = 0, copied_bytes: int = 0, new_bytes: int = 0) -> None:
        self.shared_bytes = shared_bytes
        self.copied_bytes = copied_bytes
        self.new_bytes = new_bytes


class MasterPages(_Json):
    """The master: whole-process counters and its own post-fork divergence.

    In ``regions``, ``shared_bytes`` are pages some worker still maps, ``copied_bytes`` the
    master's ``diverged`` pages and ``new_bytes`` its exclusive pages at addresses where no worker
    has a page (memory it allocated after fork, or that every worker dropped).
    ``diverged_addrs`` (with ``keep_addresses``) is neither compared nor shown.
    """

    _fields = ("pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes", "diverged_bytes",
               "regions", "ambiguous_bytes", "shared_bytes", "new_bytes")
    __slots__ = (*_fields, "diverged_addrs")
    _json = (("pid", _PID), ("started_at", _STARTED_AT), ("rss_bytes", _BYTES), ("pss_bytes", _BYTES),
             ("uss_bytes", _BYTES), ("swap_bytes", _OPTIONAL_BYTES), ("shared_bytes", _OPTIONAL_BYTES),
             ("diverged_bytes", _OPTIONAL_BYTES), ("ambiguous_bytes", _OPTIONAL_BYTES), ("new_bytes", _OPTIONAL_BYTES),
             ("regions", _REGION_MAP))
    _checks = _fields
    _what = "'master'"

    def __init__(self, pid: int, started_at: float, rss_bytes: int, pss_bytes: int, uss_bytes: int,
                 swap_bytes: int, diverged_bytes: int, regions: dict[str, RegionPages], ambiguous_bytes: int = 0,
                 shared_bytes: int = 0, new_bytes: int = 0, diverged_addrs: np.ndarray | None = None) -> None:
        self.pid = pid
        self.started_at = started_at
        self.rss_bytes = rss_bytes
        self.pss_bytes = pss_bytes
        self.uss_bytes = uss_bytes
        self.swap_bytes = swap_bytes
        self.diverged_bytes = diverged_bytes
        self.regions = regions
        self.ambiguous_bytes = ambiguous_bytes
        self.shared_bytes = shared_bytes
        self.new_bytes = new_bytes
        self.diverged_addrs = diverged_addrs


class WorkerPages(_Json):
    """One worker: whole-process counters and its pages by class and region.

    ``shared_with_master_bytes`` and ``sharers`` (mapcount -> bytes of shared pages) in the pfn mode
    only; ``copied_addrs`` (with ``keep_addresses``) is neither compared nor shown.
    """

    _fields = ("pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes", "shared_bytes",
               "copied_bytes", "new_bytes", "regions", "ambiguous_bytes", "shared_with_master_bytes", "sharers")
    __slots__ = (*_fields, "copied_addrs")
    _json = (("pid", _PID), ("started_at", _STARTED_AT), ("rss_bytes", _BYTES), ("pss_bytes", _BYTES),
             ("uss_bytes", _BYTES), ("swap_bytes", _OPTIONAL_BYTES), ("shared_bytes", _BYTES), ("copied_bytes", _BYTES),
             ("new_bytes", _BYTES), ("ambiguous_bytes", _OPTIONAL_BYTES), ("shared_with_master_bytes", _MAYBE_BYTES),
             ("sharers", _SHARERS), ("regions", _REGION_MAP))
    _checks = ("sharers", *_fields[:-1])
    _what = "a worker"

    def __init__(self, pid: int, started_at: float, rss_bytes: int, pss_bytes: int, uss_bytes: int,
                 swap_bytes: int, shared_bytes: int, copied_bytes: int, new_bytes: int,
                 regions: dict[str, RegionPages], ambiguous_bytes: int = 0,
                 shared_with_master_bytes: int | None = None, sharers: dict[int, int] | None = None,
                 copied_addrs: np.ndarray | None = None) -> None:
        self.pid = pid
        self.started_at = started_at
        self.rss_bytes = rss_bytes
        self.pss_bytes = pss_bytes
        self.uss_bytes = uss_bytes
        self.swap_bytes = swap_bytes
        self.shared_bytes = shared_bytes
        self.copied_bytes = copied_bytes
        self.new_bytes = new_bytes
        self.regions = regions
        self.ambiguous_bytes = ambiguous_bytes
        self.shared_with_master_bytes = shared_with_master_bytes
        self.sharers = sharers
        self.copied_addrs = copied_addrs


def _version(d: dict[str, Any], key: str) -> int:
    version = untrusted.integer(d, key)
    if version != VERSION:
        raise BadInput(f"unsupported page report version {version} (this cowprof reads {VERSION})")
    return version


def _taken_at(d: dict[str, Any], key: str) -> float:
    return untrusted.timestamp(d, key) or 0.0


def _mode(d: dict[str, Any], key: str) -> str:
    return untrusted.string(d, key) or ""


def _page_size(d: dict[str, Any], key: str) -> int:
    return untrusted.integer(d, key, minimum=1) or 1


def _seconds(d: dict[str, Any], key: str) -> float:
    return untrusted.number(d, key, minimum=0.0, optional=True) or 0.0


def _master_read(d: dict[str, Any], key: str) -> MasterPages:
    return MasterPages.from_dict(d.get(key))


def _flag(d: dict[str, Any], key: str) -> bool:
    value = d.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' is not true or false")
    return value


def _workers_list(d: dict[str, Any], key: str) -> list[Any]:
    workers = d.get(key)
    if not isinstance(workers, list):
        raise ValueError(f"'{key}' is not a list")
    return workers


def _workers_read(d: dict[str, Any], key: str) -> list[WorkerPages]:
    return [WorkerPages.from_dict(w) for w in _workers_list(d, key)]


def _workers_write(workers: list[WorkerPages]) -> list[dict[str, Any]]:
    return [w.to_dict() for w in workers]


def _pids_read(d: dict[str, Any], key: str) -> list[int]:
    gone = d.get(key, [])
    if not isinstance(gone, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in gone):
        raise ValueError(f"'{key}' is not a list of PIDs")
    return list(gone)


class PageReport(_Json):
    """One scan of a tree. ``to_dict()`` is the documented, stable JSON (docs/measure.md)."""

    __slots__ = ("version", "taken_at", "privileged", "mode", "page_size", "scan_seconds", "master",
                 "workers", "gone")
    _fields = __slots__
    _json = (("version", (_version, None)), ("taken_at", (_taken_at, None)), ("privileged", (_flag, None)),
             ("mode", (_mode, None)), ("page_size", (_page_size, None)), ("scan_seconds", (_seconds, None)),
             ("master", (_master_read, MasterPages.to_dict)), ("workers", (_workers_read, _workers_write)),
             ("gone", (_pids_read, list)))
    _checks = ("version", "privileged", ("workers", _workers_list), "gone", "taken_at", "mode", "page_size",
               "scan_seconds", "master", "workers")
    _what = "the report"

    def __init__(self, version: int, taken_at: float, privileged: bool, mode: str, page_size: int,
                 scan_seconds: float, master: MasterPages, workers: list[WorkerPages], gone: list[int]) -> None:
        self.version = version
        self.taken_at = taken_at
        self.privileged = privileged
        self.mode = mode  # "pfn" | "exclusive-bit"
        self.page_size = page_size
        self.scan_seconds = scan_seconds
        self.master = master
        self.workers = workers
        self.gone = gone

    @classmethod
    def from_dict(cls, d: Any) -> Self:
        """Rebuild a report from its JSON form; a wrong version or missing key raises BadInput."""
        try:
            return super().from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a cowprof page report: {err}") from None
