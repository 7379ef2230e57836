"""Test helpers for the async suites: hold a grow in its thread at a known point."""

from __future__ import annotations

import threading

import anyio

from diskhash import PayloadMeta, _files


def meta(key: int, offset: int = 10) -> PayloadMeta:
    return PayloadMeta(key, offset, key & 0xFFFF, key % 3, 40)


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
        with anyio.fail_after(10):
            while not self.entered.is_set():
                await anyio.sleep(0.001)

    def release(self) -> None:
        self.released.set()


async def fill_to_capacity(aidx) -> list[int]:
    """Insert keys until the next new key must grow the table; returns them."""
    keys = list(range(1, aidx.capacity + 1))
    for k in keys[len(aidx):]:
        await aidx.insert(k, meta(k))
    assert len(aidx) == aidx.capacity
    return keys
