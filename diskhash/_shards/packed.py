"""Batches of (key, payload) records packed into one buffer, to ship between processes.

Dask serialises a list element by element (a frame per payload) and a tuple
of arrays as one frame each; one ``bytes`` object is one frame, copied once.
A *piece* is::

    count  u64 little-endian
    keys   count x 16 bytes (``KEY_DTYPE`` rows)
    ends   count x i64 little-endian: end offset of each payload in ``blob``
    blob   the payloads back to back

``pack_pieces`` cuts a batch into one piece per shard with a single copy of
the payload bytes (one ``bytes.join``); ``unpack_piece`` reads a piece back as
zero-copy numpy views, which the shard writers hand to
``diskhash._store.store.put_many_packed`` as they are; ``payload_list`` turns the
blob into ``bytes`` objects for the one writer that cannot (a store that
compresses: ``put_many`` encodes payload by payload).
``bytes_payloads`` checks an input column once and, when every payload is
already ``bytes`` (the common case), without a Python call per payload.
"""

from __future__ import annotations

from typing import Any

from diskhash._index.dtypes import KEY_DTYPE, np

__all__ = ["bytes_payloads", "pack_pieces", "payload_list", "unpack_piece"]

_COUNT = np.dtype("<u8")
_ENDS = np.dtype("<i8")
_HEADER = _COUNT.itemsize


def bytes_payloads(payloads: Any, count: int) -> Any:
    """``payloads`` (one per key) as a numpy object array of ``bytes``.

    Any bytes-like payload (bytearray, memoryview, numpy buffer) is copied to
    ``bytes`` — its bytes, in C order, so its length is its byte count.
    Raises ``TypeError`` naming the first payload that is not bytes-like
    (str, None, int ...) and ``ValueError`` if the counts differ.
    """
    if isinstance(payloads, (str, bytes, bytearray, memoryview)) or not hasattr(payloads, "__len__"):
        raise TypeError(f"payloads must be a sequence of bytes-like objects, "
                        f"not {type(payloads).__name__}")
    if len(payloads) != count:
        raise ValueError(f"{count} edge_ids but {len(payloads)} payloads")
    if isinstance(payloads, np.ndarray) and payloads.dtype == object and payloads.ndim == 1:
        out = payloads.copy()
    else:
        out = np.fromiter(payloads, dtype=object, count=count)
    if count and set(map(type, out)) != {bytes}:
        for i, p in enumerate(out):
            if type(p) is bytes:
                continue
            if isinstance(p, str) or p is None:
                raise TypeError(f"payloads[{i}] must be bytes-like, not {type(p).__name__}")
            try:
                view = memoryview(p)
            except TypeError:
                raise TypeError(f"payloads[{i}] must be bytes-like, "
                                f"not {type(p).__name__}") from None
            with view:
                out[i] = view.tobytes()
    return out


def pack_pieces(keys: Any, payloads: Any, order: Any, bounds: Any) -> list[bytes]:
    """One piece per shard: shard ``s`` holds ``keys[order[bounds[s]:bounds[s+1]]]``
    and their payloads, in that order.

    ``keys``: a ``KEY_DTYPE`` array; ``payloads``: a numpy object array of
    ``bytes`` (``bytes_payloads``); ``order``/``bounds``: from
    ``_routing.group_by_shard``.
    """
    pieces = []
    for s in range(len(bounds) - 1):
        idx = order[bounds[s]:bounds[s + 1]]
        chosen = payloads[idx].tolist()
        ends = np.fromiter(map(len, chosen), dtype=_ENDS, count=len(chosen))
        np.cumsum(ends, out=ends)
        head = np.array([len(chosen)], dtype=_COUNT).tobytes()
        pieces.append(b"".join([head, np.ascontiguousarray(keys[idx]).tobytes(),
                                ends.tobytes(), *chosen]))
    return pieces


def unpack_piece(piece: Any) -> tuple[Any, Any, memoryview]:
    """``(keys, ends, blob)`` of a piece: numpy views into it and a memoryview
    of its payload bytes (``ends`` are offsets into ``blob``)."""
    view = memoryview(piece).cast("B")
    if len(view) < _HEADER:
        raise ValueError(f"a packed piece of {len(view)} bytes is too short for its header")
    n = int(np.frombuffer(view, dtype=_COUNT, count=1)[0])
    kbytes = n * KEY_DTYPE.itemsize
    ebytes = n * _ENDS.itemsize
    if len(view) < _HEADER + kbytes + ebytes:
        raise ValueError(f"a packed piece of {len(view)} bytes is too short for {n} records")
    keys = np.frombuffer(view, dtype=KEY_DTYPE, count=n, offset=_HEADER)
    ends = np.frombuffer(view, dtype=_ENDS, count=n, offset=_HEADER + kbytes)
    blob = view[_HEADER + kbytes + ebytes:]
    if n and (int(ends[-1]) != len(blob) or int(ends[0]) < 0):
        raise ValueError(f"a packed piece's payload offsets do not match its {len(blob)} payload bytes")
    if not n and len(blob):
        raise ValueError(f"a packed piece of 0 records carries {len(blob)} payload bytes")
    return keys, ends, blob


def payload_list(ends: Any, blob: Any) -> list[bytes]:
    """The payloads of a piece as ``bytes`` objects (one copy of each)."""
    data = bytes(blob)
    stops = ends.tolist()
    starts = [0, *stops[:-1]]
    return [data[a:b] for a, b in zip(starts, stops)]
