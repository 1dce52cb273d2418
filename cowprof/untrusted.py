"""Reading JSON that anyone may have written (record files, heap map metadata), strictly.

``loads`` accepts UTF-8 JSON only: no ``NaN``/``Infinity``, and a document nested too deeply for
the parser (``'[' * 5000``) is a ``ValueError`` like any other malformed input, never a
``RecursionError``. The field readers check one key of a parsed object: its presence and its JSON
type (an integer is never a ``bool``, a number is finite), and raise ``ValueError`` naming the key.
Callers turn the ``ValueError`` into their own one-line error.
"""
from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_TIME", "loads", "integer", "number", "string", "string_list", "timestamp", "obj"]

MAX_TIME = 1e11
"""Unix times beyond this (year 5138) are corrupt: date formatting would overflow on them."""
_MISSING = object()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document strictly (see the module doc); ``ValueError`` when it is not one."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


def _get(d: dict[str, Any], key: str, optional: bool) -> Any:
    value = d.get(key, _MISSING)
    if value is _MISSING:
        if optional:
            return None
        raise ValueError(f"missing '{key}'")
    return value


def obj(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def integer(d: dict[str, Any], key: str, *, minimum: int | None = None,
            maximum: int | None = None, optional: bool = False) -> int | None:
    """``d[key]`` as an integer (not a bool) within the bounds; None when optional and absent or null."""
    value = _get(d, key, optional)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{key}' is not an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"'{key}' is out of range ({value})")
    return value


def number(d: dict[str, Any], key: str, *, minimum: float | None = None,
           maximum: float | None = None, optional: bool = False) -> float | None:
    """``d[key]`` as a finite float within the bounds; None when optional and absent or null."""
    value = _get(d, key, optional)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is not a number")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"'{key}' is out of range") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum) or \
            (maximum is not None and value > maximum):
        raise ValueError(f"'{key}' is out of range ({value})")
    return value


def timestamp(d: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    """``d[key]`` as a unix time (seconds, 0 to :data:`MAX_TIME`)."""
    return number(d, key, minimum=0.0, maximum=MAX_TIME, optional=optional)


def string(d: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    """``d[key]`` as a str; None when optional and absent or null."""
    value = _get(d, key, optional)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not a string")
    return value


def string_list(d: dict[str, Any], key: str, *, optional: bool = False) -> list[str] | None:
    """``d[key]`` as a list of str; None when optional and absent or null."""
    value = _get(d, key, optional)
    if value is None and optional:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' is not a list of strings")
    return value
