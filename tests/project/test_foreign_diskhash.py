"""PyPI's unrelated ``diskhash`` installs into the same ``diskhash/`` folder.

A first-contact attack found pip installs both without a word, and that
``pip uninstall diskhash`` then deletes this package's ``__init__.py``:
``import diskhash`` warns while the other project's files are there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers.processes import subprocess_env

import diskhash
from diskhash._checkout import foreign_files


def test_foreign_files_are_recognised(tmp_path):
    assert foreign_files(str(tmp_path)) == []
    (tmp_path / "diskhash_version.py").write_text("")
    (tmp_path / "_diskhash.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert foreign_files(str(tmp_path)) == ["diskhash_version.py", "_diskhash.cpython-311-x86_64-linux-gnu.so"]


def test_import_warns_with_the_repair(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(Path(diskhash.__file__).parent, site / "diskhash",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    env = subprocess_env()
    env["PYTHONPATH"] = str(site)
    code = "import warnings; warnings.simplefilter('error'); import diskhash"
    clean = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr
    (site / "diskhash" / "diskhash_version.py").write_text("__version__ = '0.4.2'\n")
    mixed = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert mixed.returncode != 0
    assert "RuntimeWarning" in mixed.stderr and "diskhash_version.py" in mixed.stderr
    assert "pip uninstall diskhash diskhash-sochidx" in mixed.stderr
