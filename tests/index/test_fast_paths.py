"""The single-call fast paths (digit-level int keys, PayloadMeta by vectorcall)
behave exactly like the general paths they shortcut."""

from __future__ import annotations

import enum
import random

import pytest
from helpers.processes import child_stdout

from diskhash import Compression, DiskHashIndex, PayloadMeta

# Every digit count of a CPython int up to 2**128 (30-bit digits), at its edges.
EDGES = sorted({v for b in (0, 1, 29, 30, 31, 59, 60, 61, 63, 64, 65, 89, 90, 91, 119, 120, 121, 127, 128)
                for v in (2**b - 1, 2**b, 2**b + 1) if 0 <= v < 2**128})


def test_key_conversion_at_every_digit_boundary(index_path):
    rng = random.Random(1)
    keys = EDGES + [rng.getrandbits(rng.randrange(1, 129)) for _ in range(2000)]
    with DiskHashIndex(index_path) as idx:
        for k in keys:
            idx.insert(k, PayloadMeta(k, k & 0xFFFF, 1, 0, 2))
        # The stored slots hold the right 128-bit value (read back through
        # iteration, which rebuilds each key from its slot's lo/hi words)...
        stored = set(keys)
        assert set(idx.keys()) == stored
        idx.verify()                    # every key reachable from its home slot (spec hash)
        for k in keys:
            # ... each found from its home slot, as the spec's hash places it ...
            assert idx.get(k) == (k, k & 0xFFFF, 1, 0, 2)
            assert k in idx
            # ... and a neighbour that is not stored is absent.
            if k + 1 not in stored and k + 1 < 2**128:
                assert (k + 1) not in idx


@pytest.mark.parametrize("key", [-1, -(2**64), -(2**127), 2**128, 2**128 + 1, 2**200, -(2**200)])
def test_out_of_range_keys_keep_their_errors(index_path, key):
    with DiskHashIndex(index_path) as idx:
        for call in (lambda: idx.get(key), lambda: key in idx, lambda: idx.insert(key, (key, 0, 0, 0, 0)),
                     lambda: PayloadMeta(key, 0, 0, 0, 0)):
            with pytest.raises(OverflowError, match=r"edge_id .* is outside \[0, 2\*\*128\)"):
                call()


def test_payload_meta_call_forms_all_agree():
    want = PayloadMeta(7, 1, 2, Compression.ZSTD, 3)
    assert type(want) is PayloadMeta and want.compression is Compression.ZSTD
    assert PayloadMeta(7, 1, 2, 2, 3) == want
    assert PayloadMeta(7, 1, 2, compression=2, uncompressed_length=3) == want
    assert PayloadMeta(edge_id=7, offset=1, length=2, compression=2, uncompressed_length=3) == want
    assert PayloadMeta(*[7, 1, 2, 2, 3]) == want
    assert PayloadMeta._make([7, 1, 2, 2, 3]) == want
    assert PayloadMeta.__new__(PayloadMeta, 7, 1, 2, 2, 3) == want
    with pytest.raises(TypeError):
        PayloadMeta(7, 1, 2)
    with pytest.raises(TypeError):
        PayloadMeta(7, 1, 2, 2, 3, 4)
    with pytest.raises(TypeError):
        PayloadMeta(7, 1, 2, 2, 3, edge_id=7)


def test_payload_meta_subclass_takes_the_ordinary_path():
    class Tagged(PayloadMeta):
        __slots__ = ()

    t = Tagged(7, 1, 2, 1, 3)
    assert type(t) is Tagged and t == (7, 1, 2, Compression.LZ4, 3)
    with pytest.raises(ValueError, match="compression"):
        Tagged(7, 1, 2, 9, 3)


def test_payload_meta_fields_are_plain_ints_with_the_given_values():
    class Flag(enum.IntEnum):
        A = 5

    class MyInt(int):
        pass

    big = 2**64 - 1
    m = PayloadMeta(MyInt(7), big, Flag.A, Compression.LZ4, MyInt(9))
    assert m == (7, big, 5, 1, 9)
    for field in (m.edge_id, m.offset, m.length, m.uncompressed_length):
        assert type(field) is int
    offset = 10**12
    assert PayloadMeta(1, offset, 2, 0, 3).offset is offset        # exact ints are reused as is


@pytest.mark.parametrize("compression", [3, -1, 2**63, 2**64, -(2**70)])
def test_compression_out_of_range_is_a_value_error(compression):
    with pytest.raises(ValueError, match=r"PayloadMeta.compression = .* is not a known compression"):
        PayloadMeta(1, 0, 0, compression, 0)


def test_payload_meta_validates_when_only_the_types_module_is_imported(tmp_path):
    """``diskhash._types`` imports nothing of the package; the index layer
    installs PayloadMeta's compiled constructor.  A program that imports just
    the types module still gets it (the package's ``__init__`` imports the
    index), for every call form."""
    out = child_stdout("""
        from diskhash._types import PayloadMeta
        for call in (lambda: PayloadMeta(1, 2, 3, 9, 3),
                     lambda: PayloadMeta(1, 2, 3, compression=9, uncompressed_length=3),
                     lambda: PayloadMeta._make([1, 2, 3, 9, 3])):
            try:
                call()
            except ValueError as exc:
                print("ValueError", "compression" in str(exc))
        print(type(PayloadMeta(edge_id=2, offset=2, length=3, compression=0,
                               uncompressed_length=3).compression).__name__)
    """, tmp_path)
    assert out.split("\n") == ["ValueError True"] * 3 + ["Compression", ""]
