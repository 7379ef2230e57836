"""The grow's loop-stall knobs (a benchmark setting, diskhash._index.table._GROW_KNOBS)
change how the grow schedules its work, never what it writes: every knob set
grows to the same entries, readers in threads meanwhile see every record, and
a bad knob is refused before the table is touched."""

from __future__ import annotations

import os
import random
import threading

import pytest
from helpers.records import record

from diskhash import DiskHashIndex
from diskhash._index import table as core

KNOB_SETS = ["none", "nice", "nice5", "yield", "pause", "writeback", "pause+writeback",
             "nice+yield+pause+writeback"]


@pytest.fixture
def knobs(monkeypatch: pytest.MonkeyPatch):
    """Set the knobs, and slices small enough that a test-sized table is cut
    into many (so the sliced rehash and the writeback lag really run)."""
    def set_knobs(value: str) -> None:
        monkeypatch.setattr(core, "_GROW_KNOBS", value)
        monkeypatch.setattr(core, "GROW_SLICE_SLOTS", 512)
        monkeypatch.setattr(core, "GROW_PAUSE_US", 10)
    return set_knobs


@pytest.mark.parametrize("knob_set", KNOB_SETS)
def test_every_knob_set_grows_to_the_same_entries(index_path, knobs, knob_set):
    _grows_to_the_same_entries(index_path, knobs, knob_set, 12_000, 16384)    # 2 grows


@pytest.mark.slow
@pytest.mark.parametrize("knob_set", KNOB_SETS)
def test_every_knob_set_grows_to_the_same_entries_four_times(index_path, knobs, knob_set):
    _grows_to_the_same_entries(index_path, knobs, knob_set, 40_000, 65536)    # 4 grows


def _grows_to_the_same_entries(index_path, knobs, knob_set: str, n: int, slots: int) -> None:
    """``n`` keys into a fresh table (4096 slots) grow it to ``slots``, each
    grow cut into slices of 512 old slots."""
    knobs(knob_set)
    rng = random.Random(11)
    keys = [rng.getrandbits(128) for _ in range(n)]
    with DiskHashIndex(index_path) as idx:
        for k in keys:
            idx.insert(k, record(k))
        assert idx.num_slots == slots
        assert len(idx) == len(keys)
        assert all(idx.get(k) == record(k) for k in keys)
        idx.verify()
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with DiskHashIndex(index_path) as idx:            # the published file reopens whole
        assert len(idx) == len(keys)
        assert all(idx.get(k) == record(k) for k in keys[::97])
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_readers_in_threads_see_every_record_during_a_sliced_grow(index_path, knobs):
    knobs("nice+pause+writeback")
    rng = random.Random(5)
    keys = [rng.getrandbits(128) for _ in range(10_000)]   # a grow of some 30 slices of 512
    errors: list[str] = []
    stop = threading.Event()
    with DiskHashIndex(index_path, capacity=len(keys)) as idx:
        for k in keys:
            idx.insert(k, record(k))
        slots = idx.num_slots

        def reader(seed: int) -> None:
            r = random.Random(seed)
            while not stop.is_set():
                k = keys[r.randrange(len(keys))]
                if idx.get(k) != record(k):
                    errors.append(f"key {k}: {idx.get(k)!r}")
                    return

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        try:
            idx.reserve(4 * slots)                       # grows while the readers read
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert idx.num_slots > slots
        assert errors == []
        assert all(idx.get(k) == record(k) for k in keys)


def test_the_grow_thread_gets_its_own_priority_back(index_path, knobs):
    knobs("nice")
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    with DiskHashIndex(index_path) as idx:
        for k in range(1, 10_000):
            idx.insert(k, record(k))
    assert os.getpriority(os.PRIO_PROCESS, tid) == before


def test_an_unknown_knob_is_refused_before_the_table_is_touched(index_path, knobs):
    knobs("nice+fast")
    with DiskHashIndex(index_path) as idx:
        n = 0
        with pytest.raises(ValueError, match=r"unknown knob 'fast'"):
            while True:                                  # up to the insert that must grow
                n += 1
                idx.insert(n, record(n))
        assert len(idx) == n - 1 and idx.num_slots == 4096
        assert all(idx.get(k) == record(k) for k in range(1, n))
        assert not [f for f in os.listdir(index_path.parent) if f.endswith(".tmp")]
