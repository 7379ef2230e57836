"""A store to a Parquet file and back: ``export_parquet`` and ``import_parquet``.

The file holds one row per record::

    key                  fixed_size_binary(16)  the key's 16 bytes, little-endian, low half first
    payload              large_binary           the payload (decompressed)

and with ``raw=True`` the stored bytes instead, with two more columns::

    compression          uint8                  0 NONE, 1 LZ4 (raw block), 2 ZSTD (frame)
    uncompressed_length  uint32

Both directions stream in record batches (``batch_rows`` records, at most
about ``batch_bytes`` of payload each), so memory stays bounded whatever the
size of the store: the export walks the data file in order (the live
frames the index points at, found by the compiled ``live_keys``), reads a
batch of them with ``get_many_arrow`` and writes it as a row group, asking
for the pages ahead of the walk and letting go of those behind it; the
import reads a batch and writes it with one ``put_many`` of Arrow arrays.
pyarrow is needed (the ``arrow`` extra).

The two halves of each direction overlap: one worker thread does pyarrow's
half (the export's Parquet encoding and write of batch ``i`` while the
calling thread reads batch ``i + 1`` from the store; the import's read and
decode of batch ``i + 1`` while the calling thread puts batch ``i``), both
of which run without the GIL.  The worker touches only pyarrow objects,
never the store, so the store's locks and crash guarantees are those of
the calling thread's ``get_many_arrow``/``put_many``; at most two batches
are held at a time.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from diskhash._format.payload import DATA_HEADER_SIZE, FRAME_SIZE
from diskhash._fs.files import fsync_dir
from diskhash._index.table import drop_pages
from diskhash._store import codecs as _codecs
from diskhash._store.arrow import fetch, pyarrow_module
from diskhash._store.generation import MADV_POPULATE_READ
from diskhash._store.read import RowLog, live_keys
from diskhash._store.reader import iter_keys
from diskhash._store.store import BatchReads, PayloadStore

__all__ = ["export_parquet", "import_parquet", "BATCH_ROWS", "BATCH_BYTES", "PARQUET_CODECS"]

#: Records per batch (a row group of the export).
BATCH_ROWS = 65536
#: Payload bytes per batch, about (a batch ends once it holds this many).
BATCH_BYTES = 64 << 20
#: Parquet's own codecs of an export (pyarrow's names).
PARQUET_CODECS = ("none", "snappy", "zstd", "lz4", "gzip", "brotli")
#: The schema metadata that says which layout a file has.
_LAYOUT = b"diskhash.layout"


def _schema(pa: Any, raw: bool) -> Any:
    fields = [pa.field("key", pa.binary(16), nullable=False),
              pa.field("payload", pa.large_binary(), nullable=False)]
    if raw:
        fields += [pa.field("compression", pa.uint8(), nullable=False),
                   pa.field("uncompressed_length", pa.uint32(), nullable=False)]
    return pa.schema(fields, metadata={_LAYOUT: b"raw" if raw else b"payloads"})


def _check_batching(batch_rows: int, batch_bytes: int) -> None:
    for name, value in (("batch_rows", batch_rows), ("batch_bytes", batch_bytes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, not {value}")


def export_parquet(store: "PayloadStore | str | os.PathLike[str]", path: "str | os.PathLike[str]", *,
                   raw: bool = False, compression: str = "none", batch_rows: int = BATCH_ROWS,
                   batch_bytes: int = BATCH_BYTES,
                   progress: "Callable[[int, int], Any] | None" = None) -> int:
    """Write every record of ``store`` (an open store, or a directory opened
    read-only for the call) to the Parquet file ``path``; returns the records written.

    ``raw``: the stored bytes with their codec, not the payloads.
    ``compression``: Parquet's own codec of the file (``"none"``, ``"snappy"``,
    ``"zstd"``, ...: pyarrow's names).  ``progress(done, total)`` is called
    after each batch.  The file is written beside ``path``, synced and renamed
    into place when complete, so a failed export (or a power loss) leaves no
    partial file under its name (a killed process leaves its
    ``.NAME.PID.tmp``, see the batch guide).  Puts and
    deletes from other threads of a writable store wait for the export (a
    consistent copy); a ``compact()`` meanwhile ends it with ``RuntimeError``.
    Rows come in the order the records were written (the log's order).
    """
    _check_batching(batch_rows, batch_bytes)
    if not isinstance(raw, bool):
        raise TypeError(f"raw must be a bool, not {type(raw).__name__}")
    if compression not in PARQUET_CODECS:
        raise ValueError(f"compression must be one of {', '.join(PARQUET_CODECS)}, not {compression!r}")
    pa = pyarrow_module()
    if not isinstance(store, PayloadStore):
        with PayloadStore(store, readonly=True) as opened:
            return export_parquet(opened, path, raw=raw, compression=compression,
                                  batch_rows=batch_rows, batch_bytes=batch_bytes, progress=progress)
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(out_dir) and os.path.samefile(out_dir, store.directory):
        # (the rename would replace the store's own data, index or manifest file)
        raise ValueError(f"{path}: an export cannot be written inside the store's directory "
                         f"{os.fspath(store.directory)}")
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    reads = BatchReads(store)
    with reads.paused():
        try:
            done = _write_file(tmp, pa, raw, compression, progress,
                               _in_log_order(reads, raw, batch_rows, batch_bytes, pa))
        except _NotInLogOrder:
            done = _write_file(tmp, pa, raw, compression, progress,
                               _in_index_order(reads, raw, batch_rows, batch_bytes, pa))
    try:
        # durable before it takes the name: a power loss leaves the old file
        # or the whole new one, never a renamed file whose blocks never came
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))
    return done


class _NotInLogOrder(Exception):
    """The walk of the log cannot give a whole, consistent copy (a frame that
    does not check out, another process's write, a switched generation): the
    export starts again in the index's order, which reports each as ``get`` does."""


def _write_file(tmp: str, pa: Any, raw: bool, compression: str,
                progress: "Callable[[int, int], Any] | None", batches: Any) -> int:
    """Write the record batches of ``batches`` (``(batch, total)`` pairs) to
    the Parquet file ``tmp``; returns the records written.  The file is
    removed if anything fails."""
    import pyarrow.parquet as pq
    done = 0
    writer = pq.ParquetWriter(tmp, _schema(pa, raw), compression=compression, use_dictionary=False,
                              write_statistics=False)
    worker = ThreadPoolExecutor(1, thread_name_prefix="diskhash-export")
    pending: "list[Future[None]]" = []     # the write under way, if any
    try:
        try:
            total = 0
            for batch, total in batches:
                # one write at a time: wait for (and raise the error of) the one before
                while pending:
                    pending.pop().result()
                pending.append(worker.submit(writer.write_batch, batch))
                done += batch.num_rows
                if progress is not None:
                    progress(done, total)
            while pending:
                pending.pop().result()
            if progress is not None:
                progress(done, total)
        finally:
            worker.shutdown(wait=True)     # (a write under way ends before the file is closed)
            batches.close()
        writer.close()
    except BaseException:
        writer.close()
        _unlink(tmp)
        raise
    return done


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _in_log_order(reads: BatchReads, raw: bool, batch_rows: int, batch_bytes: int,
                  pa: Any) -> Any:
    """The export's batches, ``(batch, total)``, read in the order of the log:
    the live frames found by a walk of the data file (compiled ``live_keys``),
    so a store bigger than memory streams from sequential reads: the pages
    ahead of the walk are asked for, and those behind it are let go, so the
    data file adds about two batches to the export's resident memory
    whatever its size (the index, probed at random, is let go after each
    batch, but each maps nearly all of it again).  Raises
    ``_NotInLogOrder`` where that copy would not be whole and consistent."""
    g = reads.live()
    end = reads.data_end(g)
    total = len(g.index)
    view = g.view if g.view is not None and len(g.view) >= end else g.remap()
    data = view[:end]
    done = 0
    pos = released = DATA_HEADER_SIZE
    try:
        while pos < end:
            # the batch's pages mapped in one call (the map is advised random:
            # no fault maps more than its own page), the next batch's read ahead
            ahead = pos + batch_bytes + min(batch_rows * FRAME_SIZE, batch_bytes)
            g.advise(pos, ahead, MADV_POPULATE_READ)
            g.advise(ahead, ahead + batch_bytes, mmap.MADV_WILLNEED)
            log = RowLog()
            stop, full = live_keys(data, pos, 0, g.index, log, batch_rows, batch_bytes, raw)
            if stop == pos or (stop < end and not full):
                raise _NotInLogOrder(stop)      # a frame that does not check out
            pos = stop
            if log.live:
                n = log.live
                key_col = pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(log.rows()[0])])
                done += n
                yield _batch(reads, key_col, raw, pa, _NotInLogOrder), total
            g.advise(released, pos, mmap.MADV_DONTNEED)
            drop_pages(g.index)     # (each key of the batch was probed: its pages go too)
            released = pos
        if done != total or reads.data_end(g) != end or reads.current() is not g:
            raise _NotInLogOrder(done, total)
    finally:
        data.release()


def _in_index_order(reads: BatchReads, raw: bool, batch_rows: int, batch_bytes: int,
                    pa: Any) -> Any:
    """The export's batches, ``(batch, total)``, in the order of the index
    (a walk of its slots, each batch read with ``get_many_arrow``): what
    ``_in_log_order`` falls back on; the store's map is let go after each
    batch, so resident memory stays bounded here too."""
    g = reads.live()
    total = len(g.index)
    items = iter_keys(iter(g.index.items()), reads.current, reads.directory)
    keys: list[bytes] = []
    size = 0
    for key, meta in items:
        keys.append(key.to_bytes(16, "little"))
        size += meta.length if raw else meta.uncompressed_length
        if len(keys) >= batch_rows or size >= batch_bytes:
            yield _read_batch(reads, keys, raw, pa), total
            reads.live().advise(0, 1 << 62, mmap.MADV_DONTNEED)
            keys, size = [], 0
    if keys:
        yield _read_batch(reads, keys, raw, pa), total


def _read_batch(store: BatchReads, keys: "list[bytes]", raw: bool, pa: Any) -> Any:
    """The records of ``keys`` as a record batch."""
    key_col = pa.Array.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(b"".join(keys))])
    return _batch(store, key_col, raw, pa, RuntimeError)


def _batch(store: BatchReads, key_col: Any, raw: bool, pa: Any, missing: "type[Exception]") -> Any:
    """The records of the keys ``key_col`` as a record batch; a key gone is ``missing``."""
    payloads, codecs, lengths = fetch(store, key_col, raw=raw)
    if payloads.null_count:     # (cannot happen: the store's writers wait for the export)
        raise missing(f"{store.directory}: a key went missing during the export")
    columns = [key_col, payloads] + ([codecs, lengths] if raw else [])
    return pa.RecordBatch.from_arrays(columns, schema=_schema(pa, raw))


def import_parquet(path: "str | os.PathLike[str]", store: "PayloadStore | str | os.PathLike[str]", *,
                   compression: Any = None, batch_rows: int = BATCH_ROWS,
                   progress: "Callable[[int, int], Any] | None" = None) -> int:
    """Put every row of the Parquet file ``path`` into ``store`` (an open
    store, or a directory: created if need be, opened for the call and
    closed, saved); returns the rows stored.  A key met twice keeps its last row.

    The file as ``export_parquet`` writes it, or any Parquet file with a
    ``payload`` column (binary) and keys as a ``key`` column
    (``fixed_size_binary(16)`` or unsigned integers) or as uint64 columns
    ``lo`` and ``hi``.  A file with a ``compression`` column (``raw=True``)
    has its compressed payloads decoded (and checked against
    ``uncompressed_length``) before they are stored.  ``compression``: the
    codec to store with (default: the store's).  An empty store's index is
    sized for the file's row count before the first batch (one grow, not
    one per batch; rows repeating a key only over-size it); a file whose
    footer's row count disagrees with its row groups is ``ValueError``
    before the store is opened.  Each batch is checked
    whole before it is written (a null key or payload is ``ValueError``);
    an error leaves the batches before it stored.
    """
    _check_batching(batch_rows, 1)
    pa = pyarrow_module()
    import pyarrow.parquet as pq

    _check_input(path)
    # (before a store is opened or created: a file whose footer does not
    # add up is refused with nothing touched)
    pf = pq.ParquetFile(os.fspath(path))
    total = _row_count(pf, path)
    if not isinstance(store, PayloadStore):
        kwargs = {} if compression is None else {"compression": compression}
        with PayloadStore(store, **kwargs) as opened:
            count = import_parquet(path, opened, batch_rows=batch_rows, progress=progress)
            opened.save()
            return count
    # (read, not memory-mapped: a file truncated by another process meanwhile
    # is then pyarrow's error, not a SIGBUS; a map saved one pread copy)
    names = pf.schema_arrow.names
    if "payload" not in names:
        raise ValueError(f"{os.fspath(path)}: no 'payload' column (columns: {names})")
    if "key" in names:
        key_cols = ["key"]
    elif "lo" in names and "hi" in names:
        key_cols = ["lo", "hi"]
    else:
        raise ValueError(f"{os.fspath(path)}: no 'key' column, nor 'lo' and 'hi' (columns: {names})")
    raw = "compression" in names
    if raw and "uncompressed_length" not in names:
        raise ValueError(f"{os.fspath(path)}: a 'compression' column but no 'uncompressed_length' "
                         f"(columns: {names})")
    columns = key_cols + ["payload"] + (["compression", "uncompressed_length"] if raw else [])
    done = 0
    if total and not len(store):
        # The index sized once for every row (an empty store: each row a new
        # key, unless the file repeats one), not grown batch by batch; under
        # the writer's door, as a put's own sizing.
        with BatchReads(store).paused() as g:
            if g is not None:       # (None: read-only, which the first put_many reports)
                g.index.reserve(len(g.index) + total)
    # (use_threads=False: the read is already one thread beside the put, which
    # has its own encoder thread; pyarrow's pool beside them only cost CPU)
    batches = _read_ahead(pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False))
    try:
        for batch in batches:
            keys = batch.column("key") if key_cols == ["key"] else batch.select(["lo", "hi"])
            payloads = batch.column("payload")
            if raw:
                payloads = _decoded(payloads, batch.column("compression"), batch.column("uncompressed_length"),
                                    done, pa)
            store.put_many(keys, payloads, compression=compression)
            done += batch.num_rows
            if progress is not None:
                progress(done, total)
    finally:
        batches.close()         # (the batch being read ahead is waited for)
    return done


def _row_count(pf: Any, path: "str | os.PathLike[str]") -> int:
    """The rows of the Parquet file ``pf`` as its row groups count them (what
    the read gives); the footer's total must agree.  A footer that claims
    more rows than the file holds would otherwise size the index for them
    before the first batch: a huge allocation, or an error that
    names the index, not the file."""
    meta = pf.metadata
    rows = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if rows != meta.num_rows or rows < 0:
        raise ValueError(f"{os.fspath(path)}: the file's metadata says {meta.num_rows} rows but its "
                         f"row groups hold {rows} (a damaged or forged footer)")
    return rows


def _check_input(path: "str | os.PathLike[str]") -> None:
    """Refuse a path that is not a regular file before anything is opened or
    created: pyarrow's open of a FIFO would block until a writer came."""
    import stat
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{os.fspath(path)}: not a regular file (a Parquet file is read from one)")


def _read_ahead(batches: Any) -> Any:
    """The items of the iterator ``batches``, each next one made by a worker
    thread while the caller works on the one before (pyarrow's read and
    decode of a batch beside the caller's ``put_many`` of the last)."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="diskhash-import") as worker:
        ahead = worker.submit(next, batches, end)
        while True:
            batch = ahead.result()
            if batch is end:
                return
            ahead = worker.submit(next, batches, end)
            yield batch


def _decoded(payloads: Any, codecs: Any, lengths: Any, first: int, pa: Any) -> Any:
    """The payloads of a raw batch decoded (those stored compressed)."""
    for name, col in (("compression", codecs), ("uncompressed_length", lengths)):
        if not pa.types.is_integer(col.type):
            raise TypeError(f"the {name} column must hold integers, not {col.type}")
        if col.null_count:
            i = col.to_pylist().index(None)
            raise ValueError(f"row {first + i}: the {name} column is null")
    if not any(codecs.to_numpy(zero_copy_only=False)):
        return payloads
    out = []
    for i, (data, comp, ulen) in enumerate(zip(payloads.to_pylist(), codecs.to_pylist(),
                                               lengths.to_pylist())):
        if data is None or not comp:
            out.append(data)
            continue
        try:
            out.append(_codecs.decompress(int(comp), data, int(ulen)))
        except ValueError as exc:
            raise ValueError(f"row {first + i}: the payload does not decode ({exc})") from None
    return pa.array(out, type=pa.large_binary())
