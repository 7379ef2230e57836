"""Child Pythons: the environment they need and a bounded way to run one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: import the same diskhash this suite imports.

    (Run with the repository as the working directory, ``python -m`` would
    otherwise pick up the uncompiled source tree.)
    """
    import diskhash

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(diskhash.__file__).resolve().parent.parent)
    return env


def run_child(script: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter importing the diskhash under test."""
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env())
