"""Routing keys to shards: one function, for one key and for numpy batches."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from helpers.records import random_key_array

from diskhash._shards import routing as _routing

SEED = 0x1234_5678_9ABC_DEF1


def random_keys(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = random_key_array(rng, n)
    return keys


def as_ints(keys: np.ndarray) -> list[int]:
    return [int(lo) | int(hi) << 64 for lo, hi in zip(keys["lo"], keys["hi"])]


@pytest.mark.parametrize("shards", [1, 2, 3, 8, 13, 1024, _routing.MAX_SHARDS])
def test_scalar_and_vector_routing_agree(shards: int) -> None:
    keys = random_keys(3000, shards)
    keys["hi"][:1000] = 0                       # small ids too
    keys[1000]["lo"], keys[1000]["hi"] = 2**64 - 1, 2**64 - 1
    vec = _routing.shards_of(keys, SEED, shards)
    assert vec.dtype == np.uint32 and vec.shape == (3000,)
    assert vec.tolist() == [_routing.shard_of(k, SEED, shards) for k in as_ints(keys)]
    assert int(vec.max()) < shards


def test_key_forms_route_alike() -> None:
    k = (7 << 64) | 99
    forms = [k, uuid.UUID(int=k), np.uint64(99) if k < 2**64 else k]
    assert len({_routing.shard_of(f, SEED, 8) for f in forms[:2]}) == 1
    assert _routing.shard_of(np.uint64(5), SEED, 8) == _routing.shard_of(5, SEED, 8)
    arr = _routing.key_array(np.array([5, 99], dtype=np.uint64))
    assert _routing.shards_of(arr, SEED, 8).tolist() == [_routing.shard_of(5, SEED, 8),
                                                         _routing.shard_of(99, SEED, 8)]


def test_seed_changes_the_routing() -> None:
    keys = random_keys(2000)
    a = _routing.shards_of(keys, SEED, 16)
    b = _routing.shards_of(keys, SEED + 1, 16)
    assert (a != b).mean() > 0.8            # ~15/16 expected for unrelated seeds


def test_shards_are_balanced() -> None:
    keys = random_keys(160_000)
    counts = np.bincount(_routing.shards_of(keys, SEED, 16), minlength=16)
    assert counts.min() > 9_000 and counts.max() < 11_000    # 10000 +- ~1% expected
    seq = _routing.key_array(np.arange(160_000, dtype=np.uint64))   # sequential ids too
    counts = np.bincount(_routing.shards_of(seq, SEED, 16), minlength=16)
    assert counts.min() > 9_000 and counts.max() < 11_000


def _table_hash(lo: np.ndarray, hi: np.ndarray, seed: int) -> np.ndarray:
    """The SOCHIDX2 table hash (SPEC-sochidx2.md), vectorised."""
    def mix(x: np.ndarray) -> np.ndarray:
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
    s2 = np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    return mix(lo ^ np.uint64(seed)) ^ mix(hi ^ s2)


def _chi2(homes: np.ndarray, bins: int) -> float:
    counts = np.bincount(homes.astype(np.int64), minlength=bins)
    expected = len(homes) / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_one_shards_keys_spread_over_its_table() -> None:
    # The keys routed to one shard must not share home-slot bits in that
    # shard's table, even when the table seed equals the routing seed:
    # chi-square over 1024 home buckets (1023 degrees of freedom: mean 1023,
    # sd ~45) stays near its mean.
    keys = random_keys(200_000, 7)
    shard = _routing.shards_of(keys, SEED, 8)
    mine = keys[shard == 3]
    for table_seed in (SEED, 0xDEADBEEF):
        homes = _table_hash(mine["lo"], mine["hi"], table_seed) & np.uint64(1023)
        assert _chi2(homes, 1024) < 1023 + 6 * 45
    # The check can fail: routing by the table hash's own low bits crowds
    # one shard's keys into an eighth of the table.
    bad = keys[(_table_hash(keys["lo"], keys["hi"], SEED) & np.uint64(7)) == 3]
    homes = _table_hash(bad["lo"], bad["hi"], SEED) & np.uint64(1023)
    assert _chi2(homes, 1024) > 10 * 1023


def test_group_by_shard_keeps_order_within_a_shard() -> None:
    sid = np.array([2, 0, 2, 1, 0, 2], dtype=np.uint32)
    order, bounds = _routing.group_by_shard(sid, 4)
    assert bounds.tolist() == [0, 2, 3, 6, 6]
    assert order.tolist() == [1, 4, 3, 0, 2, 5]


def test_batch_routing_runs_no_python_code_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> None:
        raise AssertionError("per-key Python routing used for a numpy batch")

    monkeypatch.setattr(_routing, "shard_of", forbidden)
    monkeypatch.setattr(_routing, "key_halves", forbidden)
    monkeypatch.setattr(_routing, "_fmix64", forbidden)
    keys = _routing.key_array(random_keys(5000))
    assert _routing.shards_of(keys, SEED, 8).shape == (5000,)
    keys = _routing.key_array(np.arange(5000, dtype=np.uint64))
    assert keys["lo"][4999] == 4999 and keys["hi"].max() == 0


@pytest.mark.parametrize("bad, exc", [
    ("1", TypeError), (b"1", TypeError), (1.0, TypeError), (None, TypeError),
    (True, TypeError), (-1, OverflowError), (2**128, OverflowError),
    (float("nan"), TypeError), (np.float64(3), TypeError),
])
def test_bad_single_keys(bad: object, exc: type) -> None:
    with pytest.raises(exc, match="edge_id"):
        _routing.shard_of(bad, SEED, 4)


@pytest.mark.parametrize("bad, exc, match", [
    (np.array([1, -2]), OverflowError, r"keys\[1\]"),
    (np.array([1.0]), TypeError, "dtype float64"),
    (np.array([True]), TypeError, "bool"),
    (np.zeros((2, 2), dtype=np.uint64), ValueError, "1-D"),
    (np.zeros(2, dtype=[("a", "<u8"), ("b", "<u8")]), TypeError, "KEY_DTYPE"),
    ([1, "x"], TypeError, r"keys\[1\]"),
    ([1, -1], OverflowError, r"keys\[1\]"),
    ("12", TypeError, "sequence"),
    (b"12", TypeError, "sequence"),
    (5, TypeError, "sequence"),
])
def test_bad_key_batches(bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        _routing.key_array(bad)


def test_key_array_of_python_keys() -> None:
    big = 2**128 - 1
    arr = _routing.key_array([0, big, uuid.UUID(int=5 << 64), np.uint64(3)])
    assert arr["lo"].tolist() == [0, 2**64 - 1, 0, 3]
    assert arr["hi"].tolist() == [0, 2**64 - 1, 5, 0]
    assert _routing.key_array([]).shape == (0,)
    objs = _routing.key_array(np.array([1, 2**100], dtype=object))     # as PayloadStore takes
    assert objs["lo"].tolist() == [1, 0] and objs["hi"].tolist() == [0, 2**36]
    with pytest.raises(OverflowError, match=r"keys\[0\]"):
        _routing.key_array(np.array([-1], dtype=object))
