"""The command-line examples run, small, and do what their docstrings say.

The HTTP servers (aiohttp_app.py, starlette_app.py, trio_app.py) are tested
over real HTTP in tests/examples/test_servers.py.  Every wait is bounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TIMEOUT = 60


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], check=False, capture_output=True, text=True,
                          timeout=TIMEOUT, env=subprocess_env(), cwd=cwd)


def test_sync_script_builds_queries_and_reopens(tmp_path):
    r = run_example("sync_script.py", "--entries", "5000", "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    for line in ("built 5,000 entries", "ok  reopened with 4,999 entries", "ok  every entry read back exactly",
                 "ok  a read-only index refuses writes", "ok  verify() finds no defect"):
        assert line in r.stdout, r.stdout
    assert list(tmp_path.iterdir()) == []


# A grow under this read load used to take 10-30 s each on a quiet machine
# (the worker thread starved of the GIL: see diskhash/_threads.py); the run's
# 60 s timeout catches that again.
@pytest.mark.parametrize("backend", ["trio", "asyncio", "uvloop"])
def test_bulk_loader_loads_while_serving_lookups(tmp_path, backend):
    if backend == "uvloop":
        pytest.importorskip("uvloop")
    r = run_example("bulk_loader.py", "--entries", "40000", "--readers", "2", "--report-every", "0.1",
                    "--backend", backend, "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 40,000 checked entries read back exactly; 40,000 entries in the index; " \
           "0 wrong lookups during the load" in r.stdout, r.stdout
    summary = next(line for line in r.stdout.splitlines() if line.startswith("loaded 40,000 entries"))
    grows = int(summary.split(" with ")[1].split()[0])
    served = int(summary.split("; ")[1].split()[0].replace(",", ""))
    assert grows == 4 and served > 0, summary        # 4096 -> 65536 slots
    assert "lookups/s" in r.stdout                   # progress lines
    assert list(tmp_path.iterdir()) == []
