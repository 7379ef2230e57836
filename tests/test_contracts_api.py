"""Issue 9, defects 8-10: the API keeps its contracts at its edges.

* one AsyncDiskHashIndex used from two event loops never hangs (defect 8);
* insert_many is all or nothing when it meets damage mid-batch (defect 9);
* errors name what was wrong, numpy integers are accepted wherever ints are,
  exceptions survive pickling (defect 10).
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers.processes import subprocess_env

import diskhash
from diskhash import (
    Compression,
    CorruptIndexError,
    DiskHashIndex,
    IndexClosedError,
    IndexLockedError,
    PayloadMeta,
    ReadOnlyIndexError,
    WrongEventLoopError,
)
from diskhash._format import home_slot


def record(key: int, offset: int = 1) -> PayloadMeta:
    return PayloadMeta(key, offset, 2, Compression.LZ4, 3)


def meta_array(offsets: list[int]) -> np.ndarray:
    arr = np.zeros(len(offsets), dtype=diskhash.META_DTYPE)
    arr["offset"] = offsets
    arr["length"] = 5
    arr["compression"] = 1
    arr["uncompressed_length"] = 9
    return arr


# -- defect 8: two event loops -------------------------------------------------

TWO_LOOPS = r"""
import os, sys, tempfile, threading
import anyio
from diskhash import AsyncDiskHashIndex, DiskHashIndex, PayloadMeta, WrongEventLoopError

second = sys.argv[1]
path = os.path.join(tempfile.mkdtemp(), "x.idx")
shared = AsyncDiskHashIndex(DiskHashIndex(path))
done, refused, failures = {}, {}, []
start = threading.Barrier(2)

async def hammer(name, base):
    ok = no = 0
    for i in range(400):
        k = base + i
        try:
            await shared.insert(k, PayloadMeta(k, 1, 2, 0, 3))   # grows: the writer lane
            await shared.delete(k)
            await shared.stats()
            ok += 1
        except WrongEventLoopError as exc:
            assert "another event loop" in str(exc), exc
            no += 1
    done[name], refused[name] = ok, no

def run(name, backend, base):
    try:
        start.wait()
        anyio.run(hammer, name, base, backend=backend)
    except BaseException as exc:
        failures.append(repr(exc))

threads = [threading.Thread(target=run, args=("first", "asyncio", 0)),
           threading.Thread(target=run, args=("second", second, 10**6))]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures
assert sum(done.values()) + sum(refused.values()) == 800, (done, refused)
assert sum(done.values()) > 0, (done, refused)

# One loop after the other is fine: the facade moves to the idle new loop.
async def one(backend_name):
    n = len(shared)         # a refused delete above may have left a key behind
    await shared.insert(7 * 10**9, PayloadMeta(7 * 10**9, 1, 2, 0, 3))
    assert (await shared.stats()).entries == n + 1
    assert await shared.pop(7 * 10**9) == (7 * 10**9, 1, 2, 0, 3)
for backend in ("asyncio", second, "asyncio"):
    anyio.run(one, backend, backend=backend)
shared.sync.close()
print("ok", done, refused)
"""


@pytest.mark.parametrize("second", ["asyncio", "trio"])
def test_one_async_index_on_two_event_loops_never_hangs(second, tmp_path):
    r = subprocess.run([sys.executable, "-c", TWO_LOOPS, second], check=False, capture_output=True,
                       text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok"), r.stdout


def test_a_facade_per_loop_over_one_sync_index_works_from_two_loops(tmp_path):
    code = TWO_LOOPS.replace(
        "async def hammer(name, base):",
        "facades = {}\nasync def hammer(name, base):\n"
        "    facade = facades.setdefault(name, AsyncDiskHashIndex(shared.sync))",
    ).replace("await shared.insert(k,", "await facade.insert(k,").replace(
        "await shared.delete(k)", "await facade.delete(k)").replace(
        "await shared.stats()\n            ok", "await facade.stats()\n            ok")
    code = code.replace('print("ok", done, refused)',
                        'assert refused == {"first": 0, "second": 0}, refused\nprint("ok", done)')
    r = subprocess.run([sys.executable, "-c", code, "trio"], check=False, capture_output=True,
                       text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_wrong_event_loop_error_is_a_diskhash_error_and_a_runtime_error():
    assert issubclass(WrongEventLoopError, diskhash.DiskHashError)
    assert issubclass(WrongEventLoopError, RuntimeError)


# -- defect 9: insert_many all or nothing -------------------------------------


def _key_with_home(seed: int, slot: int, skip: set[int]) -> int:
    k = 1000
    while home_slot(k, seed, 4096) != slot or k in skip:
        k += 1
    return k


def _damage_slot(path, slot: int) -> None:
    data = bytearray(path.read_bytes())
    data[64 + slot * 40] = 0x07                     # neither empty nor occupied
    path.write_bytes(bytes(data))


def _build(path, n: int = 10) -> int:
    with DiskHashIndex(path) as idx:
        for k in range(n):
            idx.insert(k, record(k))
        return idx.seed


def _free_run(seed: int, length: int, taken: set[int]) -> int:
    """A slot s with s .. s+length-1 all empty in the 10-entry table."""
    used = {home_slot(k, seed, 4096) for k in range(10)} | taken
    s = 100
    while any((s + j) % 4096 in used or (s + j - 1) % 4096 in used for j in range(length + 1)):
        s += 7
    return s


def test_insert_many_meeting_a_damaged_slot_changes_nothing(index_path):
    seed = _build(index_path)
    bad = _free_run(seed, 1, set())
    _damage_slot(index_path, bad)
    before = index_path.read_bytes()
    with DiskHashIndex(index_path) as idx:
        fresh = [_key_with_home(seed, (bad + 500 + 50 * j) % 4096, set()) for j in range(3)]
        victim = _key_with_home(seed, bad, set(fresh))
        # new keys, an overwrite of a stored key, then the key whose probe meets the damage
        keys = np.array(fresh + [3, victim], dtype=np.uint64)
        with pytest.raises(CorruptIndexError, match=f"slot {bad}: bad tag 0x07"):
            idx.insert_many(keys, meta_array([11, 12, 13, 14, 15]))
        assert len(idx) == 10
        assert idx.get_many(np.array(fresh, dtype=np.uint64))["found"].tolist() == [False] * 3
        assert idx[3] == record(3)
    assert index_path.read_bytes() == before      # slot for slot, header included


def test_insert_many_whose_own_writes_lead_into_damage_changes_nothing(index_path):
    # Both keys' probes in the stored table stop at the empty slot `home`;
    # only after the first is written does the second walk on into the damage.
    seed = _build(index_path)
    home = _free_run(seed, 2, set())
    _damage_slot(index_path, home + 1)
    before = index_path.read_bytes()
    with DiskHashIndex(index_path) as idx:
        first = _key_with_home(seed, home, set())
        second = _key_with_home(seed, home, {first})
        keys = np.array([5, first, 6, second, 7], dtype=np.uint64)
        with pytest.raises(CorruptIndexError, match=f"slot {home + 1}: bad tag 0x07"):
            idx.insert_many(keys, meta_array([21, 22, 23, 24, 25]))
        assert len(idx) == 10
        assert first not in idx
        assert [idx[k] for k in (5, 6, 7)] == [record(5), record(6), record(7)]
    assert index_path.read_bytes() == before


def test_insert_many_after_a_rolled_back_batch_still_works(index_path):
    seed = _build(index_path)
    bad = _free_run(seed, 1, set())
    _damage_slot(index_path, bad)
    with DiskHashIndex(index_path) as idx:
        victim = _key_with_home(seed, bad, set())
        with pytest.raises(CorruptIndexError):
            idx.insert_many(np.array([4000, victim], dtype=np.uint64), meta_array([1, 2]))
        assert 4000 not in idx
        idx.insert_many(np.array([4000], dtype=np.uint64), meta_array([31]))
        assert idx[4000] == (4000, 31, 5, Compression.LZ4, 9) and len(idx) == 11


# -- defect 10: messages, numpy integers, pickling ---------------------------


@pytest.mark.parametrize("field", ["length", "uncompressed_length"])
@pytest.mark.parametrize("value", [-1, 2**32, 2**64, -(2**70)])
def test_u32_fields_name_the_u32_range(field, value):
    fields = {"edge_id": 1, "offset": 0, "length": 0, "compression": 0, "uncompressed_length": 0}
    fields[field] = value
    with pytest.raises(OverflowError, match=rf"PayloadMeta\.{field} = {value} is outside \[0, 2\*\*32\)"):
        PayloadMeta(**fields)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_offset_names_the_u64_range(value):
    with pytest.raises(OverflowError, match=r"PayloadMeta\.offset = .* is outside \[0, 2\*\*64\)"):
        PayloadMeta(1, value, 0, 0, 0)


@pytest.mark.parametrize("keys", [[2**64], [1, 2**100], [2**64 + 5, 3]])
def test_get_many_of_ids_beyond_64_bits_names_key_dtype(index_path, keys):
    with DiskHashIndex(index_path) as idx:
        wanted = r"ids of 2\*\*64 and above go in a diskhash\.KEY_DTYPE array"
        for call in (idx.get_many, idx.contains_many):
            with pytest.raises(TypeError, match=wanted):
                call(keys)
        with pytest.raises(TypeError, match=wanted):
            idx.insert_many(keys, meta_array([0] * len(keys)))
        assert len(idx) == 0


@pytest.mark.parametrize("int_type", [np.uint8, np.uint16, np.uint32, np.uint64,
                                      np.int8, np.int32, np.int64])
def test_numpy_integers_are_accepted_as_record_fields(int_type):
    m = PayloadMeta(int_type(5), int_type(1), int_type(2), int_type(1), int_type(3))
    assert m == (5, 1, 2, Compression.LZ4, 3)
    assert [type(x) for x in m] == [int, int, int, Compression, int]


@pytest.mark.parametrize("bad, exc", [(np.int64(-1), OverflowError), (np.uint64(2**64 - 1), None),
                                      (np.bool_(True), TypeError), (np.float64(1.0), TypeError),
                                      (1.0, TypeError), ("1", TypeError), (None, TypeError)])
def test_numpy_field_values_are_checked_like_ints(bad, exc):
    if exc is None:                             # 2**64 - 1 is a valid offset
        assert PayloadMeta(1, bad, 0, 0, 0).offset == 2**64 - 1
        with pytest.raises(OverflowError, match=r"length = 18446744073709551615 is outside \[0, 2\*\*32\)"):
            PayloadMeta(1, 0, bad, 0, 0)
        return
    for pos in (1, 2, 4):
        fields = [1, 0, 0, 0, 0]
        fields[pos] = bad
        with pytest.raises(exc):
            PayloadMeta(*fields)
    with pytest.raises(TypeError if exc is TypeError else ValueError):
        PayloadMeta(1, 0, 0, bad, 0)


def test_get_many_results_round_trip_into_records_and_inserts(index_path):
    keys = np.array([3, 2**63 + 7, 11], dtype=np.uint64)
    with DiskHashIndex(index_path) as idx:
        for k in keys.tolist():
            idx.insert(k, PayloadMeta(k, 2**40 + k % 97, 4096, Compression.ZSTD, 2**32 - 1))
        rows = idx.get_many(keys)
        rebuilt = [PayloadMeta(k, r["offset"], r["length"], r["compression"], r["uncompressed_length"])
                   for k, r in zip(keys, rows)]
        assert rebuilt == [idx[int(k)] for k in keys]
        # numpy scalars straight from the arrays work as insert's key and record too
        idx.insert(keys[0], (keys[0], rows[1]["offset"], rows[1]["length"],
                             rows[1]["compression"], rows[1]["uncompressed_length"]))
        assert idx[3] == (3, rows[1]["offset"], 4096, Compression.ZSTD, 2**32 - 1)


@pytest.mark.parametrize("error", [
    IndexLockedError("/tmp/odd: name: here.idx", "locked by another writer: try later"),
    IndexLockedError("plain.idx", "locked"),
    CorruptIndexError("/a: b.idx", ["slot 1: bad tag 0x07", "x: y"]),
    CorruptIndexError("c.idx", "one defect"),
    IndexClosedError("/a: b.idx: index is closed"),
    ReadOnlyIndexError("/a: b.idx: index is open read-only"),
    WrongEventLoopError("/a: b.idx: in use by another event loop"),
])
def test_errors_pickle_with_every_field(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    for attr in ("path", "defects", "message"):
        assert getattr(back, attr, None) == getattr(error, attr, None)


def test_index_locked_error_keeps_a_path_with_colon_space():
    e = IndexLockedError("/data/a: b.idx", "held by a writer")
    back = pickle.loads(pickle.dumps(e))
    assert back.path == "/data/a: b.idx" and back.message == "held by a writer"
    assert str(back) == "/data/a: b.idx: held by a writer"


def test_numpy_bool_is_refused_as_a_key_like_bool(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
        for key in (True, np.bool_(True)):
            with pytest.raises(TypeError, match="not bool"):
                idx.get(key)
            with pytest.raises(TypeError, match="not bool"):
                idx.insert(key, record(1))
        assert len(idx) == 1
