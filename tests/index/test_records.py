"""PayloadMeta fields at the API's edges: out-of-range fields name their range,
negative ones are ``OverflowError``, numpy integers are accepted wherever ints
are and checked like them, and get_many's rows round-trip into records."""

from __future__ import annotations

import numpy as np
import pytest

from diskhash import (
    Compression,
    DiskHashIndex,
    PayloadMeta,
)


@pytest.mark.parametrize("field", ["length", "uncompressed_length"])
@pytest.mark.parametrize("value", [-1, 2**32, 2**64, -(2**70)])
def test_u32_fields_name_the_u32_range(field, value):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    fields = {"edge_id": 1, "offset": 0, "length": 0, "compression": 0, "uncompressed_length": 0}
    fields[field] = value
    with pytest.raises(OverflowError, match=rf"PayloadMeta\.{field} = {value} is outside \[0, 2\*\*32\)"):
        PayloadMeta(**fields)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_offset_names_the_u64_range(value):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    with pytest.raises(OverflowError, match=r"PayloadMeta\.offset = .* is outside \[0, 2\*\*64\)"):
        PayloadMeta(1, value, 0, 0, 0)


@pytest.mark.parametrize("int_type", [np.uint8, np.uint16, np.uint32, np.uint64,
                                      np.int8, np.int32, np.int64])
def test_numpy_integers_are_accepted_as_record_fields(int_type):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    m = PayloadMeta(int_type(5), int_type(1), int_type(2), int_type(1), int_type(3))
    assert m == (5, 1, 2, Compression.LZ4, 3)
    assert [type(x) for x in m] == [int, int, int, Compression, int]


@pytest.mark.parametrize("bad, exc", [(np.int64(-1), OverflowError), (np.uint64(2**64 - 1), None),
                                      (np.bool_(True), TypeError), (np.float64(1.0), TypeError),
                                      (1.0, TypeError), ("1", TypeError), (None, TypeError)])
def test_numpy_field_values_are_checked_like_ints(bad, exc):
    """A hostile pass found this: the API keeps its contracts at its edges."""
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
    """A hostile pass found this: the API keeps its contracts at its edges."""
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


@pytest.mark.parametrize("field,index", [("edge_id", 0), ("offset", 1), ("length", 2),
                                         ("uncompressed_length", 4)])
@pytest.mark.parametrize("value", [-1, -(2**40), -(2**70)])
def test_negative_record_fields_raise_overflow_error(field, index, value):
    """A hostile pass found this: every call keeps its contract."""
    args = [5, 1, 2, 0, 3]
    args[index] = value
    with pytest.raises(OverflowError):
        PayloadMeta(*args)
    with pytest.raises(OverflowError):
        PayloadMeta(**dict(zip(PayloadMeta._fields, args)))


@pytest.mark.parametrize("args, kwargs, message", [
    ((1, 2, 3), {}, "PayloadMeta.__new__() missing 2 required positional arguments: "
                    "'compression' and 'uncompressed_length'"),
    ((), {}, "PayloadMeta.__new__() missing 5 required positional arguments"),
    ((1, 2, 3, 0, 3, 9), {}, "PayloadMeta.__new__() takes 6 positional arguments but 7 were given"),
    ((1, 2, 3, 0, 3), {"bogus": 1}, "PayloadMeta.__new__() got an unexpected keyword argument 'bogus'"),
    ((1, 2, 3, 0, 3), {"edge_id": 1}, "PayloadMeta.__new__() got multiple values for argument 'edge_id'"),
    ((), {"edge_id": 1, "offset": 2}, "PayloadMeta.__new__() missing 3 required positional arguments"),
])
def test_payload_meta_argument_errors_name_the_class(args, kwargs, message):
    """A wrong number or name of arguments says ``PayloadMeta.__new__()`` and
    which fields are missing, as before the types module stopped importing
    the index layer (the rewrite's compiled ``__new__`` said
    ``new_payload_meta() takes exactly 6 positional arguments (4 given)``)."""
    with pytest.raises(TypeError) as info:
        PayloadMeta(*args, **kwargs)
    assert str(info.value).startswith(message)


def test_payload_meta_signature_names_its_fields_with_types():
    """``inspect.signature(PayloadMeta)`` (help(), IDEs) shows the five fields and their types."""
    import inspect

    sig = inspect.signature(PayloadMeta)
    assert list(sig.parameters) == ["edge_id", "offset", "length", "compression", "uncompressed_length"]
    assert "SupportsIndex" in str(sig.parameters["offset"].annotation)
    assert PayloadMeta(1, 2, 3, 1, 4) == (1, 2, 3, 1, 4)
    assert PayloadMeta(edge_id=1, offset=2, length=3, compression=0, uncompressed_length=3).offset == 2
