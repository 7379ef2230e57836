"""Run background work (a grow's rehash and writeback) at a lower scheduling
priority than the event loop's thread, on Linux.

On a machine with few cores, the loop thread stalls during a grow not
because it waits for a lock but because it waits for a CPU that the grow's
worker thread holds (the schedstat split in benchmarks/loop_stall.py).  A
worker thread that lowers its own priority while it grows leaves the CPU to
the loop whenever the loop is runnable.

``lowered(policy)`` applies to the calling thread only (Linux schedules
threads, and both ``setpriority(PRIO_PROCESS, tid)`` and
``sched_setscheduler(tid)`` take a thread id) and puts it back on exit.
Raising a priority again needs CAP_SYS_NICE (or an RLIMIT_NICE allowance);
when that is refused, the thread keeps the lower priority until it ends,
which for a pool's worker thread means its later background calls run low
too: harmless, never wrong.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["POLICIES", "lowered"]

#: How the calling thread is lowered: ``none``; ``nice`` (nice value + NICE_STEP,
#: a per-thread nice on Linux); ``batch`` (SCHED_BATCH: no wake-up preemption);
#: ``idle`` (SCHED_IDLE: runs only when nothing else wants the CPU).
POLICIES = ("none", "nice", "batch", "idle")
NICE_STEP = 19


@contextlib.contextmanager
def lowered(policy: str) -> Iterator[None]:
    """Lower the calling thread's scheduling priority for the ``with`` body.

    ``policy``: one of ``POLICIES``.  Raises ``ValueError`` for another
    value and ``OSError`` if the system refuses to lower it (not Linux)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "none":
        yield
        return
    tid = threading.get_native_id()
    if policy == "nice":
        old_nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, old_nice + NICE_STEP))
        try:
            yield
        finally:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, tid, old_nice)
        return
    old_policy, old_param = os.sched_getscheduler(tid), os.sched_getparam(tid)
    new_policy = os.SCHED_BATCH if policy == "batch" else os.SCHED_IDLE
    os.sched_setscheduler(tid, new_policy, os.sched_param(0))
    try:
        yield
    finally:
        with contextlib.suppress(PermissionError):
            os.sched_setscheduler(tid, old_policy, old_param)
