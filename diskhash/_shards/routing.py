"""Which shard of a sharded set holds a key: one hash, for one key or a numpy batch.

The routing hash is MurmurHash3's 64-bit finalizer (``fmix64``) chained over
the key's two 64-bit halves, keyed by the set's routing seed::

    route(lo, hi, seed) = fmix64(fmix64(lo ^ seed) ^ hi)
    shard(key)          = ((route >> 32) * shards) >> 32        # in [0, shards)

It is deliberately not the table hash of SOCHIDX2 (a SplitMix64 finalizer,
``mix(lo ^ seed) ^ mix(hi ^ seed * golden)``), and its seed is drawn apart
from every shard's table seed: if the two hashes were related, the keys one
shard receives would share bits of their table hash and crowd into part of
that shard's table.  The shard is taken from the high 32 bits (Lemire's
multiply-shift range reduction, no division), the table's home slot from the
low bits of the other hash.

``shard_of`` (one key, pure Python) and ``shards_of`` (a numpy array, no
Python loop per key) compute the same function; tests/shards/test_routing.py
checks them against each other.  numpy is imported only by the batch path.
"""

from __future__ import annotations

import operator
import uuid
from typing import Any

from diskhash.errors import KeyRangeError

__all__ = [
    "MAX_SHARDS",
    "ROUTING_HASH",
    "group_by_shard",
    "key_array",
    "key_halves",
    "shard_of",
    "shards_of",
]

#: The name the manifest records for this routing function (one place).
ROUTING_HASH = "fmix64-chain-v1"
#: Shard counts above this are refused (the reduction needs shards < 2**32;
#: a set of more than 65536 shards is a configuration mistake, not a plan).
MAX_SHARDS = 65536

_M64 = (1 << 64) - 1
_C1 = 0xFF51AFD7ED558CCD
_C2 = 0xC4CEB9FE1A85EC53


def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * _C1) & _M64
    x ^= x >> 33
    x = (x * _C2) & _M64
    x ^= x >> 33
    return x


def key_halves(key: Any) -> tuple[int, int]:
    """``(lo, hi)`` of an edge id, with the index's rules and messages.

    ``key``: an int in [0, 2**128), a ``uuid.UUID`` or anything with
    ``__index__`` (numpy ints) — what ``DiskHashIndex`` accepts.  Raises
    ``TypeError`` (str, bytes, float, bool, None ...) or ``KeyRangeError``
    (out of range: a ``ValueError`` and an ``OverflowError``), so a bad key fails before it reaches any shard.
    """
    if isinstance(key, uuid.UUID):
        k = key.int
    elif isinstance(key, bool):
        raise TypeError(f"edge_id must be an int in [0, 2**128) or a uuid.UUID, not bool ({key!r})")
    else:
        try:
            k = operator.index(key)
        except TypeError:
            raise TypeError(
                f"edge_id must be an int in [0, 2**128) or a uuid.UUID, "
                f"not {type(key).__name__}") from None
    if k < 0 or k >> 128:
        raise KeyRangeError(k)
    return k & _M64, k >> 64


def shard_of(key: Any, seed: int, shards: int) -> int:
    """The shard in ``[0, shards)`` that holds ``key`` under routing ``seed``."""
    lo, hi = key_halves(key)
    h = _fmix64(_fmix64(lo ^ seed) ^ hi)
    return ((h >> 32) * shards) >> 32


def key_array(keys: Any) -> Any:
    """``keys`` as a contiguous ``diskhash.KEY_DTYPE`` array (a copy when needed).

    Accepts a numpy array of ``KEY_DTYPE`` or of non-negative integers (ids
    below 2**64), converted without a Python loop, or any other sequence of
    keys (ints, UUIDs, numpy ints; an object array too), converted one by one with
    ``key_halves``'s checks.  Raises ``TypeError``/``KeyRangeError``/
    ``ValueError`` naming the offending position.
    """
    from diskhash._index.dtypes import KEY_DTYPE, np

    if isinstance(keys, np.ndarray) and keys.dtype.kind != "O":
        if keys.ndim != 1:
            raise ValueError(f"keys must be a 1-D array, got {keys.ndim} dimensions")
        dt = keys.dtype
        if dt.names is not None:
            if dt != KEY_DTYPE:
                raise TypeError(
                    f"keys of structured dtype {dt} must use diskhash.KEY_DTYPE "
                    "(fields lo, hi: little-endian u8 each)")
            return np.ascontiguousarray(keys)
        if dt.kind == "b":
            raise TypeError("keys must be unsigned integers (ids), not bool")
        if dt.kind == "i":
            neg = np.flatnonzero(keys < 0)
            if neg.size:
                k = int(neg[0])
                raise KeyRangeError(int(keys[k]), f"keys[{k}]")
        elif dt.kind != "u":
            raise TypeError(
                f"keys must be an unsigned integer array (ids < 2**64) or a diskhash.KEY_DTYPE "
                f"array (full 128-bit ids), not dtype {dt}")
        out = np.zeros(keys.shape[0], dtype=KEY_DTYPE)
        out["lo"] = keys.astype(np.uint64, copy=False)
        return out
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not hasattr(keys, "__len__"):
        raise TypeError(f"keys must be a sequence of edge ids or a numpy array, "
                        f"not {type(keys).__name__}")
    if isinstance(keys, np.ndarray) and keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D array, got {keys.ndim} dimensions")
    out = np.empty(len(keys), dtype=KEY_DTYPE)
    lo = out["lo"]
    hi = out["hi"]
    for i, key in enumerate(keys):
        try:
            lo[i], hi[i] = key_halves(key)
        except KeyRangeError as exc:
            raise KeyRangeError(exc.key, f"keys[{i}]") from None
        except TypeError as exc:
            raise TypeError(f"keys[{i}]: {exc}") from None
    return out


def _fmix64_array(x: Any) -> Any:
    from diskhash._index.dtypes import np

    x = x ^ (x >> np.uint64(33))
    x *= np.uint64(_C1)          # uint64 arrays wrap silently (mod 2**64)
    x ^= x >> np.uint64(33)
    x *= np.uint64(_C2)
    x ^= x >> np.uint64(33)
    return x


def shards_of(keys: Any, seed: int, shards: int) -> Any:
    """The shard of every key of a ``KEY_DTYPE`` array (``uint32`` array, same order).

    Pure numpy over the two ``uint64`` halves: no Python loop per key.
    """
    from diskhash._index.dtypes import np

    h = _fmix64_array(keys["lo"] ^ np.uint64(seed))
    h ^= keys["hi"]
    h = _fmix64_array(h)
    h >>= np.uint64(32)
    h *= np.uint64(shards)
    h >>= np.uint64(32)
    return h.astype(np.uint32)


def group_by_shard(shard_ids: Any, shards: int) -> tuple[Any, Any]:
    """``(order, bounds)``: ``order`` sorts the keys by shard (stable, so each
    shard's keys keep their relative order) and shard ``s``'s keys are
    ``order[bounds[s]:bounds[s + 1]]``."""
    from diskhash._index.dtypes import np

    order = np.argsort(shard_ids, kind="stable")
    bounds = np.zeros(shards + 1, dtype=np.int64)
    np.cumsum(np.bincount(shard_ids, minlength=shards), out=bounds[1:])
    return order, bounds
