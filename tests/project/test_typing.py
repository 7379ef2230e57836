"""The type stubs of the compiled modules match what they export (mypy.stubtest)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_stubs_match_compiled_modules():
    modules = ["diskhash._index", "diskhash._format", "diskhash._convert"]
    for optional in ("diskhash._batch", "diskhash._store_read", "diskhash._store_write"):
        if importlib.util.find_spec(optional) is not None:
            modules.append(optional)
    env = subprocess_env()
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(ROOT / "stubtest-allowlist.txt"), *modules],
        check=False, capture_output=True, text=True, cwd=ROOT / "tests", timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_ships_py_typed_and_stubs():
    import diskhash

    pkg = Path(diskhash.__file__).parent
    for name in ("py.typed", "_index.pyi", "_format.pyi", "_convert.pyi", "_batch.pyi", "_store_read.pyi",
                 "_store_write.pyi"):
        assert (pkg / name).is_file(), name


def _mypy(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on the diskhash this suite imports (installed, or an
    editable checkout, which mypy cannot find through the import hook)."""
    import diskhash

    env = subprocess_env()
    parent = Path(diskhash.__file__).resolve().parent.parent
    if parent.name not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = str(parent)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache_dir), *args],
        check=False, capture_output=True, text=True, cwd=ROOT / "tests", timeout=600, env=env,
    )


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_strict_is_clean_on_the_package(mypy_cache):
    result = _mypy(["-p", "diskhash"], mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_stubs_accept_what_the_runtime_accepts(mypy_cache):
    # The same file passes mypy --strict (uuid.UUID keys, int compression
    # values, numpy scalars, NDArray results checked with assert_type) and runs.
    usage = ROOT / "tests" / "project" / "stub_usage.py"
    result = _mypy([str(usage)], mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run([sys.executable, str(usage)], check=False, capture_output=True, text=True,
                         timeout=120, env=subprocess_env(), cwd=ROOT / "tests")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_batch_stubs_name_numpy_array_types_not_any():
    stub = (ROOT / "diskhash" / "_index.pyi").read_text()
    for call in ("get_many", "contains_many", "insert_many"):
        line = next(x for x in stub.splitlines() if f"def {call}(" in x)
        assert "Any" not in line, line
