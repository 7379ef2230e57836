"""The type stubs of the compiled modules match what they export (mypy.stubtest)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_stubs_match_compiled_modules():
    modules = ["diskhash._index", "diskhash._format", "diskhash._convert"]
    for optional in ("diskhash._batch", "diskhash._store_read"):
        if importlib.util.find_spec(optional) is not None:
            modules.append(optional)
    env = subprocess_env()
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(ROOT / "stubtest-allowlist.txt"), *modules],
        capture_output=True, text=True, cwd=ROOT / "tests", timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_ships_py_typed_and_stubs():
    import diskhash

    pkg = Path(diskhash.__file__).parent
    for name in ("py.typed", "_index.pyi", "_format.pyi", "_convert.pyi", "_batch.pyi", "_store_read.pyi"):
        assert (pkg / name).is_file(), name
