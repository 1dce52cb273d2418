"""Shared test setup: puts tests/ on sys.path so helpers like ``forktree`` import from any test dir."""
import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
