"""The C functions carry their signatures (``__text_signature__``): ``inspect.signature``, ``help()``
and mypy.stubtest (scripts/check_types) see the parameters the C code parses."""
import inspect
import types

import pytest

from cowprof import _alloc, _native


@pytest.mark.parametrize("module", [_native, _alloc], ids=lambda m: m.__name__)
def test_every_function_has_a_signature(module: types.ModuleType) -> None:
    functions = [getattr(module, n) for n in dir(module) if isinstance(getattr(module, n), types.BuiltinFunctionType)]
    assert functions
    for fn in functions:
        assert fn.__text_signature__, fn.__name__
        inspect.signature(fn)  # ValueError when the docstring's signature line does not parse
        assert fn.__doc__ and not fn.__doc__.startswith(f"{fn.__name__}("), fn.__name__


def test_signatures_match_the_c_parsers() -> None:
    fill = inspect.signature(_alloc.fill_pools).parameters
    assert [(p.name, p.kind, p.default) for p in fill.values()] == [
        ("max_bytes", inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty),
        ("empty_pools", inspect.Parameter.KEYWORD_ONLY, True),
        ("discard", inspect.Parameter.KEYWORD_ONLY, True)]
    assert list(inspect.signature(_native.info).parameters) == []
    if hasattr(_native, "walk"):  # CPython 3.12+
        walk = inspect.signature(_native.walk).parameters
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in walk.values())
        assert walk["heapmap_fd"].default == -1 and walk["immortalize"].default is True
        assert inspect.signature(_native.is_immortal).parameters["obj"].kind is inspect.Parameter.POSITIONAL_ONLY
