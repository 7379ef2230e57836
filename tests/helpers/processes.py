"""Child Pythons: the environment they need and a bounded way to run one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


def child_stdout(code: str, cwd: "str | os.PathLike[str]", prelude: str = "", timeout: float = 120) -> str:
    """Run ``prelude`` + ``code`` in a child Python; its stdout (asserting it exited cleanly)."""
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=subprocess_env(), cwd=cwd)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


#: A prelude for ``child_stdout``: ``frame(key, payload)`` builds a valid put frame.
FRAME_PRELUDE = """
import struct
from diskhash._format.frame import checksum
from diskhash._store import read as sr

def frame(key, payload):
    body = struct.pack("<BBHIIQQ", 1, 0, 0xD5A7, len(payload), len(payload),
                       key & (2**64 - 1), key >> 64) + payload
    return struct.pack("<I", checksum(body)) + body
"""


def spawn_python(script: str, *args: object) -> subprocess.Popen:
    """``python -c script args...`` with pipes for stdin, stdout and stderr (text)."""
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """Its stdin closed (a reader's signal to stop), its exit awaited within
    ``timeout`` (killed and reported as hung after it), exit status 0
    checked; its stdout."""
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None
    try:
        out, err = proc.communicate(input="" if proc.stdin is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child hung: {out[-2000:]}\n{err}") from None
    assert proc.returncode == 0, f"child exited {proc.returncode}\n{out[-2000:]}\n{err}"
    return out


def versioned_payload(key: int, version: int, size: int = 200) -> bytes:
    """A payload that names its key and version (the process tests' records)."""
    head = b"%d:%d:" % (key, version)
    return head + bytes([(key + version) & 0xFF]) * (size - len(head))
