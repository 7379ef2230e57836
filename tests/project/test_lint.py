"""The code stays lint-clean: ruff over the Python files and cython-lint over
the Cython files, with the settings in pyproject.toml ([tool.ruff],
[tool.cython-lint]).  Both tools come with the ``test`` extra; a checkout
without them skips these tests rather than failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON_PATHS = ["diskhash", "tests", "examples", "benchmarks", "setup.py"]


def _tool(name: str) -> str:
    """The tool's executable: beside this Python first (a venv not on PATH), else PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout: no pyproject.toml beside tests/")
    # cython-lint runs pycodestyle by name: this Python's scripts first on PATH
    # (the venv is not activated when CI calls its pytest directly).
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_ruff_finds_nothing() -> None:
    r = _run([_tool("ruff"), "check", "--no-cache", *PYTHON_PATHS])
    assert r.returncode == 0, f"ruff findings:\n{r.stdout}{r.stderr}"


def test_cython_lint_finds_nothing() -> None:
    """cython-lint's own checks, then pycodestyle once over every Cython file
    with the options cython-lint gives it: cython-lint starts pycodestyle
    once per file, a Python start-up each, most of its time."""
    exe = _tool("cython-lint")
    r = _run([exe, "--no-pycodestyle", "diskhash"])
    assert r.returncode == 0, f"cython-lint findings:\n{r.stdout}{r.stderr}"
    from cython_lint import cython_lint

    config = cython_lint._get_config([ROOT / "diskhash"])
    ignore = config.get("ignore", [])
    ignore = {code.strip() for s in ([ignore] if isinstance(ignore, str) else ignore) for code in s.split(",")}
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "diskhash").rglob("*")
                   if p.suffix in (".pyx", ".pxd", ".pxi"))
    assert files
    r = _run([_tool("pycodestyle"), f"--ignore={','.join(sorted(cython_lint.PYCODESTYLE_CODES | ignore - {''}))}",
              f"--max-line-length={config.get('max-line-length', 88)}", *files])
    assert r.returncode == 0, f"pycodestyle findings (cython-lint's):\n{r.stdout}{r.stderr}"
