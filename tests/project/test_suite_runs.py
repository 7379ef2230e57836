"""The suite runs as the README and docs/development.md say: ``pytest`` in the
repository root, with test paths or a layer folder relative to it, under
xdist, despite the suite's own working-directory move (tests/conftest.py).

Both tests are regressions from a hostile pass (attack pass 4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(args: "list[str]", cwd: Path, tmp_path: Path) -> "subprocess.CompletedProcess[str]":
    # The pytest script, as the README runs it: ``python -m pytest`` in the
    # root would put the source folder diskhash/ first on sys.path.  Without
    # hypothesis's plugin (the tests run here use none; it costs every pytest
    # process, each xdist worker too, a second and a half to import).
    return subprocess.run(
        [str(Path(sys.executable).parent / "pytest"), "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "--basetemp", str(tmp_path / "bt"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_relative_test_path_from_the_root_runs_its_tests_under_xdist(tmp_path):
    # pyproject's addopts has -n auto: the controller used to chdir into
    # tests/ before starting its workers, which then looked for
    # tests/tests/test_format.py and ran nothing ("no tests ran", exit 5).
    # A layer folder, as docs/development.md runs one; one worker is enough
    # (the controller's chdir is what went wrong), each one more costs a
    # whole pytest start-up and collection.
    r = _pytest(["-n", "1", "tests/format", "-k", "layout"], ROOT, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r"\b[1-9][0-9]* passed", r.stdout), r.stdout[-2000:]


def test_relative_junitxml_lands_where_pytest_was_started(tmp_path):
    # conftest's chdir ran before junitxml made --junitxml absolute: the
    # report was written into tests/ instead of the invocation directory.
    name = f"attack4-{os.getpid()}.xml"
    try:
        r = _pytest(["-n", "0", f"--junitxml={name}", "tests/format/test_layout.py"], ROOT, tmp_path)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert (ROOT / name).exists()
        assert not (ROOT / "tests" / name).exists()
    finally:
        for p in (ROOT / name, ROOT / "tests" / name):
            if p.exists():
                p.unlink()
