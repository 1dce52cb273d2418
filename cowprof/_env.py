"""Switches read from the environment, which win over the arguments of the call they change."""
from __future__ import annotations

import os
import warnings


def flag(name: str, default: bool) -> bool:
    """A ``0``/``1`` switch; unset gives ``default``, anything else warns and gives ``default``."""
    raw = os.environ.get(name, "").strip()
    if raw in ("0", "1"):
        return raw == "1"
    if raw:
        warnings.warn(f"cowprof: {name} must be 0 or 1, got {raw!r}; using the default", RuntimeWarning, stacklevel=3)
    return default
