"""The distribution's name and a clean copy of the source tree, for the
tests that build or install the package (tests/project/test_docs.py, test_packaging.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The distribution (PyPI's "diskhash" is an unrelated project); the import name is diskhash.
DIST = "diskhash-sochidx"

_LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "*.so",
                                   "*.c", "*.html", ".hypothesis", ".mypy_cache", ".pytest_cache", ".ruff_cache")


def copy_source(dst: Path) -> Path:
    """The source tree at ``dst`` without build products, caches or environments."""
    shutil.copytree(ROOT, dst, ignore=_LEFT_OUT)
    return dst
