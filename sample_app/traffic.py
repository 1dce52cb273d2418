"""Request paths for loading the sample app, without importing (building) its heap.

:func:`request_paths` returns the same list for the same arguments, so every demo mode sends exactly
the same requests. :data:`WARMUP_PATHS` covers each endpoint once: it is what the demo's cowprof mode
passes to the warm-up (``COWPROF_WARMUP``).
"""
from __future__ import annotations

import random

# (weight, path template); {seed} and {word} are filled per request
_MIX: tuple[tuple[int, str], ...] = (
    (30, "/records?seed={seed}&n=20"),
    (20, "/search?seed={seed}&q={word}&window=2000"),
    (25, "/aggregate?seed={seed}&window=1000"),
    (20, "/events?seed={seed}&n=200"),
    (3, "/info"),
    (2, "/health"),
)
_SEARCH_WORDS = ("ka", "lo", "mi", "ra", "ten", "vu", "so", "pel", "dar", "ni", "qua", "bre",
                 "zo", "fi", "gan", "tu", "mor", "sel", "ix", "be", "con", "ya", "rul", "we")

WARMUP_PATHS: tuple[str, ...] = (
    "/records?seed=1&n=20",
    "/search?seed=2&q=ka&window=2000",
    "/aggregate?seed=3&window=1000",
    "/events?seed=4&n=200",
    "/info",
    "/health",
)


def request_paths(count: int, seed: int = 7) -> list[str]:
    """``count`` request paths drawn from the endpoint mix, deterministic for a given ``seed``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    weights = [w for w, _ in _MIX]
    templates = [t for _, t in _MIX]
    return [t.format(seed=rng.randrange(2**31), word=rng.choice(_SEARCH_WORDS))
            for t in rng.choices(templates, weights=weights, k=count)]
