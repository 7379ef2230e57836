"""The packed pieces build_store ships between processes (diskhash/_shards/packed.py):
one buffer per (partition, shard) holding keys, payload ends and payloads."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.records import random_key_array

from diskhash._shards import routing as _routing
from diskhash._shards.packed import bytes_payloads, pack_pieces, payload_list, unpack_piece


def records(n: int, seed: int = 0) -> tuple[np.ndarray, list[bytes]]:
    rng = np.random.default_rng(seed)
    keys = random_key_array(rng, n)
    sizes = rng.integers(0, 40, n)
    sizes[::7] = 0                                  # empty payloads among the others
    return keys, [rng.bytes(int(s)) for s in sizes]


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_pieces_round_trip_by_shard_in_order(shards: int) -> None:
    keys, payloads = records(500)
    sid = _routing.shards_of(keys, 12345, shards)
    order, bounds = _routing.group_by_shard(sid, shards)
    pieces = pack_pieces(keys, bytes_payloads(payloads, len(keys)), order, bounds)
    assert len(pieces) == shards and all(type(p) is bytes for p in pieces)
    seen = 0
    for s, piece in enumerate(pieces):
        got_keys, ends, blob = unpack_piece(piece)
        want = [i for i in range(len(keys)) if sid[i] == s]      # input order within a shard
        assert got_keys.tolist() == keys[want].tolist()
        got = payload_list(ends, blob)
        assert got == [payloads[i] for i in want]
        assert all(type(p) is bytes for p in got)
        seen += len(want)
    assert seen == len(keys)


def test_a_shard_with_no_records_is_an_empty_piece() -> None:
    keys, payloads = records(3)
    order, bounds = _routing.group_by_shard(np.zeros(3, dtype=np.uint32), 2)
    empty = pack_pieces(keys, bytes_payloads(payloads, 3), order, bounds)[1]
    k, ends, blob = unpack_piece(empty)
    assert len(k) == 0 and len(ends) == 0 and len(blob) == 0
    assert payload_list(ends, blob) == []
    only_empty = bytes_payloads([b"", b""], 2)
    order, bounds = _routing.group_by_shard(np.zeros(2, dtype=np.uint32), 1)
    k, ends, blob = unpack_piece(pack_pieces(keys[:2], only_empty, order, bounds)[0])
    assert payload_list(ends, blob) == [b"", b""]


def test_bytes_payloads_copies_bytes_like_values_by_their_bytes() -> None:
    wide = np.arange(3, dtype=np.uint16)
    given = np.array([b"ab", bytearray(b"cd"), memoryview(b"xyz")[1:], wide, b""], dtype=object)
    out = bytes_payloads(given, 5)
    assert out.tolist() == [b"ab", b"cd", b"yz", wide.tobytes(), b""]
    assert all(type(p) is bytes for p in out)
    assert type(given[1]) is bytearray            # the caller's array is left alone
    assert bytes_payloads((b"a", b"b"), 2).tolist() == [b"a", b"b"]


@pytest.mark.parametrize("payloads, error, match", [
    ([b"a", "text"], TypeError, r"payloads\[1\] must be bytes-like, not str"),
    ([None, b"a"], TypeError, r"payloads\[0\] must be bytes-like, not NoneType"),
    ([b"a", 5], TypeError, r"payloads\[1\] must be bytes-like, not int"),
    ([b"a"], ValueError, "2 edge_ids but 1 payloads"),
    (b"ab", TypeError, "sequence of bytes-like"),
])
def test_bytes_payloads_rejects_what_is_not_bytes(payloads, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        bytes_payloads(payloads, 2)


def test_damaged_pieces_are_refused() -> None:
    keys, payloads = records(4)
    order, bounds = _routing.group_by_shard(np.zeros(4, dtype=np.uint32), 1)
    piece = pack_pieces(keys, bytes_payloads(payloads, 4), order, bounds)[0]
    with pytest.raises(ValueError, match="too short for its header"):
        unpack_piece(piece[:5])
    with pytest.raises(ValueError, match="too short for 4 records"):
        unpack_piece(piece[:8 + 16 * 4])
    with pytest.raises(ValueError, match="payload offsets do not match"):
        unpack_piece(piece + b"x")
    with pytest.raises(ValueError, match="0 records carries 3"):
        unpack_piece(bytes(8) + b"abc")
