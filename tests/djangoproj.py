"""A stock Django project as a new user makes one: ``django-admin startproject``, ``migrate``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def make_project(root: Path) -> str:
    """Creates the project ``mysite`` (sqlite, default settings) in ``root``; returns its path."""
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=root, check=True, capture_output=True)
    return str(root)
