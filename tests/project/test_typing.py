"""The type stubs of the compiled modules match what they export (mypy.stubtest)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_stubs_match_compiled_modules():
    modules = ["diskhash._index.table", "diskhash._format.sochidx2", "diskhash._format.frame",
               "diskhash._index.convert"]
    for optional in ("diskhash._index.batch", "diskhash._store.read", "diskhash._store.write"):
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
    for name in ("py.typed", "_format/sochidx2.pyi", "_format/frame.pyi", "_index/table.pyi", "_index/convert.pyi",
                 "_index/batch.pyi", "_store/read.pyi", "_store/write.pyi"):
        assert (pkg / name).is_file(), name


def _mypy(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on the diskhash this suite imports (installed, or an
    editable checkout, which mypy cannot find through the import hook)."""
    import diskhash

    env = subprocess_env()
    parent = Path(diskhash.__file__).resolve().parent.parent
    paths = [str(USAGE.parent)]                 # stub_usage, checked as a module
    if parent.name not in ("site-packages", "dist-packages"):
        paths.append(str(parent))
    env["MYPYPATH"] = os.pathsep.join(paths)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache_dir), *args],
        check=False, capture_output=True, text=True, cwd=ROOT / "tests", timeout=600, env=env,
    )


def _modules_but_dask() -> list[str]:
    """``-m`` arguments for every module of the package but ``diskhash.dask``
    (whose imports, dask and pandas, cost mypy as much as the rest together)."""
    import pkgutil

    import diskhash

    names = ["diskhash"] + [f"diskhash.{m.name}" for m in pkgutil.iter_modules(diskhash.__path__)
                            if not m.ispkg and m.name != "dask"
                            and Path(diskhash.__path__[0], m.name + ".py").is_file()]
    return [arg for name in names for arg in ("-m", name)]


USAGE = ROOT / "tests" / "project" / "stub_usage.py"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_strict_is_clean_on_the_package(tmp_path):
    """Every module but ``diskhash.dask``, and the stub usage file as typed
    code that uses the public API (one mypy run); the slow run checks the whole
    package."""
    result = _mypy([*_modules_but_dask(), "-m", USAGE.stem], tmp_path / "mypy-cache")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_strict_is_clean_on_the_whole_package_dask_module_included(tmp_path):
    result = _mypy(["-p", "diskhash"], tmp_path / "mypy-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_accept_what_the_runtime_accepts():
    # The file mypy --strict accepts (test_mypy_strict_is_clean_on_the_package:
    # uuid.UUID keys, int compression values, numpy scalars, NDArray results
    # checked with assert_type) also runs.
    run = subprocess.run([sys.executable, str(USAGE)], check=False, capture_output=True, text=True,
                         timeout=120, env=subprocess_env(), cwd=ROOT / "tests")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_batch_stubs_name_numpy_array_types_not_any():
    stub = (ROOT / "diskhash" / "_index" / "table.pyi").read_text()
    for call in ("get_many", "contains_many", "insert_many"):
        line = next(x for x in stub.splitlines() if f"def {call}(" in x)
        assert "Any" not in line, line
