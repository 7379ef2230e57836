"""The documentation site builds with ``mkdocs build --strict``: every page is
in the nav, and every link and anchor between pages resolves (mkdocs.yml
turns each of those checks into a warning, and --strict fails on any)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.packaging import ROOT

pytest.importorskip("mkdocs")


def mkdocs_build(config, site):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, capture_output=True, text=True, timeout=300)


def test_mkdocs_build_strict(tmp_path):
    config = ROOT / "mkdocs.yml"
    if not config.exists():
        pytest.skip("not a source checkout: no mkdocs.yml")
    r = mkdocs_build(config, tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    for page in ("guide/quickstart", "reference/api", "internals/format", "performance"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    # the check can fail: the same docs with one link to a missing anchor
    if not (ROOT / "mkdocs.yml").exists():
        pytest.skip("not a source checkout: no mkdocs.yml")
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "guide" / "quickstart.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[x](store.md#no-such-section)\n", encoding="utf-8")
    r = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0 and "no-such-section" in r.stdout + r.stderr, r.stdout + r.stderr
