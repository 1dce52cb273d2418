"""cowprof.allocator: the COWPROF_FILL_FREE_BLOCKS setting (the fill itself, which leaks memory on
purpose, runs in fresh interpreters: tests/integration/test_allocator.py)."""
from __future__ import annotations

import pytest

from cowprof import allocator


@pytest.mark.parametrize("raw, expected", [("", allocator.DEFAULT_MAX_BYTES), ("1", allocator.DEFAULT_MAX_BYTES),
                                           ("0", 0), ("8M", 8 << 20), ("512k", 512 << 10), ("1000", 1000)])
def test_env_sizes(monkeypatch, raw, expected):
    monkeypatch.setenv(allocator.ENV_FILL, raw)
    assert allocator.max_bytes_from_env() == expected


@pytest.mark.parametrize("raw", ["lots", "-1", "1.5X"])
def test_env_rejects_garbage(monkeypatch, raw):
    monkeypatch.setenv(allocator.ENV_FILL, raw)
    with pytest.raises(ValueError, match=allocator.ENV_FILL):
        allocator.max_bytes_from_env()
