"""Argument conversion for the store: keys (one, a sequence, a numpy array) to
ints or packed uint64 pairs, payloads to flat byte views, the sync policy and
the lock timeout -- each checked before anything is written, with the index's
rules and messages."""

from __future__ import annotations

import itertools
import operator
import uuid
from typing import Any

from diskhash._format import payload as fmt
from diskhash._types import PayloadMeta

__all__ = ["SYNC_POLICIES", "MASK64", "key_int", "key_list", "key_halves", "key_pairs", "pair_keys",
           "payload_view", "payload_list", "sync_interval", "check_timeout", "check_flag", "numpy_or_none"]

_U128 = 1 << 128
MASK64 = (1 << 64) - 1
#: The sync policies besides a number of milliseconds.
SYNC_POLICIES = ("save", "never")


def key_int(key: Any) -> int:
    """``key`` as an int in [0, 2**128): the index's rules and messages."""
    if type(key) is int and 0 <= key < _U128:
        return key
    if isinstance(key, uuid.UUID):
        return key.int
    return int(PayloadMeta(key, 0, 0, 0, 0).edge_id)


def payload_view(payload: Any, what: str = "payload") -> Any:
    """``payload`` as bytes or a flat byte view; TypeError/ValueError before any write."""
    if type(payload) is bytes:
        if len(payload) > fmt.MAX_LENGTH:
            raise ValueError(f"{what} is {len(payload)} bytes; the limit is {fmt.MAX_LENGTH} (u32)")
        return payload
    if isinstance(payload, (str, int, float)) or payload is None:
        raise TypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                        f"not {type(payload).__name__}")
    try:
        view = memoryview(payload)
    except TypeError:
        raise TypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                        f"not {type(payload).__name__}") from None
    if view.nbytes > fmt.MAX_LENGTH:
        raise ValueError(f"{what} is {view.nbytes} bytes; the limit is {fmt.MAX_LENGTH} (u32)")
    if not view.c_contiguous or view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = memoryview(view.tobytes())
    elif view.format != "B":
        view = view.cast("B")
    return view


def payload_list(payloads: Any, total: int) -> "list[Any]":
    """``put_many``'s payloads as a list of bytes or flat byte views, ``total``
    of them; TypeError/ValueError (naming ``payloads[i]``) before any write."""
    if isinstance(payloads, (str, bytes, bytearray, memoryview)) or payloads is None:
        raise TypeError("payloads must be a sequence of bytes-like objects")
    items: list[Any] = list(payloads)
    if total != len(items):
        raise ValueError(f"put_many got {total} edge ids but {len(items)} payloads")
    limit = fmt.MAX_LENGTH
    # all bytes, none too long: checked in two C-speed passes ("is", not a set of
    # the types: a metaclass's __eq__/__hash__ can make a bytes subclass with
    # a lying __len__ equal to bytes)
    if (all(map(operator.is_, map(type, items), itertools.repeat(bytes)))
            and max(map(len, items), default=0) <= limit):
        return items
    return [p if type(p) is bytes and len(p) <= limit else payload_view(p, f"payloads[{i}]")
            for i, p in enumerate(items)]


def sync_interval(sync: Any) -> "float | None":
    """Seconds between background saves for a number of ms, None for "save"/"never"."""
    if isinstance(sync, str):
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync must be 'save', 'never' or a number of milliseconds, not {sync!r}")
        return None
    if isinstance(sync, bool) or not isinstance(sync, (int, float)):
        raise TypeError(f"sync must be 'save', 'never' or a number of milliseconds, not {sync!r}")
    if not (sync > 0 and sync < 1e9):
        raise ValueError(f"sync interval must be a positive number of milliseconds, not {sync!r}")
    return float(sync) / 1000.0


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool; ``TypeError`` naming the argument otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def check_timeout(timeout: Any) -> "float | None":
    """None (wait forever) or seconds >= 0; ``inf`` means None.  NaN is refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    timeout = float(timeout)
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return None if timeout == float("inf") else timeout


def key_list(edge_ids: Any) -> list[int]:
    """Keys as validated ints: a sequence of keys, or a numpy KEY_DTYPE / unsigned int array."""
    dtype = getattr(edge_ids, "dtype", None)
    if dtype is not None and getattr(edge_ids, "ndim", 1) == 1:
        names = getattr(dtype, "names", None)
        if names and "lo" in names and "hi" in names:
            keys = [int(lo) | (int(hi) << 64) for lo, hi in
                    zip(edge_ids["lo"].tolist(), edge_ids["hi"].tolist())]
            if dtype["lo"].kind == "u" and dtype["hi"].kind == "u":
                return keys
            return [key_int(k) for k in keys]     # signed fields: refuse negatives here
        if dtype.kind == "u":
            return [int(k) for k in edge_ids.tolist()]
        if dtype.kind == "i":
            vals = edge_ids.tolist()
            return [key_int(k) for k in vals]
    if isinstance(edge_ids, (str, bytes)) or edge_ids is None:
        raise TypeError("edge_ids must be a sequence of keys or a numpy key array")
    return [key_int(k) for k in edge_ids]


def key_halves(edge_ids: Any) -> "tuple[Any, Any] | None":
    """A 1-D numpy array of unsigned ids or of KEY_DTYPE as contiguous ``uint64``
    (low halves, high halves); None for anything else (``key_list`` takes it)."""
    dtype = getattr(edge_ids, "dtype", None)
    if dtype is None or getattr(edge_ids, "ndim", 0) != 1:
        return None
    np = numpy_or_none()
    if np is None or not isinstance(edge_ids, np.ndarray):
        return None
    names = dtype.names
    if names:
        if "lo" in names and "hi" in names and dtype["lo"].kind == "u" and dtype["hi"].kind == "u":
            return (np.ascontiguousarray(edge_ids["lo"], dtype=np.uint64),
                    np.ascontiguousarray(edge_ids["hi"], dtype=np.uint64))
        return None
    if dtype.kind == "u":
        lo = np.ascontiguousarray(edge_ids, dtype=np.uint64)
        return lo, np.zeros(len(lo), dtype=np.uint64)
    return None


def key_pairs(edge_ids: Any) -> Any:
    """A 1-D numpy array of unsigned ids or of KEY_DTYPE as one contiguous
    ``uint64`` array of (low, high) pairs -- ``KEY_DTYPE``'s layout; None for
    anything else (``key_list`` takes it)."""
    np = numpy_or_none()
    if np is not None and np.ma.isMaskedArray(edge_ids):
        return None         # key_list: a masked key is refused, never written under its hidden value
    if np is not None and isinstance(edge_ids, np.ndarray) and edge_ids.ndim == 1:
        from diskhash._index import dtypes as _dtypes
        if edge_ids.dtype == _dtypes.KEY_DTYPE:     # already the layout: one copy (ours to keep)
            return np.array(edge_ids, dtype=_dtypes.KEY_DTYPE, order="C").view(np.uint64)
    halves = key_halves(edge_ids)
    if halves is None:
        return None
    lo, hi = halves
    pairs = np.empty(2 * len(lo), dtype=np.uint64)
    pairs[0::2] = lo
    pairs[1::2] = hi
    return pairs


def pair_keys(pairs: Any, start: int, stop: int) -> "list[int]":
    """Keys ``start`` to ``stop`` of a ``key_pairs`` array as ints."""
    lo = pairs[2 * start:2 * stop:2].tolist()
    hi = pairs[2 * start + 1:2 * stop:2].tolist()
    return [a | (b << 64) for a, b in zip(lo, hi)]


def numpy_or_none() -> Any:
    try:
        from diskhash._index import dtypes as _dtypes
    except ImportError:
        return None
    return _dtypes.np
