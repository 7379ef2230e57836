"""Batch calls (get_many, contains_many, insert_many) answer exactly as the single calls do."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from helpers.processes import subprocess_env
from helpers.records import fill_every_slot, record
from helpers.spec_model import SLOT_FIELD, slot_offset

import diskhash
from diskhash import (
    Compression,
    CorruptIndexError,
    DiskHashIndex,
    IndexClosedError,
    KeyRangeError,
    PayloadMeta,
    ReadOnlyIndexError,
)
from diskhash._format.sochidx2 import home_slot
from diskhash._index import batch as _batch


def lz4_record(key: int, offset: int = 1) -> PayloadMeta:
    return PayloadMeta(key, offset, 2, Compression.LZ4, 3)

def metas_at(offsets: list[int]) -> np.ndarray:
    arr = np.zeros(len(offsets), dtype=diskhash.META_DTYPE)
    arr["offset"] = offsets
    arr["length"] = 5
    arr["compression"] = 1
    arr["uncompressed_length"] = 9
    return arr

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
            idx.insert(k, lz4_record(k))
        return idx.seed

def _free_run(seed: int, length: int, taken: set[int]) -> int:
    """A slot s with s .. s+length-1 all empty in the 10-entry table."""
    used = {home_slot(k, seed, 4096) for k in range(10)} | taken
    s = 100
    while any((s + j) % 4096 in used or (s + j - 1) % 4096 in used for j in range(length + 1)):
        s += 7
    return s


U64 = (1 << 64) - 1


def key_array(keys: list[int]) -> np.ndarray:
    arr = np.zeros(len(keys), dtype=diskhash.KEY_DTYPE)
    arr["lo"] = [k & U64 for k in keys]
    arr["hi"] = [k >> 64 for k in keys]
    return arr


def meta_array(keys: list[int]) -> np.ndarray:
    recs = np.zeros(len(keys), dtype=diskhash.META_DTYPE)
    rows = [record(k) for k in keys]
    recs["offset"] = [r.offset for r in rows]
    recs["length"] = [r.length for r in rows]
    recs["compression"] = [int(r.compression) for r in rows]
    recs["uncompressed_length"] = [r.uncompressed_length for r in rows]
    return recs


def expected_rows(idx: DiskHashIndex, keys: list[int]) -> np.ndarray:
    """What get_many must return, built from single get calls."""
    out = np.zeros(len(keys), dtype=diskhash.RESULT_DTYPE)
    for i, k in enumerate(keys):
        got = idx.get(k)
        if got is not None:
            out[i] = (True, got.offset, got.length, int(got.compression), got.uncompressed_length)
    return out


def assert_same_as_single_calls(idx: DiskHashIndex, keys: list[int]) -> None:
    want = expected_rows(idx, keys)
    assert np.array_equal(idx.get_many(key_array(keys)), want)
    assert np.array_equal(idx.contains_many(key_array(keys)), [k in idx for k in keys])
    small = [k for k in keys if k <= U64]
    if small:
        arr = np.array(small, dtype=np.uint64)
        assert np.array_equal(idx.get_many(arr), expected_rows(idx, small))
        assert np.array_equal(idx.contains_many(arr), [k in idx for k in small])


def test_dtype_layouts_are_as_documented():
    assert diskhash.KEY_DTYPE.itemsize == 16
    assert {n: diskhash.KEY_DTYPE.fields[n][1] for n in ("lo", "hi")} == {"lo": 0, "hi": 8}
    assert diskhash.RESULT_DTYPE.names == ("found", "offset", "length", "compression", "uncompressed_length")
    assert diskhash.RESULT_DTYPE.itemsize == 24
    assert diskhash.META_DTYPE.names == ("offset", "length", "compression", "uncompressed_length")
    assert diskhash.META_DTYPE.itemsize == 24
    for dt in (diskhash.KEY_DTYPE, diskhash.RESULT_DTYPE, diskhash.META_DTYPE):
        assert all(dt.fields[n][0].byteorder in "<|=" for n in dt.names)


def test_batch_calls_match_single_calls_across_grows_and_deletes(index_path):
    rng = random.Random(41)
    wide = [rng.getrandbits(128) for _ in range(6000)]
    narrow = [rng.getrandbits(64) for _ in range(6000)] + [0, 1, U64, 1 << 64, (1 << 128) - 1]
    absent = [rng.getrandbits(128) for _ in range(2000)] + [rng.getrandbits(64) for _ in range(2000)]
    probe_keys = wide + narrow + absent
    rng.shuffle(probe_keys)
    with DiskHashIndex(index_path) as idx:
        assert_same_as_single_calls(idx, probe_keys)                 # empty table: all misses
        # Half by single inserts, half by batches of varied sizes: each grows the table.
        for k in wide[:3000] + narrow[:3000]:
            idx.insert(k, record(k))
        slots_before = idx.num_slots
        rest = wide[3000:] + narrow[3000:]
        for lo, hi in ((0, 1), (1, 700), (700, 4000), (4000, len(rest))):
            idx.insert_many(key_array(rest[lo:hi]), meta_array(rest[lo:hi]))
        assert idx.num_slots > slots_before
        assert len(idx) == len(set(wide + narrow))
        for k in wide + narrow:
            assert idx.get(k) == record(k)
        assert_same_as_single_calls(idx, probe_keys)
        for k in wide[::3] + narrow[::5]:
            idx.delete(k)
        assert_same_as_single_calls(idx, probe_keys)
        idx.verify()


def test_insert_many_equals_sequential_inserts_duplicates_last_wins(tmp_path):
    rng = random.Random(5)
    keys = [rng.getrandbits(rng.choice((16, 64, 128))) for _ in range(5000)]
    keys += keys[:500]                                   # duplicates inside the batch
    recs = meta_array(keys)
    recs["offset"][-500:] += 1                           # ... whose later record must win
    with DiskHashIndex(tmp_path / "a.idx") as a, DiskHashIndex(tmp_path / "b.idx") as b:
        for i, k in enumerate(keys):
            r = recs[i]
            a.insert(k, PayloadMeta(k, int(r["offset"]), int(r["length"]), int(r["compression"]),
                                    int(r["uncompressed_length"])))
        b.insert_many(key_array(keys), recs)
        assert len(a) == len(b) == len(set(keys))
        assert dict(a.items()) == dict(b.items())
        assert b[keys[0]].offset == int(recs["offset"][0]) + 1
        b.verify()


@pytest.mark.parametrize("history", ["fresh", "emptied", "one_entry"])
def test_bulk_insert_into_an_empty_table(tmp_path, history):
    """A batch big enough to populate the whole map: the same entries as one
    insert at a time, for a new file, a table emptied by deletes (stale bytes
    behind empty tags) and one that still holds an entry; durable through
    save() and a reopen."""
    rng = random.Random(11)
    keys = [rng.getrandbits(128) for _ in range(20_000)]
    recs = meta_array(keys)
    path = tmp_path / "b.idx"
    with DiskHashIndex(path, capacity=len(keys)) as b, DiskHashIndex(tmp_path / "a.idx") as a:
        slots = b.stats().slots
        if history != "fresh":
            old = [rng.getrandbits(128) for _ in range(2000)]
            b.insert_many(key_array(old), meta_array(old))
            for k in old[1 if history == "one_entry" else 0:]:
                assert b.delete(k)
            assert len(b) == (1 if history == "one_entry" else 0)
            if history == "one_entry":
                a.insert(old[0], b[old[0]])
        assert len(keys) * 8 >= slots                  # the read-ahead + populate branch
        b.insert_many(key_array(keys), recs)
        for i, k in enumerate(keys):
            r = recs[i]
            a.insert(k, PayloadMeta(k, int(r["offset"]), int(r["length"]), int(r["compression"]),
                                    int(r["uncompressed_length"])))
        assert b.stats().slots == slots
        assert dict(b.items()) == dict(a.items())
        b.verify()
        b.save()
        want = dict(a.items())
    with DiskHashIndex(path) as b:
        assert dict(b.items()) == want
        b.verify()


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "u8", ">u8", "i2", "i8", ">i8"])
def test_every_integer_key_dtype_is_accepted(index_path, dtype):
    keys = list(range(0, 120, 3))
    with DiskHashIndex(index_path) as idx:
        idx.insert_many(np.array(keys, dtype=dtype), meta_array(keys))
        probe = np.array(range(120), dtype=dtype)
        assert np.array_equal(idx.contains_many(probe), [k in idx for k in range(120)])
        assert np.array_equal(idx.get_many(probe), expected_rows(idx, list(range(120))))
        assert [k for k in idx] and all(idx[k] == record(k) for k in keys)


def test_keys_may_be_a_list_or_a_strided_view(index_path):
    keys = list(range(1, 200))
    with DiskHashIndex(index_path) as idx:
        idx.insert_many(keys, meta_array(keys))
        wide = key_array(keys + [1 << 100])
        assert np.array_equal(idx.contains_many(wide[::2]), [k in idx for k in (keys + [1 << 100])[::2]])
        assert idx.contains_many([1, 2, 10**6]).tolist() == [True, True, False]


def test_empty_batches(index_path):
    with DiskHashIndex(index_path) as idx:
        res = idx.get_many(np.zeros(0, dtype=np.uint64))
        assert res.dtype == diskhash.RESULT_DTYPE and res.shape == (0,)
        assert idx.contains_many(np.zeros(0, dtype=diskhash.KEY_DTYPE)).dtype == np.bool_
        idx.insert_many(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=diskhash.META_DTYPE))
        assert len(idx) == 0


def _bad_batches():
    good_keys = np.arange(1, 11, dtype=np.uint64)
    good = np.zeros(10, dtype=diskhash.META_DTYPE)
    bad_comp = good.copy()
    bad_comp["compression"][-1] = 3
    neg = np.arange(1, 11, dtype=np.int64)
    neg[-1] = -5
    packed = np.zeros(10, dtype=[("offset", "<u8"), ("length", "<u4"), ("compression", "u1"),
                                 ("uncompressed_length", "<u4")])
    return [   # keys, records, exception, message; the first six are bad keys
        (good_keys.astype(np.float64), good, TypeError, "not dtype float64"),
        (good_keys.astype(object), good, TypeError, "not dtype object"),
        (np.ones(10, dtype=bool), good, TypeError, "not bool"),
        (np.zeros(10, dtype=[("lo", "<u8"), ("hi", ">u8")]), good, TypeError, "KEY_DTYPE"),
        (good_keys.reshape(2, 5), good, ValueError, "keys must be a 1-D array"),
        (neg, good, KeyRangeError, r"keys\[9\]: edge_id -5 is outside"),
        (good_keys, good[:9], ValueError, "10 keys but 9 records"),
        (good_keys, packed, TypeError, "META_DTYPE"),
        (good_keys, good.reshape(2, 5), ValueError, "records must be a 1-D array"),
        (good_keys, np.zeros(10, dtype=np.uint64), TypeError, "META_DTYPE"),
        (good_keys, bad_comp, ValueError, r"records\[9\]\.compression = 3"),
    ]


@pytest.mark.parametrize("keys,records,exc,words", _bad_batches())
def test_bad_batches_change_nothing(index_path, keys, records, exc, words):
    with DiskHashIndex(index_path) as idx:
        for k in range(100, 5000):          # near a grow: a half-done batch would show
            idx.insert(k, record(k))
        idx.save()
        before = index_path.read_bytes()
        with pytest.raises(exc, match=words):
            idx.insert_many(keys, records)
        assert index_path.read_bytes() == before
        assert len(idx) == 4900 and not any(k in idx for k in range(1, 11))
        if not (keys.dtype == np.uint64 and keys.ndim == 1):    # bad keys: lookups refuse them too
            with pytest.raises(exc, match=words):
                idx.get_many(keys)
            with pytest.raises(exc, match=words):
                idx.contains_many(keys)


def test_readonly_index_refuses_insert_many(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert_many([1, 2, 3], meta_array([1, 2, 3]))
    before = index_path.read_bytes()
    with DiskHashIndex(index_path, readonly=True) as idx:
        with pytest.raises(ReadOnlyIndexError):
            idx.insert_many([4], meta_array([4]))
        assert idx.contains_many([1, 2, 3, 4]).tolist() == [True, True, True, False]
        assert idx.get_many([2])[0]["offset"] == record(2).offset
    assert index_path.read_bytes() == before


def test_closed_index_raises_index_closed_error(index_path):
    idx = DiskHashIndex(index_path)
    idx.close()
    for call in (lambda: idx.get_many([1]), lambda: idx.contains_many([]),
                 lambda: idx.insert_many([1], meta_array([1])),
                 lambda: idx.insert_many([], meta_array([]))):
        with pytest.raises(IndexClosedError, match="closed"):
            call()


def test_capacity_presizes_so_insert_many_never_grows(index_path):
    rng = np.random.default_rng(2)
    n = 50_000
    keys = np.zeros(n, dtype=diskhash.KEY_DTYPE)
    keys["lo"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    keys["hi"] = np.arange(n, dtype=np.uint64)          # distinct keys
    recs = np.zeros(n, dtype=diskhash.META_DTYPE)
    recs["offset"] = np.arange(n)
    with DiskHashIndex(index_path, capacity=n) as idx:
        slots = idx.num_slots
        assert idx.capacity >= n
        idx.insert_many(keys, recs)
        assert idx.num_slots == slots and len(idx) == n
        idx.verify()
    other = index_path.with_name("grown.idx")
    with DiskHashIndex(other) as idx:
        idx.insert_many(keys, recs)                      # grows, once, to fit the batch
        assert len(idx) == n and idx.num_slots == slots
        assert np.array_equal(idx.get_many(keys)["offset"], recs["offset"])
        idx.verify()


@pytest.mark.parametrize("distance", [0, 1, 7, 64])
def test_prefetch_distance_does_not_change_answers(index_path, distance):
    rng = random.Random(distance)
    keys = [rng.getrandbits(128) for _ in range(9000)]
    probe_keys = keys[::2] + [rng.getrandbits(128) for _ in range(3000)]
    old = _batch.prefetch_distance()
    try:
        _batch.set_prefetch_distance(distance)
        with DiskHashIndex(index_path) as idx:
            idx.insert_many(key_array(keys), meta_array(keys))
            assert_same_as_single_calls(idx, probe_keys)
            idx.verify()
    finally:
        _batch.set_prefetch_distance(old)
    with pytest.raises(ValueError, match="prefetch distance"):
        _batch.set_prefetch_distance(65)


def test_get_many_readers_while_another_thread_inserts_and_grows(index_path):
    rng = random.Random(8)
    keys = [rng.getrandbits(128) for _ in range(120_000)]
    karr = key_array(keys)
    recs = meta_array(keys)
    absent = key_array([rng.getrandbits(128) for _ in range(500)])
    published = [0]
    stop = threading.Event()
    errors: list[str] = []
    batches = [0, 0]

    with DiskHashIndex(index_path) as idx:
        start_slots = idx.num_slots

        def reader(n: int) -> None:
            r = np.random.default_rng(n)
            while not stop.is_set() and not errors:
                upto = published[0]
                if not upto:
                    continue
                pick = r.integers(0, upto, 2000)
                got = idx.get_many(karr[pick])
                if not got["found"].all():
                    errors.append(f"published key missing at {pick[~got['found']][:3]}")
                for field in ("offset", "length", "compression", "uncompressed_length"):
                    if not np.array_equal(got[field], recs[field][pick]):
                        errors.append(f"wrong {field}")
                if idx.contains_many(absent).any():
                    errors.append("phantom key")
                batches[n] += 1

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        try:
            pos = 0
            for size in [1, 10, 3000] + [7000] * 30:
                end = min(pos + size, len(keys))
                if size == 10:                  # single inserts interleave with batches
                    for k in keys[pos:end]:
                        idx.insert(k, record(k))
                else:
                    idx.insert_many(karr[pos:end], recs[pos:end])
                published[0] = pos = end
                if pos == len(keys):
                    break
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        assert idx.num_slots >= start_slots * 32           # it grew meanwhile
        assert all(batches)
        assert len(idx) == len(keys)
        idx.verify()


def test_damaged_tables_raise_corrupt_index_error(index_path):
    from diskhash._format.sochidx2 import home_slot

    fill_every_slot(index_path)
    with DiskHashIndex(index_path) as idx:
        for call in (lambda: idx.get_many([1]), lambda: idx.contains_many([1]),
                     lambda: idx.insert_many([1], meta_array([1]))):
            with pytest.raises(CorruptIndexError, match="no empty slot in 4096 slots"):
                call()
    index_path.unlink()
    with DiskHashIndex(index_path) as idx:
        idx.insert(77, record(77))
        seed = idx.seed
    data = bytearray(index_path.read_bytes())
    slot = home_slot(77, seed, 4096)
    data[slot_offset(slot) + SLOT_FIELD["compression"]] = 9                             # unknown compression byte
    bad = home_slot(78, seed, 4096)
    assert bad != slot
    data[slot_offset(bad) + SLOT_FIELD["tag"]] = 0x07                              # bad tag
    index_path.write_bytes(bytes(data))
    with DiskHashIndex(index_path, readonly=True) as idx:
        with pytest.raises(CorruptIndexError, match="unknown compression byte 9"):
            idx.get_many([5, 77])
        assert idx.contains_many([77]).tolist() == [True]     # like `77 in idx`
        with pytest.raises(CorruptIndexError, match=f"slot {bad}: bad tag 0x07"):
            idx.get_many(np.array([78], dtype=np.uint64))
        with pytest.raises(CorruptIndexError, match="bad tag 0x07"):
            idx.contains_many(key_array([78]))


NO_NUMPY = r"""
import sys
sys.modules["numpy"] = None          # import numpy now raises ImportError
import os, tempfile
import diskhash
from diskhash import DiskHashIndex, PayloadMeta
path = os.path.join(tempfile.mkdtemp(), "x.idx")
with DiskHashIndex(path) as idx:
    idx.insert(5, PayloadMeta(5, 1, 2, 0, 3))
    assert idx[5] == (5, 1, 2, 0, 3) and 5 in idx and len(idx) == 1
    for what, call in [("dtype", lambda: diskhash.KEY_DTYPE), ("dtype", lambda: diskhash.META_DTYPE),
                       ("get_many", lambda: idx.get_many([5])),
                       ("insert_many", lambda: idx.insert_many([5], [])),
                       ("get_many again", lambda: idx.get_many([5]))]:
        try:
            call()
        except ImportError as exc:
            assert 'diskhash-sochidx (pip install ".[numpy]"' in str(exc), str(exc)
        else:
            raise SystemExit(what + " did not raise ImportError")
try:
    diskhash.NOT_A_NAME
except AttributeError:
    pass
print("ok")
"""


def test_without_numpy_import_works_and_batch_calls_say_how_to_get_it(tmp_path):
    # cwd: "-c" puts the working directory first on sys.path (not the source tree).
    result = subprocess.run([sys.executable, "-c", NO_NUMPY], capture_output=True, text=True,
                            timeout=60, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def test_insert_many_that_cannot_grow_inserts_nothing(index_path, monkeypatch):
    """The grow a batch needs happens before its first write: on a full disk
    the batch raises with nothing inserted and the index as it was."""
    import errno
    import os

    from diskhash._fs import files as _files

    base = list(range(1, 3001))                      # 3000 of 3072 entries: room for 72
    with DiskHashIndex(index_path) as idx:
        idx.insert_many(key_array(base), meta_array(base))
        assert idx.num_slots == 4096
        batch = list(range(10_000, 10_200)) + base[:50]    # 200 new keys: needs a grow

        def no_space(fd, size):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(_files, "_allocate", no_space)
        changed = meta_array(batch)
        changed["offset"] += 1
        with pytest.raises(OSError) as info:
            idx.insert_many(key_array(batch), changed)
        assert info.value.errno == errno.ENOSPC
        assert idx.num_slots == 4096 and len(idx) == 3000
        assert_same_as_single_calls(idx, base + batch)
        assert not idx.contains_many(key_array(batch[:200])).any()
        assert all(idx[k] == record(k) for k in base[:50])          # overwrites not applied
        monkeypatch.undo()
        idx.insert_many(key_array(batch), changed)                  # space again: it all goes in
        assert idx.num_slots == 8192 and len(idx) == 3200
        idx.verify()


def test_insert_many_of_present_keys_does_not_grow(index_path):
    """Re-inserting keys already stored needs no room: counted as present, not new."""
    keys = list(range(1, 3001))
    with DiskHashIndex(index_path) as idx:
        idx.insert_many(key_array(keys), meta_array(keys))
        again = meta_array(keys)
        again["length"] += 5
        idx.insert_many(key_array(keys), again)
        assert idx.num_slots == 4096 and len(idx) == 3000
        assert idx[17].length == record(17).length + 5
        idx.verify()


@pytest.mark.parametrize(("keys", "named"), [
    (None, "not NoneType"), ({1: 2}, "not dict"), ((k for k in range(3)), "not generator"),
    ([1, None], "a NoneType among them"), ([1, uuid.UUID(int=2)], "a UUID among them"),
])
def test_batch_keys_that_are_not_ids_are_named(index_path, keys, named):
    # These all said "ids of 2**64 and above go in a diskhash.KEY_DTYPE array".
    """A hostile pass over the index, its files and the CLI found this."""
    with DiskHashIndex(index_path) as idx:
        for call in (idx.get_many, idx.contains_many):
            with pytest.raises(TypeError, match=named) as info:
                call(keys)
            assert "2**64 and above" not in str(info.value)


def test_batch_keys_of_2_64_and_above_still_point_at_key_dtype(index_path):
    """A hostile pass over the index, its files and the CLI found this."""
    with DiskHashIndex(index_path) as idx, pytest.raises(TypeError, match="KEY_DTYPE"):
        idx.get_many([1, 2**64])


def test_insert_many_meeting_a_damaged_slot_changes_nothing(index_path):
    """A hostile pass found this: the API keeps its contracts at its edges."""
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
            idx.insert_many(keys, metas_at([11, 12, 13, 14, 15]))
        assert len(idx) == 10
        assert idx.get_many(np.array(fresh, dtype=np.uint64))["found"].tolist() == [False] * 3
        assert idx[3] == lz4_record(3)
    assert index_path.read_bytes() == before      # slot for slot, header included


def test_insert_many_whose_own_writes_lead_into_damage_changes_nothing(index_path):
    # Both keys' probes in the stored table stop at the empty slot `home`;
    # only after the first is written does the second walk on into the damage.
    """A hostile pass found this: the API keeps its contracts at its edges."""
    seed = _build(index_path)
    home = _free_run(seed, 2, set())
    _damage_slot(index_path, home + 1)
    before = index_path.read_bytes()
    with DiskHashIndex(index_path) as idx:
        first = _key_with_home(seed, home, set())
        second = _key_with_home(seed, home, {first})
        keys = np.array([5, first, 6, second, 7], dtype=np.uint64)
        with pytest.raises(CorruptIndexError, match=f"slot {home + 1}: bad tag 0x07"):
            idx.insert_many(keys, metas_at([21, 22, 23, 24, 25]))
        assert len(idx) == 10
        assert first not in idx
        assert [idx[k] for k in (5, 6, 7)] == [lz4_record(5), lz4_record(6), lz4_record(7)]
    assert index_path.read_bytes() == before


def test_insert_many_after_a_rolled_back_batch_still_works(index_path):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    seed = _build(index_path)
    bad = _free_run(seed, 1, set())
    _damage_slot(index_path, bad)
    with DiskHashIndex(index_path) as idx:
        victim = _key_with_home(seed, bad, set())
        with pytest.raises(CorruptIndexError):
            idx.insert_many(np.array([4000, victim], dtype=np.uint64), metas_at([1, 2]))
        assert 4000 not in idx
        idx.insert_many(np.array([4000], dtype=np.uint64), metas_at([31]))
        assert idx[4000] == (4000, 31, 5, Compression.LZ4, 9) and len(idx) == 11


@pytest.mark.parametrize("keys", [[2**64], [1, 2**100], [2**64 + 5, 3]])
def test_get_many_of_ids_beyond_64_bits_names_key_dtype(index_path, keys):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    with DiskHashIndex(index_path) as idx:
        wanted = r"ids of 2\*\*64 and above go in a diskhash\.KEY_DTYPE array"
        for call in (idx.get_many, idx.contains_many):
            with pytest.raises(TypeError, match=wanted):
                call(keys)
        with pytest.raises(TypeError, match=wanted):
            idx.insert_many(keys, metas_at([0] * len(keys)))
        assert len(idx) == 0
