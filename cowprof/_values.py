"""Bases of cowprof's small value classes: plain classes, no code generated at import.

``dataclasses`` and ``namedtuple`` write each class's methods as source text and compile it when
the class is created (0.5-2 ms a class, plus ~10 ms to import dataclasses and inspect): on the
start-up path of a one-shot command, dozens of classes add up. These bases give the same
equality, hash and repr from the class's ``_fields``; each class spells out its ``__new__`` or
``__init__``, which is also the fastest to call.
"""
from __future__ import annotations

import copy
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self


def field(index: int, doc: str | None = None) -> Any:
    """A read-only named field of a :class:`Frozen` (its ``index``-th item)."""
    return property(itemgetter(index), doc=doc)


class Frozen(tuple):  # type: ignore[type-arg]
    """An immutable value: a tuple whose items are named by ``_fields`` (read with :func:`field`).
    Equal, hashable and shown like the frozen dataclass it replaces."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={v!r}' for n, v in zip(self._fields, self))})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickling and copying rebuild it through __new__
        return tuple(self)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return type(self)(**{**dict(zip(self._fields, self)), **changes})


class Mutable:
    """A mutable record with ``__slots__``: equal when of the same class with equal ``_fields``
    (the fields shown by repr; other slots are neither compared nor shown), unhashable, like the
    dataclass it replaces. :meth:`replace` is ``dataclasses.replace``."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._fields)})"

    def replace(self, **changes: Any) -> Self:
        """A shallow copy with ``changes`` applied."""
        new = copy.copy(self)
        for name, value in changes.items():
            setattr(new, name, value)
        return new
