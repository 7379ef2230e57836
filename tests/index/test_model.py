"""The index against a dict: long random sequences of inserts, overwrites,
deletes, pops, lookups and iteration, across grows and reopens (hypothesis
stateful testing), with keys crafted to collide at the end of the table so
backward-shift deletion runs across the wrap."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import numpy as np
import pytest
from helpers.spec_model import SLOT_FIELD, assert_valid, slot_offset
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from diskhash import DiskHashIndex, PayloadMeta
from diskhash._format.sochidx2 import home_slot
from diskhash._fs import files as _files

SEED = 0x5EED_0F_D15C_4A54  # the tests create their files with this seed
M64 = (1 << 64) - 1
SPAN = 1 << 16              # crafted homes hold for every table of up to 65536 slots


def _np_mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=None)
def crafted_keys() -> dict[str, list[int]]:
    """Keys (below 2**64) whose home is the last slot, the one before it, or slot 0,
    in any table of up to 65536 slots: they form runs that wrap around the end."""
    lo = np.arange(1, 1 << 22, dtype=np.uint64)
    const = np.array([(SEED * 0x9E3779B97F4A7C15) & M64], dtype=np.uint64)
    h = _np_mix(lo ^ np.uint64(SEED)) ^ _np_mix(const)[0]
    low = h & np.uint64(SPAN - 1)
    groups = {"last": SPAN - 1, "second_last": SPAN - 2, "first": 0}
    out = {}
    for name, target in groups.items():
        keys = [int(k) for k in lo[low == np.uint64(target)][:6]]
        for n in (4096, 8192, 65536):
            assert all(home_slot(k, SEED, n) == (target & (n - 1)) for k in keys)
        out[name] = keys
    return out


def make_index_file(path: str) -> None:
    """An empty 4096-slot table with the fixed SEED (so crafted keys collide)."""
    fd = _files.create_table_file(path, 4096, SEED)
    os.close(fd)


def all_crafted() -> list[int]:
    return [k for group in crafted_keys().values() for k in group]


keys = st.one_of(
    st.sampled_from(all_crafted()) if crafted_keys() else st.nothing(),
    st.integers(0, 40),
    st.integers((1 << 128) - 20, (1 << 128) - 1),
)
fields = st.tuples(st.integers(0, M64), st.integers(0, 2**32 - 1), st.integers(0, 2),
                   st.integers(0, 2**32 - 1))


class IndexModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dh-model-")
        self.path = os.path.join(self.dir, "model.idx")
        make_index_file(self.path)
        self.idx = DiskHashIndex(self.path)
        self.model: dict[int, tuple] = {}
        self.bulk_base = 1 << 70

    def teardown(self) -> None:
        try:
            self.check_everything()
            event(f"final table: {self.idx.num_slots} slots")
        finally:
            self.idx.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(wrap=st.booleans())
    def start(self, wrap: bool) -> None:
        if wrap:   # start with the wrapping runs in place
            for k in all_crafted():
                self.insert(k, (k % 1000, 1, 0, 1))

    # -- single-key operations -------------------------------------------------

    @rule(key=keys, f=fields)
    def insert(self, key: int, f: tuple) -> None:
        self.idx.insert(key, PayloadMeta(key, *f))
        self.model[key] = (key, *f)

    @rule(key=keys)
    def delete(self, key: int) -> None:
        assert self.idx.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(key=keys)
    def delitem(self, key: int) -> None:
        if key in self.model:
            del self.idx[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.idx[key]

    @rule(key=keys, with_default=st.booleans())
    def pop(self, key: int, with_default: bool) -> None:
        expected = self.model.pop(key, None)
        if with_default:
            assert self.idx.pop(key, "absent") == (expected if expected else "absent")
        elif expected is None:
            with pytest.raises(KeyError):
                self.idx.pop(key)
        else:
            assert self.idx.pop(key) == expected

    @rule(key=keys)
    def lookup(self, key: int) -> None:
        assert self.idx.get(key) == self.model.get(key)
        assert (key in self.idx) == (key in self.model)
        if key in self.model:
            assert self.idx[key] == self.model[key]

    # -- bulk operations: cross the grow thresholds cheaply --------------------

    @rule(n=st.integers(200, 2500), f=fields)
    def bulk_insert(self, n: int, f: tuple) -> None:
        start = self.bulk_base
        self.bulk_base += n
        for k in range(start, start + n):
            self.idx.insert(k, PayloadMeta(k, *f))
            self.model[k] = (k, *f)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def bulk_delete(self, data) -> None:
        present = sorted(self.model)
        fraction = data.draw(st.floats(0.1, 1.0))
        step = max(1, int(1 / fraction))
        for k in present[data.draw(st.integers(0, step - 1))::step]:
            assert self.idx.delete(k)
            del self.model[k]

    @rule(extra=st.integers(0, 20000))
    def reserve(self, extra: int) -> None:
        slots = self.idx.num_slots
        self.idx.reserve(len(self.model) + extra)
        assert self.idx.capacity >= len(self.model) + extra
        assert self.idx.num_slots >= slots

    # -- whole-index checks ----------------------------------------------------

    @rule(readonly_first=st.booleans())
    def reopen(self, readonly_first: bool) -> None:
        self.idx.close()
        if readonly_first:
            with DiskHashIndex(self.path, readonly=True) as ro:
                assert len(ro) == len(self.model)
        self.idx = DiskHashIndex(self.path)
        assert self.idx.recovery is None    # a clean close needs no healing

    @rule()
    def iterate(self) -> None:
        assert dict(self.idx.items()) == self.model
        assert sorted(self.idx.keys()) == sorted(self.model)

    @rule()
    def check_everything(self) -> None:
        self.idx.verify()
        self.idx.save()
        with open(self.path, "rb") as f:
            assert assert_valid(f.read()) == self.model

    @invariant()
    def length(self) -> None:
        assert len(self.idx) == len(self.model)


MODEL = settings(stateful_step_count=50, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
class TestIndexModel(IndexModel.TestCase):
    """The full run: 100 sequences of up to 50 steps (``--run-slow``)."""

    settings = settings(MODEL, max_examples=100)


class TestIndexModelSample(IndexModel.TestCase):
    """The default run: a sample of the same sequences."""

    settings = settings(MODEL, max_examples=12)


def test_backward_shift_across_the_wrap_through_grows():
    """Scripted: runs that wrap past the last slot, deleted from every position,
    in tables of 4096, 8192 and 16384 slots; every other key stays reachable."""
    d = tempfile.mkdtemp(prefix="dh-wrap-")
    try:
        path = os.path.join(d, "wrap.idx")
        make_index_file(path)
        groups = crafted_keys()
        wrap = groups["second_last"] + groups["last"] + groups["first"]
        with DiskHashIndex(path) as idx:
            model = {}
            filler = 1 << 80
            for target_slots in (4096, 8192, 16384):
                while idx.num_slots < target_slots:
                    idx.insert(filler, PayloadMeta(filler, 1, 1, 0, 1))
                    model[filler] = (filler, 1, 1, 0, 1)
                    filler += 1
                for victim_pos in range(len(wrap)):
                    for k in wrap:
                        idx.insert(k, PayloadMeta(k, k & 0xFFFF, 2, 1, 3))
                        model[k] = (k, k & 0xFFFF, 2, 1, 3)
                    # The run really wraps: the last slot and slot 0 are occupied.
                    with open(path, "rb") as f:
                        data = f.read()
                    n = idx.num_slots
                    tag = SLOT_FIELD["tag"]
                    assert data[slot_offset(n - 1) + tag] == 1 and data[slot_offset(0) + tag] == 1
                    victim = wrap[victim_pos]
                    assert idx.pop(victim) == model.pop(victim)
                    for k in wrap:
                        assert idx.get(k) == model.get(k)
                    idx.verify()
                    for k in wrap:          # empty the run again, in a different order
                        if k in model:
                            del idx[k]
                            del model[k]
                    idx.verify()
            assert len(idx) == len(model)
            idx.save()
            with open(path, "rb") as f:
                assert assert_valid(f.read()) == model
    finally:
        shutil.rmtree(d, ignore_errors=True)
