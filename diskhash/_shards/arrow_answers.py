"""The Dask shard actors' Arrow answers (``ShardActor.get_many_arrow`` and
``get_group_arrow``), made on the worker and taken apart on the client.

distributed sends a ``pyarrow.RecordBatch`` or ``Table`` as one Arrow IPC
stream (its ``pyarrow`` serializer): the payloads' data and offsets buffers
cross as they are, with no Python object per payload on either side.  A
group answer is a table of the shards it answered, in order; its schema's
metadata ``answered`` says, per shard, 1 (its rows are there) or 0 (none:
no live actor for it in that process).
"""

from __future__ import annotations

from typing import Any

from diskhash._store.arrow import pyarrow_module

__all__ = ["batch", "table", "batch_chunks", "table_parts"]


def batch(payloads: Any) -> Any:
    """A shard's Arrow answer as a record batch (what distributed sends as Arrow IPC)."""
    return pyarrow_module().RecordBatch.from_arrays([payloads], names=["payload"])


def table(found: list[Any]) -> Any:
    """A group's Arrow answers (an array, or None for a shard not answered)
    as one table; ``answered`` in the schema's metadata says which."""
    pa = pyarrow_module()
    chunks = [a for a in found if a is not None]
    schema = pa.schema([pa.field("payload", pa.large_binary())],
                       metadata={"answered": ",".join("0" if a is None else "1" for a in found)})
    return pa.Table.from_arrays([pa.chunked_array(chunks, type=pa.large_binary())], schema=schema)


def batch_chunks(batch: Any, n: int) -> list[Any]:
    """The payload column of an actor's Arrow answer, checked to have ``n`` rows."""
    if batch.num_rows != n:
        raise RuntimeError(f"a shard actor answered {batch.num_rows} payloads for {n} keys")
    col = batch.column(0)
    return list(col.chunks) if hasattr(col, "chunks") else [col]


def table_parts(table: Any, counts: list[int]) -> list[Any]:
    """A ``get_group_arrow`` answer split per shard: a list of chunks for
    each shard it answered, None for each it did not."""
    meta = table.schema.metadata or {}
    answered = meta.get(b"answered", b"").decode().split(",")
    if len(answered) != len(counts):
        raise RuntimeError(f"a shard actor answered for {len(answered)} shards, not {len(counts)}")
    col = table.column(0)
    if col.length() != sum(n for n, a in zip(counts, answered) if a == "1"):
        raise RuntimeError("a shard actor answered a group with the wrong number of payloads")
    parts: list[Any] = []
    start = 0
    for n, a in zip(counts, answered):
        if a == "1":
            parts.append(list(col.slice(start, n).chunks))
            start += n
        else:
            parts.append(None)
    return parts
