"""Batches as Apache Arrow arrays: payloads out (``get_many_arrow``) and in
(``put_many`` of Arrow payloads), without a Python object per record.

pyarrow is optional (the ``arrow`` extra): this module imports it only inside
the calls that need it, and ``is_arrow`` tells an Arrow object apart by its
type's module, so ``import diskhash`` never loads it.

Keys in Arrow form:

* ``fixed_size_binary(16)``: each key's 16 bytes little-endian, low half
  first -- the bytes of a ``KEY_DTYPE`` row, so the buffer is used as is;
* two ``uint64`` columns ``lo`` and ``hi`` (a ``StructArray``, a ``Table``
  or a ``RecordBatch``);
* an unsigned integer array (keys below 2**64);
* any of them chunked (``ChunkedArray``).

Payloads: ``binary``/``large_binary`` arrays, or chunked ones.  Their
offsets become the packed write path's payload ends and their data buffer is
handed over as one memoryview (``Writer.put_many_packed``).  A null payload
or key is refused, naming its position, before anything is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diskhash._format import payload as fmt
from diskhash._store import codecs as _codecs
from diskhash._store.keys import MASK64, key_list, key_pairs
from diskhash._types import Compression, PayloadMeta

if TYPE_CHECKING:
    import pyarrow

    from diskhash._store.generation import Generation
    from diskhash._store.store import BatchReads, PayloadStore

__all__ = ["is_arrow", "pyarrow_module", "key_rows", "key_array", "payload_pieces",
           "get_many_arrow", "fetch", "put_many_arrow", "in_key_order", "EXTRA"]

EXTRA = 'the "arrow" extra of diskhash-sochidx (pip install ".[arrow]" in its checkout)'


def is_arrow(obj: Any) -> bool:
    """Whether ``obj`` is a pyarrow object (without importing pyarrow)."""
    module = type(obj).__module__
    return module == "pyarrow" or module.startswith("pyarrow.")


def pyarrow_module() -> Any:
    """pyarrow, or ``ImportError`` naming the extra that brings it."""
    try:
        import pyarrow
    except ImportError:
        raise ImportError(f"Arrow batches need pyarrow: {EXTRA}") from None
    return pyarrow


def _np() -> Any:
    from diskhash._index.dtypes import np
    return np


def _first_null(arr: Any) -> int:
    """The position of the first null of an array that has one."""
    np = _np()
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _combined(obj: Any, pa: Any) -> Any:
    """A chunked array as one array (a copy only when it has several chunks)."""
    if isinstance(obj, pa.ChunkedArray):
        if obj.num_chunks == 1:
            return obj.chunk(0)
        return pa.concat_arrays(obj.chunks) if obj.num_chunks else pa.array([], type=obj.type)
    return obj


def _u64(col: Any, name: str, pa: Any) -> Any:
    np = _np()
    col = _combined(col, pa)
    if not pa.types.is_unsigned_integer(col.type):
        raise TypeError(f"key column {name!r} must be an unsigned integer column (uint64), not {col.type}")
    if col.null_count:
        raise ValueError(f"key column {name!r} has a null at {_first_null(col)}")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.uint64)


def key_rows(edge_ids: Any) -> Any:
    """The keys as ``KEY_DTYPE`` rows (a buffer of 16 bytes per key, ours to
    read while the call runs): Arrow keys as the module says, a numpy key
    array, or a sequence of keys.  ``TypeError``/``ValueError`` for a key
    that is not one (a null, a negative or too big number, a wrong type)."""
    np = _np()
    if not is_arrow(edge_ids):
        pairs = key_pairs(edge_ids)
        if pairs is None:
            keys = key_list(edge_ids)
            pairs = np.empty(2 * len(keys), dtype=np.uint64)
            pairs[0::2] = [k & MASK64 for k in keys]
            pairs[1::2] = [k >> 64 for k in keys]
        return pairs.view(np.uint8)
    pa = pyarrow_module()
    if isinstance(edge_ids, (pa.Table, pa.RecordBatch)):
        names = edge_ids.schema.names
        if "lo" not in names or "hi" not in names:
            raise TypeError(f"a key table must have uint64 columns 'lo' and 'hi', not {names}")
        lo, hi = _u64(edge_ids.column("lo"), "lo", pa), _u64(edge_ids.column("hi"), "hi", pa)
    else:
        arr = _combined(edge_ids, pa)
        if not isinstance(arr, pa.Array):
            raise TypeError(f"edge_ids must be a pyarrow array of keys, not {type(edge_ids).__name__}")
        t = arr.type
        if pa.types.is_fixed_size_binary(t) and t.byte_width == 16:
            if arr.null_count:
                raise ValueError(f"edge_ids[{_first_null(arr)}] is null")
            if not len(arr):
                return np.empty(0, dtype=np.uint8)
            buf = arr.buffers()[1]
            return buf.slice(arr.offset * 16, len(arr) * 16)
        if pa.types.is_struct(t):
            names = [t.field(i).name for i in range(t.num_fields)]
            if "lo" not in names or "hi" not in names:
                raise TypeError(f"a struct of keys must have uint64 fields 'lo' and 'hi', not {names}")
            if arr.null_count:
                raise ValueError(f"edge_ids[{_first_null(arr)}] is null")
            lo, hi = _u64(arr.field("lo"), "lo", pa), _u64(arr.field("hi"), "hi", pa)
        elif pa.types.is_unsigned_integer(t):
            lo = _u64(arr, "edge_ids", pa)
            hi = np.zeros(len(lo), dtype=np.uint64)
        else:
            raise TypeError(f"Arrow keys must be fixed_size_binary(16), a struct of uint64 'lo' "
                            f"and 'hi', or unsigned integers, not {t}")
    pairs = np.empty(2 * len(lo), dtype=np.uint64)
    pairs[0::2] = lo
    pairs[1::2] = hi
    return pairs.view(np.uint8)


def key_array(edge_ids: Any) -> Any:
    """Arrow keys as a ``KEY_DTYPE`` numpy array (what the store's other batch calls take)."""
    from diskhash._index.dtypes import KEY_DTYPE
    np = _np()
    return np.frombuffer(key_rows(edge_ids), dtype=KEY_DTYPE)


def payload_pieces(payloads: Any, total: int) -> "list[tuple[int, Any, Any]]":
    """Arrow payloads as ``(first, ends, data)`` per chunk: ``first`` the
    position of the chunk's first payload in the batch, ``ends`` (int64) the
    end of each payload in ``data``, ``data`` one memoryview of its bytes
    (the array's offset and slice honoured).  Everything is checked first:
    ``TypeError`` for another type, ``ValueError`` naming a null payload, one
    over the frame limit (``MAX_LENGTH``), or a count that is not ``total``."""
    np = _np()
    pa = pyarrow_module()
    if isinstance(payloads, pa.ChunkedArray):
        chunks = list(payloads.chunks)
    elif isinstance(payloads, pa.Array):
        chunks = [payloads]
    else:
        raise TypeError(f"Arrow payloads must be a pyarrow binary or large_binary array, "
                        f"not {type(payloads).__name__}")
    t = payloads.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise TypeError(f"Arrow payloads must be binary or large_binary, not {t} "
                        f"(cast it: payloads.cast(pyarrow.large_binary()))")
    count = sum(len(c) for c in chunks)
    if count != total:
        raise ValueError(f"put_many got {total} edge ids but {count} payloads")
    out = []
    first = 0
    width = np.int64 if pa.types.is_large_binary(t) else np.int32
    for c in chunks:
        n = len(c)
        if c.null_count:
            raise ValueError(f"payloads[{first + _first_null(c)}] is null; a payload must be bytes")
        if not n:
            continue
        _, obuf, dbuf = c.buffers()
        offsets = np.frombuffer(obuf, dtype=width, count=c.offset + n + 1)[c.offset:]
        start, stop = int(offsets[0]), int(offsets[-1])
        lengths = np.diff(offsets)
        big = np.flatnonzero(lengths > fmt.MAX_LENGTH)
        if len(big):
            i = int(big[0])
            raise ValueError(f"payloads[{first + i}] is {int(lengths[i])} bytes; "
                             f"the limit is {fmt.MAX_LENGTH} (u32)")
        ends = offsets[1:].astype(np.int64) - start
        size = 0 if dbuf is None else dbuf.size
        if start < 0 or stop > size or (len(lengths) and int(lengths.min()) < 0):
            raise ValueError(f"payloads: an Arrow array whose offsets do not fit its "
                             f"{size}-byte data buffer (pyarrow's validate() says why)")
        data = memoryview(dbuf if dbuf is not None else b"").cast("B")[start:stop]
        out.append((first, ends, data))
        first += n
    return out


def put_many_arrow(store: "PayloadStore", edge_ids: Any, payloads: Any, compression: Any) -> None:
    """``PayloadStore.put_many`` with Arrow keys or payloads.

    Uncompressed (the store's default and the call's): the packed write path,
    one piece per chunk, no Python object per record.  A codec compresses
    payload by payload, so each gets a memoryview into the data buffer and
    the usual path.  Payloads that are not Arrow take the usual path too."""
    np = _np()
    from diskhash._index.dtypes import KEY_DTYPE
    keys = np.frombuffer(key_rows(edge_ids), dtype=KEY_DTYPE)
    if not is_arrow(payloads):
        store.put_many(keys, payloads, compression=compression)
        return
    pieces = payload_pieces(payloads, len(keys))
    comp = store.compression if compression is None else _codecs.require(compression)
    if comp == Compression.NONE and not store.compression:
        from diskhash._store.store import put_many_packed
        packed = [(keys[first:first + len(ends)], ends, data) for first, ends, data in pieces]
        if put_many_packed(store, packed):
            return
    views: list[Any] = []
    for _first, ends, data in pieces:
        starts = [0, *ends[:-1].tolist()]
        views += [data[a:b] for a, b in zip(starts, ends.tolist())]
    store.put_many(keys, views, compression=comp)


def fetch(store: "BatchReads", edge_ids: Any, *, raw: bool = False) -> "tuple[Any, Any, Any]":
    """``(payloads, codecs, lengths)``: the payloads of ``edge_ids`` as a
    ``LargeBinaryArray`` (null where absent); with ``raw`` the stored bytes,
    with their codec (``uint8``) and uncompressed length (``uint32``) arrays,
    else None twice.  Errors as for ``get``: a record that does not check
    out raises the store's own error, never returns wrong bytes."""
    from diskhash._store.arrow_fill import fill_many
    pa = pyarrow_module()
    rows = key_rows(edge_ids)
    n = len(rows) // 16
    g = store.live()
    mapping = g.map
    if mapping is None:
        g.remap()
        mapping = g.map
    offsets, data, validity, nulls, fixups, codecs, lengths = fill_many(
        g.index, mapping, rows, store.reader.verify, raw, pa.allocate_buffer)
    if fixups:
        _fix(store, g, rows, data, offsets, fixups, raw)
    arr = pa.Array.from_buffers(pa.large_binary(), n, [validity if nulls else None, offsets, data],
                                null_count=nulls)
    if raw:
        return (arr, pa.Array.from_buffers(pa.uint8(), n, [None, codecs]),
                pa.Array.from_buffers(pa.uint32(), n, [None, lengths]))
    return arr, None, None


def get_many_arrow(store: "BatchReads", edge_ids: Any) -> "pyarrow.LargeBinaryArray":
    """``PayloadStore.get_many_arrow``."""
    return fetch(store, edge_ids)[0]


def _fix(store: "BatchReads", g: "Generation", rows: Any, data: Any, offsets: Any,
         fixups: "list[tuple[int, Any, int, int, int]]", raw: bool) -> None:
    """Read the records the compiled fill left (remapped, big, damaged, or a
    codec it could not decode) through the store's reader into their places."""
    np = _np()
    pairs = np.frombuffer(rows, dtype=np.uint64)
    offs = np.frombuffer(offsets, dtype=np.int64)
    out = memoryview(data).cast("B")
    reader = store.reader
    for i, offset, length, comp, ulen in fixups:
        key = int(pairs[2 * i]) | (int(pairs[2 * i + 1]) << 64)
        if offset is None:
            g.index.get(key)                # a damaged slot: the index's own error
            raise RuntimeError(f"{store.directory}: the index changed during get_many_arrow; call again")
        meta = PayloadMeta(key, offset, length, comp, ulen)
        got = _raw_read(reader, g, meta) if raw else reader.read(g, meta)
        a, b = int(offs[i]), int(offs[i + 1])
        if len(got) != b - a:
            raise RuntimeError(f"{store.directory}: the record of {key} changed during get_many_arrow")
        out[a:b] = got


def _raw_read(reader: Any, g: "Generation", meta: PayloadMeta) -> bytes:
    """The stored bytes of ``meta`` as they are (compressed or not), checked."""
    if not meta.compression:
        return reader.read(g, meta)  # type: ignore[no-any-return]
    reader.read(g, meta)            # checks frame, checksum and that it decodes (raises if not)
    buf = fmt.pread_exact(g.fd, meta.length, meta.offset)
    return bytes(buf)


def in_key_order(parts: "list[tuple[Any, Any]]", n: int) -> Any:
    """One ``LargeBinaryArray`` of ``n`` payloads from ``parts`` of
    ``(positions, array)`` (each shard's answer and where its keys were):
    the sharded stores' ``get_many_arrow``, in key order."""
    np = _np()
    pa = pyarrow_module()
    if not parts:
        return pa.array([], type=pa.large_binary())
    if len(parts) == 1:
        return parts[0][1]
    where = np.concatenate([p for p, _ in parts])
    inverse = np.empty(n, dtype=np.int64)
    inverse[where] = np.arange(n, dtype=np.int64)
    return pa.concat_arrays([a for _, a in parts]).take(pa.array(inverse))


def payload_share(payloads: Any, idx: Any) -> Any:
    """The payloads at positions ``idx`` (a shard's share) of Arrow payloads."""
    pa = pyarrow_module()
    return payloads.take(pa.array(idx))
