"""The sdist holds everything its tests need (docs, examples, tests, LICENSE),
the wheel carries the LICENSE, the metadata names this distribution, and a
second build recompiles nothing."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers.packaging import DIST, ROOT, copy_source

if not (ROOT / "pyproject.toml").exists():
    pytest.skip("not a source checkout: no pyproject.toml beside tests/", allow_module_level=True)

MODULES = ["_format/sochidx2", "_format/frame", "_index/convert", "_index/table", "_index/batch",
           "_store/read", "_store/write"]


def expected_in_sdist() -> set[str]:
    """The files the sdist must hold, relative to the source root."""
    want = {"LICENSE", "README.md", "CHANGELOG.md", "mkdocs.yml", "pyproject.toml", "setup.py", "MANIFEST.in",
            "stubtest-allowlist.txt"}
    for pattern in ("docs/**/*.md", "examples/*.py", "tests/**/*.py", "tests/data/*",
                    "benchmarks/*.py", "diskhash/**/*.py", "diskhash/**/*.pyx", "diskhash/**/*.pxd",
                    "diskhash/**/*.pxi", "diskhash/**/*.pyi", "diskhash/**/*.h", "diskhash/py.typed"):
        want.update(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern) if p.is_file())
    return want


def sdist_members(sdist: Path) -> dict[str, bytes]:
    with tarfile.open(sdist) as tar:
        top = f"{sdist.name[:-len('.tar.gz')]}/"
        return {m.name[len(top):]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def check_sdist(sdist: Path) -> None:
    assert sdist.name.startswith("diskhash_sochidx-"), sdist.name
    members = sdist_members(sdist)
    missing = sorted(expected_in_sdist() - set(members))
    assert missing == [], missing
    generated = [m for m in members if m.endswith((".c", ".so", ".html")) or "__pycache__" in m]
    assert generated == [], generated
    assert members["LICENSE"] == (ROOT / "LICENSE").read_bytes()
    pkg_info = members["PKG-INFO"].decode()
    for line in (f"Name: {DIST}", "License-Expression: MIT", "License-File: LICENSE", "Author: the diskhash authors"):
        assert line in pkg_info.splitlines(), line


def build(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "build", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _no_isolation_possible() -> bool:
    # Checked, not imported, first: a venv of Python 3.12+ has no setuptools
    # unless the test extra brings it (an import here failed the collection).
    if any(importlib.util.find_spec(m) is None for m in ("build", "Cython", "setuptools")):
        return False
    import setuptools

    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.mark.skipif(not _no_isolation_possible(), reason="needs build, Cython and setuptools>=77 here")
def test_sdist_holds_license_docs_examples_and_tests(tmp_path):
    """The sdist alone (no compiling: Cython runs in build_ext, not when setup.py is read)."""
    src = copy_source(tmp_path / "src")
    r = build("--sdist", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_sdist(next((tmp_path / "dist").glob("*.tar.gz")))
    assert not list((src / "diskhash").rglob("*.c")), "building the sdist translated the modules"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs build (the test extra)")
def test_sdist_and_wheel_build_and_the_wheel_carries_the_license(tmp_path):
    """``python -m build``: the sdist, then the wheel built from it (compiles: minutes)."""
    src = copy_source(tmp_path / "src")
    r = build("--outdir", str(tmp_path / "dist"), str(src), cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_sdist(next((tmp_path / "dist").glob("*.tar.gz")))
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert wheel.name.startswith("diskhash_sochidx-"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        license_file = info.replace("METADATA", "licenses/LICENSE")
        assert license_file in names, names
        assert z.read(license_file) == (ROOT / "LICENSE").read_bytes()
        assert f"Name: {DIST}" in z.read(info).decode().splitlines()
    for module in MODULES:
        assert any(re.fullmatch(rf"diskhash/{module}\.cpython-.*\.so", n) for n in names), module
        assert f"diskhash/{module}.pyi" in names
    assert "diskhash/py.typed" in names
    assert not [n for n in names if n.endswith((".c", ".pyx"))]


@pytest.mark.slow
def test_a_second_install_from_the_same_checkout_recompiles_nothing(tmp_path):
    """pip's isolated build installs Cython afresh each time; its bundled .pxd
    files used to make every module look stale, so each extra installed after
    the first rebuilt everything (the issue measured 1-2 minutes each)."""
    src = copy_source(tmp_path / "src")

    def wheel() -> str:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "w"),
                            str(src)], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr

    first = wheel()
    assert all(f"Cythonizing diskhash/{m}.pyx" in first for m in MODULES), first[-3000:]
    second = wheel()
    compiled = [line for line in second.splitlines() if "Cythonizing" in line or " -c diskhash/" in line]
    assert compiled == [], compiled
    (src / "diskhash" / "_index" / "batch.pyx").touch()
    third = wheel()
    compiled = [line.strip().split()[-1] for line in third.splitlines() if "Cythonizing" in line]
    assert compiled == ["diskhash/_index/batch.pyx"], compiled
