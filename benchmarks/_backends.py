"""The event loops the async benchmarks run on: asyncio, uvloop (if installed), trio."""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable

NAMES = ["asyncio", "uvloop", "trio"]


def backend_for(name: str) -> "tuple[str, dict[str, Any]] | None":
    """anyio's (backend, backend_options) for ``name``; None (and a line saying so)
    if that loop is not installed."""
    if name != "uvloop":
        return name, {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop   not installed, skipped")
        return None
    return "asyncio", {"use_uvloop": True}


def machine_info(packages: "list[str]") -> "dict[str, Any]":
    """What a result was measured on: CPU, cores, OS, Python, the versions of
    ``packages`` that are installed (distribution names), and the commit."""
    import os
    import platform
    import subprocess
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here).stdout.strip() or "?"
        if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                          text=True, cwd=here).stdout.strip():
            commit += " (with uncommitted changes)"
    except OSError:
        commit = "?"
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "load": round(os.getloadavg()[0], 1), "versions": versions, "commit": commit}


def chunked(fn: Callable[[list[Any]], Any], parts: list[list[Any]], repeat: int) -> float:
    """Seconds for ``fn`` over every part: the fastest of ``repeat`` runs of
    each part, summed.  On a loaded machine a run preempted by another job
    is slower by the time it was off the core; small parts timed apart keep
    that out of the figure, where the best of whole passes cannot."""
    total = 0.0
    for part in parts:
        fn(part)
        times = []
        for _ in range(repeat):
            gc.disable()
            t = time.perf_counter()
            fn(part)
            times.append(time.perf_counter() - t)
            gc.enable()
        total += min(times)
    return total


def du(path: str) -> int:
    """Bytes allocated on disk under ``path`` (blocks, not apparent size)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total
