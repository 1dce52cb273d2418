"""Build the native extension ``cowprof._native``; all metadata lives in pyproject.toml."""
from setuptools import Extension, setup

_CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension("cowprof._native", sources=["native/_native.c", "native/interp_state.c"], extra_compile_args=_CFLAGS),
        Extension("cowprof._alloc", sources=["native/_alloc.c"], extra_compile_args=_CFLAGS),
    ]
)
