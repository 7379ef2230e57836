"""stats() and verify() walk the index: writers in other threads wait for them.

Regression (found by the attack pass): with another thread putting and
deleting, 17 of 20 ``stats()`` calls failed with ``RuntimeError: index
changed size during iteration``, and ``verify()`` too.
"""

from __future__ import annotations

import threading

import anyio
import pytest

from diskhash import AsyncPayloadStore, PayloadStore


def _churn(store: PayloadStore, stop: threading.Event, errors: list[str]) -> None:
    i = 0
    try:
        while not stop.is_set():
            store.put(10_000 + i % 500, b"x" * (i % 50))
            if i % 3 == 0:
                store.delete(10_000 + (i * 7) % 500)
            i += 1
    except Exception as exc:               # reported by the test
        errors.append(repr(exc))


def test_stats_and_verify_while_another_thread_writes(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(range(2000), [b"p%d" % i for i in range(2000)])
        stop = threading.Event()
        errors: list[str] = []
        writer = threading.Thread(target=_churn, args=(store, stop, errors))
        writer.start()
        try:
            for _ in range(30):
                st = store.stats()
                assert 2000 <= st.entries <= 2500
                assert st.stored_bytes >= sum(len(b"p%d" % i) for i in range(2000))
            for _ in range(3):
                store.verify()
        finally:
            stop.set()
            writer.join(30)
        assert not writer.is_alive()
        assert errors == []
        assert store.stats().entries == len(store)


@pytest.mark.anyio
async def test_async_stats_while_another_thread_writes(tmp_path):
    store = await AsyncPayloadStore.open(tmp_path / "s")
    try:
        await store.put_many(list(range(1000)), [b"v"] * 1000)
        stop = threading.Event()
        errors: list[str] = []
        writer = threading.Thread(target=_churn, args=(store.sync, stop, errors))
        writer.start()
        try:
            for _ in range(10):
                assert (await store.stats()).entries >= 1000
            await store.verify()
        finally:
            stop.set()
            await anyio.to_thread.run_sync(writer.join, 30)
        assert errors == []
    finally:
        await store.close()


def test_stats_racing_rebuild_index_is_not_file_not_found(tmp_path, monkeypatch):
    # stats() took the generation, then rebuild_index() (another thread)
    # unlinked its index file: os.path.getsize raised FileNotFoundError.
    """A hostile pass over PayloadStore and ShardedStore found this."""
    import os

    with PayloadStore(tmp_path / "s") as s:
        for i in range(20):
            s.put(i, b"x" * i)
        real = os.path.getsize
        raced = []

        def getsize(path):
            if not raced and str(path).endswith(".idx"):
                raced.append(path)
                s.rebuild_index()          # what a racing thread does at this moment
            return real(path)

        monkeypatch.setattr(os.path, "getsize", getsize)
        st = s.stats()
        monkeypatch.undo()
        assert raced and st.entries == 20
        assert st.index_generation == 2
        assert st.index_bytes == real(os.path.join(s.directory, "index-000002.idx"))
