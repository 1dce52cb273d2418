"""tests/unit starts no processes: a test or fixture here that forks, spawns or runs a command fails
at that call (setup, call and teardown of every test here, module fixtures included). Tests that
need a process of their own belong in tests/integration."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import _posixsubprocess
import pytest

_PROCESS_STARTERS: list[tuple[Any, str]] = [
    (subprocess.Popen, "_execute_child"),  # subprocess.run/Popen/check_output, os.popen
    (_posixsubprocess, "fork_exec"),  # multiprocessing's spawn and forkserver
    (os, "fork"), (os, "forkpty"), (os, "posix_spawn"), (os, "posix_spawnp"), (os, "system"),
]


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"tests/unit starts no processes ({name} called): move the test to tests/integration")

    return refuse


def _without_processes() -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    for owner, name in _PROCESS_STARTERS:
        mp.setattr(owner, name, _refuse(name))
    try:
        return (yield)
    finally:
        mp.undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _without_processes())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _without_processes())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    return (yield from _without_processes())
