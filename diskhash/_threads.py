"""Worker-thread calls that a busy event loop cannot starve of the GIL.

Why this exists: CPython forces the GIL holder to let go only when a waiting
thread has waited a whole switch interval (5 ms) *with no switch meanwhile*.
An event loop that serves inline calls (gets that never block) drops and
retakes the GIL at every poll of its selector, which counts as a switch and
usually wins the race for the GIL again.  A worker thread waiting for the GIL,
to start a grow or to return from one, then waits for a lucky moment: in
``examples/bulk_loader.py`` (two readers doing inline gets flat out) each grow
took seconds instead of milliseconds (docs/performance.md has the figures).

The cure is on the loop side, where the starving happens: while any of our
worker-thread calls is in flight, the async classes' inline fast paths call
``handoff()``, which at most once per ``HANDOFF_INTERVAL`` sleeps for zero
seconds.  That drops the GIL inside a system call, long enough that the
waiting worker takes it (the grows above went back to milliseconds), runs
until it blocks again (a syscall, the nogil rehash), and the loop carries
on.  With no thread call in flight the inline paths pay one global read
(``pending``) and never call ``handoff()``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

import anyio.to_thread

__all__ = ["HANDOFF_INTERVAL", "handoff", "run_sync"]

_T = TypeVar("_T")

#: Seconds between two handoffs while a worker-thread call is in flight.
HANDOFF_INTERVAL = 0.001

#: Worker-thread calls in flight, from every event loop of the process.
pending = 0
_pending_lock = threading.Lock()
_next_handoff = 0.0


async def run_sync(fn: Callable[..., _T], *args: Any, limiter: Any = None) -> _T:
    """``anyio.to_thread.run_sync(fn, *args, limiter=limiter)``, counted in
    ``pending`` so the inline paths hand the GIL over while it runs."""
    global pending
    with _pending_lock:
        pending += 1
    try:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
    finally:
        with _pending_lock:
            pending -= 1


def handoff() -> None:
    """Give a waiting worker thread the GIL, at most once per ``HANDOFF_INTERVAL``.

    Called by inline fast paths only when ``pending`` is nonzero.
    """
    global _next_handoff
    now = time.monotonic()
    if now >= _next_handoff:
        _next_handoff = now + HANDOFF_INTERVAL
        time.sleep(0)
