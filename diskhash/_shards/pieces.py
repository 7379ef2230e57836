"""A Dask build's input partitions cut into Arrow pieces, one per shard.

A piece (``Piece``) holds a ``pyarrow.RecordBatch`` of two columns: ``key``
(``fixed_size_binary(16)``, the bytes of a ``KEY_DTYPE`` row) and
``payload`` (``binary`` or ``large_binary``).  distributed ships it by
pickle protocol 5, the batch's buffers out of band (a few frames per piece,
not one per payload, and no copy), and the shard writer hands the payload
buffers to ``put_many`` as they are, so no Python object is made per record
from a partition of Arrow columns
(``dd.read_parquet(..., dtype_backend="pyarrow")``).  Used by
``diskhash._shards.dask``; needs numpy, pyarrow and pandas partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diskhash._index.dtypes import KEY_DTYPE, np
from diskhash._shards import routing as _routing
from diskhash.errors import KeyRangeError

__all__ = ["Piece", "check_dtypes", "shard_records", "split"]


class Piece:
    """One input partition's records of one shard: ``batch``, a record batch
    of ``key`` and ``payload``, in input order.

    Not a bare record batch: distributed serialises a ``RecordBatch`` as an
    Arrow IPC stream, a copy of every byte into a growing buffer, while an
    object it has no serialiser for goes through pickle protocol 5, whose
    out-of-band frames are the batch's own buffers: no copy, several times
    cheaper (docs/performance.md, the build from Parquet).  ``__sizeof__``
    gives the batch's bytes, which Dask's memory accounting reads."""

    __slots__ = ("batch",)

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __reduce__(self) -> tuple[Any, ...]:
        return (Piece, (self.batch,))

    def __sizeof__(self) -> int:
        return int(self.batch.nbytes) + object.__sizeof__(self)

    def __repr__(self) -> str:
        return f"Piece({self.batch.num_rows} records)"


def _pyarrow() -> Any:
    from diskhash._store import arrow as _arrow

    return _arrow.pyarrow_module()


def _where(part_no: int, row: int) -> str:
    return f"partition {part_no}, row {row}"


def _column(part: Any, name: str, part_no: int, pa: Any) -> Any:
    """Column ``name`` of a pandas partition as one pyarrow array: a
    ``pd.ArrowDtype`` column (``dd.read_parquet(..., dtype_backend="pyarrow")``)
    as it is, an ``object`` or numpy column converted by pyarrow in C."""
    values = part[name]
    if values.dtype == object:      # pyarrow would take a str among bytes as its UTF-8
        objs = values.to_numpy()
        if not set(map(type, objs)) <= {bytes, type(None)}:
            row = next(i for i, v in enumerate(objs) if v is not None and type(v) is not bytes)
            raise TypeError(f"column {name!r} holds a {type(objs[row]).__name__} at "
                            f"{_where(part_no, row)}: an object column must hold bytes")
    try:
        arr = pa.array(values.array if hasattr(values.array, "__arrow_array__") else values,
                       from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"column {name!r} of partition {part_no} holds values of mixed "
                        f"types ({exc})") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {name!r} is null at {_where(part_no, row)}: "
                         f"build_store takes no null ids or payloads")
    return arr


def _u64_lo(arr: Any, name: str, pa: Any) -> Any:
    t = arr.type
    if not pa.types.is_integer(t):
        raise TypeError(f"column {name!r} must hold unsigned 64-bit integers, not {t}")
    values = arr.to_numpy(zero_copy_only=False)
    if pa.types.is_signed_integer(t):
        neg = np.flatnonzero(values < 0)
        if neg.size:
            raise KeyRangeError(int(values[neg[0]]), f"column {name!r}")
    return values.astype(np.uint64, copy=False)


def _id16(arr: Any, name: str, byteorder: str, part_no: int, pa: Any) -> Any:
    """A column of 16-byte ids (fixed_size_binary(16), or binary values of
    16 bytes each) as ``KEY_DTYPE`` rows, read from its buffers."""
    t = arr.type
    n = len(arr)
    if pa.types.is_fixed_size_binary(t) and t.byte_width == 16:
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=(arr.offset + n) * 16) \
            if n else np.empty(0, dtype=np.uint8)
        octets = raw[arr.offset * 16:].reshape(n, 16)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        width = np.int64 if pa.types.is_large_binary(t) else np.int32
        _, obuf, dbuf = arr.buffers()
        offsets = np.frombuffer(obuf, dtype=width, count=arr.offset + n + 1)[arr.offset:]
        wrong = np.flatnonzero(np.diff(offsets) != 16)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(f"column {name!r} holds {int(offsets[i + 1] - offsets[i])} bytes at "
                             f"{_where(part_no, i)}: ids are 16 bytes")
        start = int(offsets[0])
        octets = (np.frombuffer(dbuf, dtype=np.uint8, count=start + 16 * n)[start:].reshape(n, 16)
                  if n else np.empty((0, 16), dtype=np.uint8))
    else:
        raise TypeError(f"column {name!r} must hold 16-byte ids (fixed_size_binary(16) or "
                        f"bytes) or integers, not {t}")
    if byteorder == "big":
        octets = octets[:, ::-1]
    return np.ascontiguousarray(octets).view(KEY_DTYPE).reshape(n)


def _frame_rows(part: Any, spec: tuple[Any, ...], part_no: int, pa: Any) -> tuple[Any, Any]:
    """(``KEY_DTYPE`` keys, Arrow payload array) of one DataFrame partition."""
    _, id_columns, payload_column, byteorder = spec
    for col in (*id_columns, payload_column):
        if col not in part.columns:
            raise KeyError(f"the DataFrame has no column {col!r} (columns: {list(part.columns)})")
    n = len(part)
    if len(id_columns) == 2:
        keys = np.empty(n, dtype=KEY_DTYPE)
        for field, name in zip(("lo", "hi"), id_columns):
            keys[field] = _u64_lo(_column(part, name, part_no, pa), name, pa)
    else:
        name = id_columns[0]
        arr = _column(part, name, part_no, pa)
        if pa.types.is_integer(arr.type):
            keys = np.zeros(n, dtype=KEY_DTYPE)
            keys["lo"] = _u64_lo(arr, name, pa)
        else:
            keys = _id16(arr, name, byteorder, part_no, pa)
    payloads = _column(part, payload_column, part_no, pa)
    t = payloads.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise TypeError(f"column {payload_column!r} must hold bytes (Arrow binary or "
                        f"large_binary), not {t}")
    return keys, payloads


def _bag_payloads(payloads: list[Any]) -> list[Any]:
    """A Bag's payloads, checked to be bytes-like (``str``, None, numbers
    refused, naming the first), bytes-like non-``bytes`` copied to ``bytes``."""
    if set(map(type, payloads)) <= {bytes}:
        return payloads
    out = list(payloads)
    for i, p in enumerate(out):
        if type(p) is bytes:
            continue
        if isinstance(p, str) or p is None:
            raise TypeError(f"payloads[{i}] must be bytes-like, not {type(p).__name__}")
        try:
            view = memoryview(p)
        except TypeError:
            raise TypeError(f"payloads[{i}] must be bytes-like, not {type(p).__name__}") from None
        with view:
            out[i] = view.tobytes()
    return out


def _rows(part: Any, spec: tuple[Any, ...], part_no: int, pa: Any) -> tuple[Any, Any]:
    """(``KEY_DTYPE`` keys, Arrow payload array) of one input partition."""
    if spec[0] != "bag":
        return _frame_rows(part, spec, part_no, pa)
    items = list(part)
    try:
        ids = [e for e, _ in items]
        payloads = [p for _, p in items]
    except (TypeError, ValueError):
        raise TypeError("a Bag for build_store must hold (edge_id, bytes) pairs") from None
    keys = _routing.key_array(ids)
    return keys, pa.array(_bag_payloads(payloads), type=pa.large_binary())


def split(part: Any, spec: tuple[Any, ...], seed: int, shards: int,
           part_no: int = 0) -> tuple[Piece, ...]:
    """One input partition cut into ``shards`` pieces (``Piece``: a record
    batch of ``key``, ``payload``), each shard's rows in input order: routing
    in numpy over the key buffer, one Arrow ``take`` per shard."""
    pa = _pyarrow()
    keys, payloads = _rows(part, spec, part_no, pa)
    sid = _routing.shards_of(keys, seed, shards)
    order, bounds = _routing.group_by_shard(sid, shards)
    key_col = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(keys), [None, pa.py_buffer(np.ascontiguousarray(keys).view(np.uint8))])
    batch = pa.RecordBatch.from_arrays([key_col, payloads], names=["key", "payload"])
    return tuple(Piece(batch.take(pa.array(order[bounds[s]:bounds[s + 1]]))) for s in range(shards))


def check_dtypes(dtypes: Any, id_columns: tuple[str, ...], payload_column: str) -> None:
    """Refuse, before any task runs, a missing column or one whose dtype
    cannot hold ids or payloads.  ``object`` columns are checked value by
    value in the split tasks (their dtype says nothing)."""
    for name in (*id_columns, payload_column):
        if name not in dtypes.index:
            raise KeyError(f"the DataFrame has no column {name!r} (columns: {list(dtypes.index)})")

    def arrow_type(dt: Any) -> Any:
        return getattr(dt, "pyarrow_dtype", None)

    def _np_kind(dt: Any) -> str:     # "" for pandas' own dtypes (StringDtype's kind is "O")
        return str(dt.kind) if isinstance(dt, np.dtype) else ""

    def refuse(name: str, dt: Any, want: str) -> None:
        raise TypeError(f"column {name!r} is {dt}; build_store needs {want}")

    pa = _pyarrow()
    for name in id_columns:
        dt = dtypes[name]
        t = arrow_type(dt)
        if len(id_columns) == 2:
            ok = (pa.types.is_integer(t) if t is not None
                  else _np_kind(dt) in ("u", "i"))
            if not ok:
                refuse(name, dt, "unsigned 64-bit integers (the id's low and high halves)")
        elif t is not None:
            if not (pa.types.is_integer(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
                    or (pa.types.is_fixed_size_binary(t) and t.byte_width == 16)):
                refuse(name, dt, "16-byte ids (fixed_size_binary(16) or bytes) or integers")
        elif _np_kind(dt) not in ("u", "i", "O"):
            refuse(name, dt, "16-byte ids (fixed_size_binary(16) or bytes) or integers")
    dt = dtypes[payload_column]
    t = arrow_type(dt)
    if (not (pa.types.is_binary(t) or pa.types.is_large_binary(t)) if t is not None
            else _np_kind(dt) != "O"):
        refuse(payload_column, dt, "bytes (an object column of bytes, or Arrow binary/large_binary)")


def shard_records(pieces: Sequence[Piece]) -> tuple[Any, Any]:
    """The keys (one ``KEY_DTYPE`` array) and payloads (one chunked Arrow
    array, a chunk per piece, buffers as they came) of a shard's pieces, in
    partition order, so a later duplicate still wins."""
    pa = _pyarrow()
    batches = [p.batch for p in pieces if p.batch.num_rows]
    if not batches:
        return np.empty(0, dtype=KEY_DTYPE), None
    keys = np.concatenate([_piece_keys(b) for b in batches])
    chunks = [b.column(1) for b in batches]
    if len({c.type for c in chunks}) > 1:       # binary and large_binary partitions
        chunks = [c.cast(pa.large_binary()) for c in chunks]
    return keys, pa.chunked_array(chunks)


def _piece_keys(batch: Any) -> Any:
    """The ``key`` column of a piece's batch as ``KEY_DTYPE`` rows (a view of its buffer)."""
    col = batch.column(0)
    n = len(col)
    raw = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=(col.offset + n) * 16)
    return raw[col.offset * 16:].view(KEY_DTYPE)
