"""Readers in threads while one writer inserts, deletes and grows the table."""

from __future__ import annotations

import random
import threading

import pytest
from helpers.records import record

from diskhash import (
    DiskHashIndex,
    IndexClosedError,
    PayloadMeta,
)


def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)



def test_readers_during_growth_never_see_wrong_or_torn_records(index_path):
    _readers_during_growth(index_path, 40_000, 8)            # 3 grows or more


@pytest.mark.slow
def test_readers_during_many_grows_never_see_wrong_or_torn_records(index_path):
    _readers_during_growth(index_path, 150_000, 32)          # 5 grows or more


def _readers_during_growth(index_path, n: int, growth: int) -> None:
    """Three reader threads look up inserted and absent keys while ``n`` keys
    go in and the table grows ``growth`` times over."""
    rng = random.Random(3)
    keys = [rng.getrandbits(128) for _ in range(n)]
    published = [0]          # keys[:published[0]] are inserted
    stop = threading.Event()
    errors: list[str] = []
    lookups = [0, 0, 0]

    with DiskHashIndex(index_path) as idx:
        start_slots = idx.num_slots

        def reader(n: int) -> None:
            r = random.Random(n)
            while not stop.is_set():
                upto = published[0]
                if not upto:
                    continue
                for _ in range(200):
                    k = keys[r.randrange(upto)]
                    got = idx.get(k)
                    if got != record(k):
                        errors.append(f"key {k}: got {got!r}")
                        return
                    absent = r.getrandbits(128) | (1 << 127)  # keys[] never have this exact value
                    if absent in idx and absent not in keys:
                        errors.append(f"phantom key {absent}")
                        return
                lookups[n] += 200

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            for i, k in enumerate(keys):
                idx.insert(k, record(k))
                published[0] = i + 1
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        assert idx.num_slots >= start_slots * growth     # it grew meanwhile
        assert all(n > 0 for n in lookups)
        assert len(idx) == len(keys)
        idx.verify()


def test_readers_alongside_deletes(index_path):
    keys = list(range(1, 40_001))
    with DiskHashIndex(index_path) as idx:
        for k in keys:
            idx.insert(k, record(k))
        stop = threading.Event()
        errors: list[str] = []
        kept = set(k for k in keys if k % 4)

        def reader() -> None:
            r = random.Random(9)
            while not stop.is_set():
                k = r.choice(keys)
                got = idx.get(k)
                if got is not None and got != record(k):
                    errors.append(f"{k}: {got!r}")
                if k in kept and got is None:
                    errors.append(f"kept key {k} missing")

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for k in keys:
                if k % 4 == 0:
                    assert idx.delete(k)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        assert len(idx) == len(kept)
        idx.verify()


def test_concurrent_writers_are_serialised(index_path):
    with DiskHashIndex(index_path) as idx:
        def writer(base: int) -> None:
            for k in range(base, base + 20_000):
                idx.insert(k, record(k))

        threads = [threading.Thread(target=writer, args=(n * 1_000_000,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(idx) == 60_000
        for n in range(3):
            for k in range(n * 1_000_000, n * 1_000_000 + 20_000, 97):
                assert idx[k] == record(k)
        idx.verify()


def test_close_while_readers_run(index_path):
    idx = DiskHashIndex(index_path)
    for k in range(10_000):
        idx.insert(k, record(k))
    outcomes: list[str] = []
    started = threading.Barrier(3)

    def reader() -> None:
        started.wait()
        try:
            while True:
                for k in range(0, 10_000, 7):
                    assert idx.get(k) == record(k)
        except IndexClosedError:
            outcomes.append("closed")
        except Exception as exc:  # pragma: no cover - reported below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    idx.close()
    for t in threads:
        t.join()
    assert outcomes == ["closed", "closed"]


def test_stats_racing_close_raises_index_closed_error(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    path = tmp_path / "race.idx"
    errors: list[BaseException] = []
    for trial in range(150):
        idx = DiskHashIndex(path)
        if trial == 0:
            for k in range(100):
                idx.insert(k, rec(k))
        started = threading.Event()

        def hammer(idx=idx, started=started):
            try:
                while True:
                    idx.stats()
                    started.set()
            except IndexClosedError:
                pass
            except Exception as exc:  # noqa: BLE001 - OSError(EBADF) here was the bug
                errors.append(exc)
            finally:
                started.set()

        t = threading.Thread(target=hammer)
        t.start()
        started.wait(10)
        idx.close()
        t.join(10)
        assert not t.is_alive()
    assert errors == []
