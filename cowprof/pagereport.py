"""The page report of a scan (:func:`cowprof.pages.scan`): per worker and for the master, bytes
shared, copied and new by region, and its documented JSON (``to_dict``/``from_dict``, strict on
input). Plain classes (:mod:`cowprof._values`), no numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import untrusted
from ._values import Mutable
from .errors import BadInput
from .regions import REGIONS

if TYPE_CHECKING:
    import numpy as np

VERSION = 1
#: mapcounts above this are folded into the last bucket of ``sharers``
SHARERS_MAX = 64


class RegionPages(Mutable):
    """Bytes of one region kind in one process."""

    __slots__ = ("shared_bytes", "copied_bytes", "new_bytes")
    _fields = __slots__

    def __init__(self, shared_bytes: int = 0, copied_bytes: int = 0, new_bytes: int = 0) -> None:
        self.shared_bytes = shared_bytes
        self.copied_bytes = copied_bytes
        self.new_bytes = new_bytes

    def to_dict(self) -> dict[str, int]:
        return {"shared_bytes": self.shared_bytes, "copied_bytes": self.copied_bytes, "new_bytes": self.new_bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegionPages:
        d = untrusted.obj(d, "a region")
        return cls(*(_bytes(d, k) for k in ("shared_bytes", "copied_bytes", "new_bytes")))


def _regions_to_dict(regions: dict[str, RegionPages]) -> dict[str, dict[str, int]]:
    return {k: regions[k].to_dict() for k in REGIONS if k in regions}


def _regions_from_dict(d: dict[str, Any]) -> dict[str, RegionPages]:
    return {k: RegionPages.from_dict(v) for k, v in untrusted.obj(d, "'regions'").items()}


def _bytes(d: dict[str, Any], key: str, *, optional: bool = True) -> int:
    """A byte count of a report read back: a non-negative integer (0 when optional and absent)."""
    return untrusted.integer(d, key, minimum=0, optional=optional) or 0


def _pid(d: dict[str, Any]) -> int:
    return untrusted.integer(d, "pid", minimum=1) or 0


class MasterPages(Mutable):
    """The master: whole-process counters and its own post-fork divergence.

    In ``regions``, ``shared_bytes`` are pages some worker still maps, ``copied_bytes`` the
    master's ``diverged`` pages and ``new_bytes`` its exclusive pages at addresses where no worker
    has a page (memory it allocated after fork, or that every worker dropped).
    ``diverged_addrs`` (with ``keep_addresses``) is neither compared nor shown.
    """

    _fields = ("pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes", "diverged_bytes",
               "regions", "ambiguous_bytes", "shared_bytes", "new_bytes")
    __slots__ = (*_fields, "diverged_addrs")

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "started_at": self.started_at, "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes, "uss_bytes": self.uss_bytes, "swap_bytes": self.swap_bytes,
            "shared_bytes": self.shared_bytes, "diverged_bytes": self.diverged_bytes,
            "ambiguous_bytes": self.ambiguous_bytes, "new_bytes": self.new_bytes,
            "regions": _regions_to_dict(self.regions),
        }

    @classmethod
    def from_dict(cls, d: Any) -> MasterPages:
        d = untrusted.obj(d, "'master'")
        return cls(
            pid=_pid(d), started_at=untrusted.timestamp(d, "started_at", optional=True) or 0.0,
            rss_bytes=_bytes(d, "rss_bytes", optional=False), pss_bytes=_bytes(d, "pss_bytes", optional=False),
            uss_bytes=_bytes(d, "uss_bytes", optional=False), swap_bytes=_bytes(d, "swap_bytes"),
            diverged_bytes=_bytes(d, "diverged_bytes"), regions=_regions_from_dict(d.get("regions", {})),
            ambiguous_bytes=_bytes(d, "ambiguous_bytes"), shared_bytes=_bytes(d, "shared_bytes"),
            new_bytes=_bytes(d, "new_bytes"),
        )


class WorkerPages(Mutable):
    """One worker: whole-process counters and its pages by class and region.

    ``shared_with_master_bytes`` and ``sharers`` (mapcount -> bytes of shared pages) in the pfn mode
    only; ``copied_addrs`` (with ``keep_addresses``) is neither compared nor shown.
    """

    _fields = ("pid", "started_at", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes", "shared_bytes",
               "copied_bytes", "new_bytes", "regions", "ambiguous_bytes", "shared_with_master_bytes", "sharers")
    __slots__ = (*_fields, "copied_addrs")

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "started_at": self.started_at, "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes, "uss_bytes": self.uss_bytes, "swap_bytes": self.swap_bytes,
            "shared_bytes": self.shared_bytes, "copied_bytes": self.copied_bytes, "new_bytes": self.new_bytes,
            "ambiguous_bytes": self.ambiguous_bytes, "shared_with_master_bytes": self.shared_with_master_bytes,
            "sharers": None if self.sharers is None else {str(k): v for k, v in sorted(self.sharers.items())},
            "regions": _regions_to_dict(self.regions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerPages:
        d = untrusted.obj(d, "a worker")
        sharers = d.get("sharers")
        if sharers is not None:
            if not all(k.isdecimal() and len(k) < 4 for k in untrusted.obj(sharers, "'sharers'")):
                raise ValueError("'sharers' keys are not mapping counts")
            sharers = {int(k): _bytes(sharers, k, optional=False) for k in sharers}
        return cls(
            pid=_pid(d), started_at=untrusted.timestamp(d, "started_at", optional=True) or 0.0,
            rss_bytes=_bytes(d, "rss_bytes", optional=False), pss_bytes=_bytes(d, "pss_bytes", optional=False),
            uss_bytes=_bytes(d, "uss_bytes", optional=False), swap_bytes=_bytes(d, "swap_bytes"),
            shared_bytes=_bytes(d, "shared_bytes", optional=False),
            copied_bytes=_bytes(d, "copied_bytes", optional=False), new_bytes=_bytes(d, "new_bytes", optional=False),
            regions=_regions_from_dict(d.get("regions", {})), ambiguous_bytes=_bytes(d, "ambiguous_bytes"),
            shared_with_master_bytes=untrusted.integer(d, "shared_with_master_bytes", minimum=0, optional=True),
            sharers=sharers,
        )


class PageReport(Mutable):
    """One scan of a tree. ``to_dict()`` is the documented, stable JSON (docs/measure.md)."""

    __slots__ = ("version", "taken_at", "privileged", "mode", "page_size", "scan_seconds", "master",
                 "workers", "gone")
    _fields = __slots__

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "taken_at": self.taken_at, "privileged": self.privileged,
            "mode": self.mode, "page_size": self.page_size, "scan_seconds": self.scan_seconds,
            "master": self.master.to_dict(), "workers": [w.to_dict() for w in self.workers],
            "gone": list(self.gone),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PageReport:
        """Rebuild a report from its JSON form; a wrong version or missing key raises BadInput."""
        try:
            d = untrusted.obj(d, "the report")
            version = untrusted.integer(d, "version")
            if version != VERSION:
                raise BadInput(f"unsupported page report version {version} (this cowprof reads {VERSION})")
            privileged = d.get("privileged")
            if not isinstance(privileged, bool):
                raise ValueError("'privileged' is not true or false")
            workers, gone = d.get("workers"), d.get("gone", [])
            if not isinstance(workers, list):
                raise ValueError("'workers' is not a list")
            if not isinstance(gone, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in gone):
                raise ValueError("'gone' is not a list of PIDs")
            return cls(
                version=VERSION, taken_at=untrusted.timestamp(d, "taken_at") or 0.0, privileged=privileged,
                mode=untrusted.string(d, "mode") or "", page_size=untrusted.integer(d, "page_size", minimum=1) or 1,
                scan_seconds=untrusted.number(d, "scan_seconds", minimum=0.0, optional=True) or 0.0,
                master=MasterPages.from_dict(d.get("master")),
                workers=[WorkerPages.from_dict(w) for w in workers], gone=list(gone),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a cowprof page report: {err}") from None
