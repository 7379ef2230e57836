"""One contract for a key that is an int outside [0, 2**128), on every API:
``KeyRangeError``, which is a ``ValueError`` and an ``OverflowError`` at once
(docs/reference/api.md), with one message naming the key and the range."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers.processes import subprocess_env

import diskhash
from diskhash import (
    AsyncDiskHashIndex,
    AsyncPayloadStore,
    AsyncShardedStore,
    DiskHashError,
    DiskHashIndex,
    KeyRangeError,
    PayloadMeta,
    PayloadStore,
    ShardedStore,
)


def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)


BAD = [-1, 2**128, 10**5000, -(10**5000)]
META = PayloadMeta(0, 0, 5, 0, 5)


def _check(exc: BaseException, key: int) -> None:
    assert isinstance(exc, KeyRangeError), type(exc)
    assert isinstance(exc, ValueError) and isinstance(exc, OverflowError)
    assert isinstance(exc, DiskHashError)
    assert "outside [0, 2**128)" in str(exc)
    assert exc.key == key
    if key.bit_length() <= 256:
        assert str(key) in str(exc)
    else:
        assert "bits" in str(exc) and len(str(exc)) < 200


def _raises(call, key: int) -> None:
    with pytest.raises(ValueError) as info:         # what the docs promise ...
        call(key)
    _check(info.value, key)
    with pytest.raises(OverflowError):              # ... and what it always was
        call(key)


def test_the_error_type_pickles_and_is_exported():
    exc = KeyRangeError(-5, "keys[2]")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is KeyRangeError and back.key == -5 and str(back) == str(exc)
    assert str(exc) == "keys[2]: edge_id -5 is outside [0, 2**128)"
    assert "KeyRangeError" in diskhash.__all__


@pytest.mark.parametrize("key", BAD, ids=["neg", "2**128", "huge", "-huge"])
def test_index(tmp_path, key):
    with DiskHashIndex(tmp_path / "a.idx") as idx:
        for call in (idx.get, idx.__getitem__, idx.__contains__, idx.delete, idx.pop,
                     idx.__delitem__, lambda k: idx.insert(k, META),
                     lambda k: PayloadMeta(k, 0, 0, 0, 0)):
            _raises(call, key)


@pytest.mark.parametrize("key", [-1, 2**128])
def test_index_numpy_batches(tmp_path, key):
    with DiskHashIndex(tmp_path / "a.idx") as idx:
        if key < 0:
            arr = np.array([3, key], dtype=np.int64)
            for call in (idx.get_many, idx.contains_many,
                         lambda a: idx.insert_many(a, np.zeros(2, dtype=diskhash.META_DTYPE))):
                with pytest.raises(ValueError) as info:
                    call(arr)
                _check(info.value, key)
                assert "keys[1]" in str(info.value)
        else:       # an object array (list with a big int): TypeError, as before
            with pytest.raises(TypeError):
                idx.get_many([3, key])
        assert len(idx) == 0


@pytest.mark.parametrize("key", BAD, ids=["neg", "2**128", "huge", "-huge"])
def test_store(tmp_path, key):
    with PayloadStore(tmp_path / "s") as s:
        for call in (s.get, s.__getitem__, s.__contains__, s.meta, s.delete, s.pop,
                     s.payload_range, lambda k: s.put(k, b"x"), lambda k: s.__setitem__(k, b"x"),
                     lambda k: s.put_many([1, k], [b"a", b"b"]), lambda k: s.get_many([1, k])):
            _raises(call, key)
        if key < 0 and key.bit_length() < 64:
            _raises(lambda k: s.put_many(np.array([1, k]), [b"a", b"b"]), key)
        assert len(s) == 0


@pytest.mark.parametrize("key", BAD, ids=["neg", "2**128", "huge", "-huge"])
def test_sharded(tmp_path, key):
    with ShardedStore(tmp_path / "set", shards=3) as s:
        for call in (s.get, s.__getitem__, s.__contains__, s.meta, s.delete, s.pop, s.shard_of,
                     s.payload_range, lambda k: s.put(k, b"x"),
                     lambda k: s.put_many([1, k], [b"a", b"b"]), lambda k: s.get_many([1, k])):
            _raises(call, key)
        if key < 0 and key.bit_length() < 64:
            for call in (lambda k: s.put_many(np.array([1, k]), [b"a", b"b"]),
                         lambda k: s.get_many(np.array([1, k]))):
                with pytest.raises(ValueError) as info:
                    call(key)
                _check(info.value, key)
                assert "keys[1]" in str(info.value)
        assert len(s) == 0


async def _araises(call, key: int) -> None:
    with pytest.raises(ValueError) as info:
        await call(key)
    _check(info.value, key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", [-1, 2**128, 10**5000], ids=["neg", "2**128", "huge"])
async def test_async_twins(tmp_path, key):
    idx = await AsyncDiskHashIndex.open(tmp_path / "a.idx")
    async with idx:
        for call in (idx.get, idx.contains, idx.delete, idx.pop, lambda k: idx.insert(k, META)):
            await _araises(call, key)
    store = await AsyncPayloadStore.open(tmp_path / "s")
    async with store:
        for call in (store.get, store.meta, store.contains, store.delete, store.pop,
                     lambda k: store.put(k, b"x"), lambda k: store.put_many([k], [b"x"]),
                     lambda k: store.get_many([1, k])):
            await _araises(call, key)
    sharded = await AsyncShardedStore.open(tmp_path / "set", shards=2)
    async with sharded:
        for call in (sharded.get, sharded.meta, sharded.contains, sharded.delete, sharded.pop,
                     lambda k: sharded.put(k, b"x"), lambda k: sharded.put_many([k], [b"x"]),
                     lambda k: sharded.get_many([1, k])):
            await _araises(call, key)


def test_cli_refuses_out_of_range_keys(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
    for text in ("-1", str(2**128), "0x1" + "0" * 32, "9" * 5000):
        r = subprocess.run([sys.executable, "-m", "diskhash", "store", "get", str(tmp_path / "s"), text],
                           capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert r.returncode == 2, (text, r.stderr)
        assert "Traceback" not in r.stderr and "is not a key" in r.stderr


@pytest.mark.parametrize("key", [-1, -(2**64), -(2**200)])
def test_negative_keys_raise_overflow_error_everywhere(index_path, key):
    """A hostile pass found this: every call keeps its contract."""
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1))
        for op in (idx.get, idx.__getitem__, idx.__contains__, idx.delete, idx.pop,
                   idx.__delitem__, lambda k: idx.insert(k, (k, 1, 2, 0, 3))):
            with pytest.raises(OverflowError, match="outside"):
                op(key)
        assert len(idx) == 1 and idx[1] == rec(1)
