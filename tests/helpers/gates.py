"""Test helpers for the async suites: hold a grow in its thread at a known point."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread

from diskhash._fs import files as _files


async def wait_event(event: threading.Event, what: str, timeout: float = 10) -> None:
    """Wait, without blocking the event loop, until another thread sets ``event``."""
    if not await anyio.to_thread.run_sync(event.wait, timeout, abandon_on_cancel=True):
        raise TimeoutError(f"waited {timeout} s for {what}")


class GrowGate:
    """Patches ``_files.create_table_file`` (the first step of every grow, with
    the core's writer lock held) so the grow's thread stops there until the
    test calls ``release()``.  ``entered`` is set once a grow has reached it."""

    def __init__(self, monkeypatch) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.finished = threading.Event()
        self.threads: list[int] = []
        original = _files.create_table_file

        def gated(*args, **kwargs):
            self.threads.append(threading.get_ident())
            self.entered.set()
            if not self.released.wait(30):
                raise TimeoutError("GrowGate never released")
            try:
                return original(*args, **kwargs)
            finally:
                self.finished.set()

        monkeypatch.setattr(_files, "create_table_file", gated)

    async def wait_entered(self) -> None:
        """Wait until a grow's thread has reached the gate (``entered`` set)."""
        await wait_event(self.entered, "a grow to reach the GrowGate")

    def release(self) -> None:
        self.released.set()

