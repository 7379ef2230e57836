"""The event loops the async benchmarks run on: asyncio, uvloop (if installed), trio."""

from __future__ import annotations

from typing import Any

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
