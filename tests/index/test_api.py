"""The synchronous API: every promise docs/reference/api.md makes about DiskHashIndex."""

from __future__ import annotations

import gc
import os
import pickle
import uuid

import numpy as np
import pytest
from helpers.records import record
from helpers.spec_model import file_size

import diskhash
from diskhash import (
    Compression,
    DiskHashError,
    DiskHashIndex,
    IndexClosedError,
    PayloadMeta,
    ReadOnlyIndexError,
)


def lz4_record(key: int, offset: int = 1) -> PayloadMeta:
    return PayloadMeta(key, offset, 2, Compression.LZ4, 3)


# -- PayloadMeta ---------------------------------------------------------------


def test_payload_meta_is_a_tuple_record():
    m = PayloadMeta(5, 1, 2, Compression.ZSTD, 3)
    assert m == (5, 1, 2, 2, 3)
    edge_id, offset, length, comp, ulen = m
    assert (edge_id, offset, length, comp, ulen) == (5, 1, 2, Compression.ZSTD, 3)
    assert m.compression is Compression.ZSTD
    assert PayloadMeta(5, 1, 2, 1, 3).compression is Compression.LZ4
    assert m._fields == ("edge_id", "offset", "length", "compression", "uncompressed_length")
    with pytest.raises(AttributeError):
        m.offset = 3  # type: ignore[misc]
    assert hash(m) == hash((5, 1, 2, 2, 3))
    assert pickle.loads(pickle.dumps(m)) == m
    assert m._replace(offset=9) == (5, 9, 2, 2, 3)
    assert PayloadMeta(edge_id=1, offset=2, length=3, compression=0, uncompressed_length=4) == (1, 2, 3, 0, 4)


def test_payload_meta_accepts_uuid_edge_id():
    u = uuid.uuid4()
    assert PayloadMeta(u, 0, 0, 0, 0).edge_id == u.int


@pytest.mark.parametrize(
    "args,exc,words",
    [
        ((-1, 0, 0, 0, 0), OverflowError, "edge_id"),
        ((2**128, 0, 0, 0, 0), OverflowError, "edge_id"),
        ((True, 0, 0, 0, 0), TypeError, "bool"),
        (("7", 0, 0, 0, 0), TypeError, "edge_id"),
        ((1.0, 0, 0, 0, 0), TypeError, "edge_id"),
        ((1, -1, 0, 0, 0), OverflowError, "offset"),
        ((1, 2**64, 0, 0, 0), OverflowError, "offset"),
        ((1, 0, 2**32, 0, 0), OverflowError, "length"),
        ((1, 0, -5, 0, 0), OverflowError, "length"),
        ((1, 0, 0, 0, 2**32), OverflowError, "uncompressed_length"),
        ((1, 0, 0, 3, 0), ValueError, "compression"),
        ((1, 0, 0, -1, 0), ValueError, "compression"),
        ((1, 0, 0, "lz4", 0), TypeError, "compression"),
        ((1, 0.5, 0, 0, 0), TypeError, "offset"),
        ((1, False, 0, 0, 0), TypeError, "offset"),
    ],
)
def test_payload_meta_rejects_bad_fields(args, exc, words):
    with pytest.raises(exc, match=words):
        PayloadMeta(*args)


def test_payload_meta_limits_are_inclusive():
    m = PayloadMeta(2**128 - 1, 2**64 - 1, 2**32 - 1, 2, 2**32 - 1)
    assert m == (2**128 - 1, 2**64 - 1, 2**32 - 1, 2, 2**32 - 1)


# -- basic mapping behaviour -----------------------------------------------------


def test_insert_get_contains_len(index_path):
    with DiskHashIndex(index_path) as idx:
        assert len(idx) == 0
        assert idx.get(1) is None
        assert idx.get(1, "dflt") == "dflt"
        assert (1 in idx) is False
        idx.insert(1, record(1))
        assert idx.get(1) == record(1)
        assert idx[1] == record(1)
        assert (1 in idx) is True
        assert len(idx) == 1
        with pytest.raises(KeyError):
            idx[2]


def test_overwrite_keeps_count(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(7, record(7, offset=1))
        idx.insert(7, record(7, offset=2, compression=Compression.NONE))
        assert len(idx) == 1
        assert idx[7] == (7, 2, record(7).length, 0, record(7).uncompressed_length)


def test_keys_of_every_width_and_uuid(index_path):
    keys = [0, 1, 2**32, 2**63, 2**64 - 1, 2**64, 2**100 + 3, 2**128 - 1]
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with DiskHashIndex(index_path) as idx:
        for k in keys:
            idx.insert(k, record(k, offset=k & 0xFFFF))
        idx.insert(u, record(u))
        for k in keys:
            assert idx[k] == tuple(record(k, offset=k & 0xFFFF))
        assert idx[u] == idx[u.int] == record(u.int)
        assert u in idx
        assert idx[u].edge_id == u.int and type(idx[u].edge_id) is int
        assert set(idx) == set(keys) | {u.int}


def test_int_subclass_and_index_protocol_keys(index_path):
    class MyInt(int):
        pass

    class Indexable:
        def __index__(self):
            return 99

    with DiskHashIndex(index_path) as idx:
        idx.insert(MyInt(5), record(5))
        assert idx[5] == record(5)
        assert MyInt(5) in idx
        idx.insert(Indexable(), record(99))
        assert idx[99].edge_id == 99


def test_iteration_views(index_path):
    with DiskHashIndex(index_path) as idx:
        expected = {k: record(k, offset=k) for k in range(0, 5000, 3)}
        for k, m in expected.items():
            idx.insert(k, m)
        assert sorted(idx) == sorted(expected)
        assert sorted(idx.keys()) == sorted(expected)
        assert sorted(idx.values()) == sorted(expected.values())
        assert dict(idx.items()) == expected


def test_iteration_detects_size_change(index_path):
    with DiskHashIndex(index_path) as idx:
        for k in range(3000):
            idx.insert(k, record(k))
        it = iter(idx)
        next(it)
        idx.insert(10**9, record(10**9))
        with pytest.raises(RuntimeError, match="changed size"):
            list(it)
        # Overwrites do not change the key set: iteration goes on.
        it = iter(idx)
        next(it)
        idx.insert(5, record(5, offset=1))
        assert len(list(it)) == len(idx) - 1


@pytest.mark.parametrize(
    "key,exc",
    [(-1, OverflowError), (2**128, OverflowError), (True, TypeError), (False, TypeError),
     ("1", TypeError), (1.5, TypeError), (None, TypeError), (b"\x01", TypeError)],
)
def test_bad_keys_are_rejected_everywhere(index_path, key, exc):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
        with pytest.raises(exc):
            idx.get(key)
        with pytest.raises(exc):
            _ = key in idx
        with pytest.raises(exc):
            idx[key]
        with pytest.raises(exc):
            idx.insert(key, (key, 0, 0, 0, 0))
        with pytest.raises(exc):
            idx.delete(key)
        assert len(idx) == 1 and idx[1] == record(1)


def test_meta_edge_id_must_match_key(index_path):
    with DiskHashIndex(index_path) as idx:
        with pytest.raises(ValueError, match="differs from the key"):
            idx.insert(1, record(2))
        assert len(idx) == 0 and 1 not in idx and 2 not in idx


@pytest.mark.parametrize(
    "bad,exc",
    [
        ((1, -1, 0, 0, 0), OverflowError),
        ((1, 2**64, 0, 0, 0), OverflowError),
        ((1, 0, 2**32, 0, 0), OverflowError),
        ((1, 0, 0, 7, 0), ValueError),
        ((1, 0, 0, 0, 2**32), OverflowError),
        ((1, 0, 0, 0), TypeError),
        ([1, 0, 0, 0, 0], TypeError),
        ("nope", TypeError),
        ((1, None, 0, 0, 0), TypeError),
    ],
)
def test_bad_records_are_rejected_and_nothing_changes(index_path, bad, exc):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
        with pytest.raises(exc):
            idx.insert(1, bad)
        assert idx[1] == record(1)
        assert len(idx) == 1


def test_plain_tuple_records_are_accepted(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(3, (3, 1, 2, 0, 4))
        assert idx[3] == PayloadMeta(3, 1, 2, Compression.NONE, 4)
        assert type(idx[3]) is PayloadMeta


# -- persistence, readonly, lifetime ---------------------------------------------


def test_reopen_keeps_everything_across_grows(index_path):
    n = 20_000
    with DiskHashIndex(index_path) as idx:
        for k in range(n):
            idx.insert(k * 2654435761, record(k * 2654435761, offset=k))
        assert idx.num_slots == 32768
    with DiskHashIndex(index_path, readonly=True) as idx:
        assert len(idx) == n
        for k in range(n):
            assert idx[k * 2654435761].offset == k
        idx.verify()


def test_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "c.idx"
    with DiskHashIndex(path) as idx:
        idx.insert(1, record(1))
    assert path.exists()


def test_readonly_never_writes(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
    before = index_path.read_bytes()
    st = os.stat(index_path)
    os.chmod(index_path, 0o444)
    try:
        with DiskHashIndex(index_path, readonly=True) as idx:
            assert idx.readonly
            assert idx[1] == record(1)
            for call in (lambda: idx.insert(2, record(2)), lambda: idx.delete(1),
                         lambda: idx.save(), lambda: idx.repair(), lambda: idx.reserve(10**6),
                         lambda: idx.pop(1)):
                with pytest.raises(ReadOnlyIndexError, match="read-only"):
                    call()
            assert idx[1] == record(1)
    finally:
        os.chmod(index_path, 0o644)
    assert index_path.read_bytes() == before
    assert os.stat(index_path).st_mtime_ns == st.st_mtime_ns


def test_readonly_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        DiskHashIndex(tmp_path / "missing.idx", readonly=True)
    assert not (tmp_path / "missing.idx").exists()


def test_readonly_error_is_a_diskhash_and_permission_error():
    assert issubclass(ReadOnlyIndexError, DiskHashError)
    assert issubclass(ReadOnlyIndexError, PermissionError)
    assert issubclass(IndexClosedError, DiskHashError)


def test_calls_after_close_raise_clearly(index_path):
    idx = DiskHashIndex(index_path)
    idx.insert(1, record(1))
    idx.close()
    idx.close()  # idempotent
    assert idx.closed
    calls = [lambda: idx.get(1), lambda: 1 in idx, lambda: idx[1], lambda: len(idx),
             lambda: idx.insert(2, record(2)), lambda: idx.delete(1), lambda: list(idx),
             lambda: idx.save(), lambda: idx.stats(), lambda: idx.verify(), lambda: idx.repair()]
    for call in calls:
        with pytest.raises(IndexClosedError, match="closed"):
            call()
    assert "closed" in repr(idx)


def test_iterator_after_close_raises(index_path):
    idx = DiskHashIndex(index_path)
    for k in range(2000):
        idx.insert(k, record(k))
    it = iter(idx)
    next(it)
    idx.close()
    with pytest.raises(IndexClosedError):
        list(it)


def test_unclosed_index_warns(index_path):
    idx = DiskHashIndex(index_path)
    idx.insert(1, record(1))
    with pytest.warns(ResourceWarning, match="unclosed DiskHashIndex"):
        del idx
        gc.collect()
    # The finaliser closed it cleanly: a writer can open it again at once.
    with DiskHashIndex(index_path) as idx:
        assert idx[1] == record(1)
        assert idx.recovery is None


def test_save_then_reopen(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
        idx.save()
        idx.insert(2, record(2))
    with DiskHashIndex(index_path) as idx:
        assert idx[1] == record(1) and idx[2] == record(2)


def test_stats(index_path):
    with DiskHashIndex(index_path) as idx:
        for k in range(1000):
            idx.insert(k, record(k))
        s = idx.stats()
        assert s.entries == 1000 and s.slots == 4096
        assert s.load_factor == pytest.approx(1000 / 4096)
        assert s.file_bytes == file_size(4096)
        assert s.longest_probe >= 1 and 1.0 <= s.mean_probe <= s.longest_probe


def test_reserve_grows_once(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
        idx.reserve(40_000)  # 40_000 / 32768 > 0.75 >= 40_000 / 65536
        slots = idx.num_slots
        assert slots == 65536 and idx[1] == record(1)
        idx.reserve(10)  # never shrinks
        assert idx.num_slots == slots
        with pytest.raises(ValueError):
            idx.reserve(-1)


def test_constructor_argument_errors(index_path):
    with pytest.raises(ValueError, match="capacity"):
        DiskHashIndex(index_path, capacity=-1)
    with pytest.raises(ValueError, match="timeout"):
        DiskHashIndex(index_path, timeout=-1)
    with pytest.raises(TypeError):
        DiskHashIndex(index_path, True)  # readonly is keyword-only
    assert not index_path.exists()


def test_index_cannot_be_pickled(index_path):
    with DiskHashIndex(index_path) as idx:
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(idx)


def test_public_api_is_exported():
    for name in ("DiskHashIndex", "PayloadMeta", "Compression", "DiskHashError",
                 "CorruptIndexError", "IndexLockedError", "IndexClosedError",
                 "ReadOnlyIndexError", "IndexStats", "RepairReport", "repair"):
        assert hasattr(diskhash, name), name


def test_item_assignment_is_a_typeerror_not_notimplemented(index_path):
    # ``idx[k] = meta`` raised NotImplementedError ("Subscript assignment not
    # supported"), Cython's answer when only __delitem__ is defined.
    """A hostile pass over the index, its files and the CLI found this."""
    with DiskHashIndex(index_path) as idx:
        key = 1
        with pytest.raises(TypeError, match="insert"):
            idx[key] = record(key)
        assert key not in idx
        idx.insert(1, record(1))
        del idx[1]
        assert len(idx) == 0


@pytest.mark.parametrize("what", ["keys", "values", "items"])
def test_iteration_stops_at_the_next_item_after_a_delete(index_path, what):
    # Iteration copies a chunk of slots ahead; a key deleted after the copy
    # was still yielded (and the RuntimeError came a chunk later).
    """A hostile pass over the index, its files and the CLI found this."""
    with DiskHashIndex(index_path) as idx:
        for k in range(100):
            idx.insert(k, record(k))
        order = list(idx.keys())
        it = iter(getattr(idx, what)())
        next(it)
        idx.delete(order[5])
        with pytest.raises(RuntimeError, match="changed size during iteration"):
            next(it)


def test_iteration_after_close_raises_at_the_next_item(index_path):
    """A hostile pass over the index, its files and the CLI found this."""
    from diskhash import IndexClosedError

    idx = DiskHashIndex(index_path)
    for k in range(100):
        idx.insert(k, record(k))
    it = iter(idx.items())
    next(it)
    idx.close()
    with pytest.raises(IndexClosedError):
        next(it)


def test_numpy_bool_is_refused_as_a_key_like_bool(index_path):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, lz4_record(1))
        for key in (True, np.bool_(True)):
            with pytest.raises(TypeError, match="not bool"):
                idx.get(key)
            with pytest.raises(TypeError, match="not bool"):
                idx.insert(key, lz4_record(1))
        assert len(idx) == 1
