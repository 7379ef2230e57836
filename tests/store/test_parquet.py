"""export_parquet / import_parquet: streamed round trips of every codec, the file read by pyarrow and pandas."""

from __future__ import annotations

import os
import threading

import pytest
from helpers.processes import run_child

from diskhash import Compression, PayloadStore, export_parquet, import_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CODECS = list(Compression)


def fill(path, codec, n=900):
    values = {(i << 70) | i: os.urandom(i % 5) + b"abc" * (i % 200) for i in range(n)}
    with PayloadStore(path, compression=codec) as store:
        store.put_many(list(values), list(values.values()))
    return values


@pytest.mark.parametrize("raw", [False, True], ids=["payloads", "raw"])
@pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])
def test_round_trip_every_codec(tmp_path, codec, raw):
    values = fill(tmp_path / "src", codec)
    out = tmp_path / "out.parquet"
    seen = []
    n = export_parquet(tmp_path / "src", out, raw=raw, batch_rows=128,
                       progress=lambda done, total: seen.append((done, total)))
    assert n == len(values)
    assert seen[-1] == (n, n) and len(seen) > 5            # several bounded batches
    assert pq.ParquetFile(out).metadata.num_row_groups > 5
    table = pq.read_table(out)
    assert table.schema.field("key").type == pa.binary(16)
    assert table.schema.field("payload").type == pa.large_binary()
    if raw:
        assert set(table.column("compression").to_pylist()) <= {0, int(codec)}
        if codec:
            assert int(codec) in table.column("compression").to_pylist()
    else:
        got = {int.from_bytes(k, "little"): v for k, v in
               zip(table.column("key").to_pylist(), table.column("payload").to_pylist())}
        assert got == values
    frame = table.to_pandas()
    assert len(frame) == len(values)
    for target in CODECS:
        dst = tmp_path / f"dst-{target.name}"
        assert import_parquet(out, dst, compression=target) == len(values)
        with PayloadStore(dst, readonly=True) as store:
            assert len(store) == len(values)
            assert store.get_many(list(values)) == list(values.values())


def test_export_of_an_open_store_and_bytes_batches(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(50)), [b"x" * 1000] * 50)
        assert export_parquet(store, tmp_path / "o.parquet", batch_bytes=4000) == 50
        store.put(99, b"open")          # still writable after the export
    assert pq.ParquetFile(tmp_path / "o.parquet").metadata.num_row_groups >= 12
    assert export_parquet(tmp_path / "s", tmp_path / "p.parquet", compression="zstd") == 51


def test_empty_store(tmp_path):
    PayloadStore(tmp_path / "s").close()
    assert export_parquet(tmp_path / "s", tmp_path / "o.parquet") == 0
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 0
    assert import_parquet(tmp_path / "o.parquet", tmp_path / "d") == 0


def test_a_failed_export_leaves_no_file(tmp_path):
    fill(tmp_path / "s", Compression.NONE, n=300)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet", batch_rows=50, progress=stop)
    assert os.listdir(tmp_path) == ["s"]


def test_bad_arguments(tmp_path):
    PayloadStore(tmp_path / "s").close()
    with pytest.raises(ValueError, match="compression must be one of"):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet", compression="bogus")
    with pytest.raises(ValueError, match="batch_rows"):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet", batch_rows=0)
    with pytest.raises(TypeError, match="raw"):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet", raw=1)


def test_import_of_other_layouts(tmp_path):
    lo = pa.array([1, 2, 3], type=pa.uint64())
    hi = pa.array([0, 0, 1], type=pa.uint64())
    pq.write_table(pa.table({"lo": lo, "hi": hi, "payload": pa.array([b"a", b"b", b"c"])}),
                   tmp_path / "lohi.parquet")
    assert import_parquet(tmp_path / "lohi.parquet", tmp_path / "d") == 3
    pq.write_table(pa.table({"key": pa.array([7, 8], type=pa.uint64()),
                             "payload": pa.array([b"7", b"8"], type=pa.large_binary())}),
                   tmp_path / "ints.parquet")
    assert import_parquet(tmp_path / "ints.parquet", tmp_path / "d") == 2
    with PayloadStore(tmp_path / "d", readonly=True) as store:
        assert store.get_many([1, 2, 3 | (1 << 64), 7, 8]) == [b"a", b"b", b"c", b"7", b"8"]


def test_import_refuses_nulls_and_missing_columns(tmp_path):
    pq.write_table(pa.table({"key": pa.array([b"k" * 16, b"j" * 16], type=pa.binary(16)),
                             "payload": pa.array([b"a", None])}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"payloads\[1\] is null"):
        import_parquet(tmp_path / "n.parquet", tmp_path / "d")
    with PayloadStore(tmp_path / "d", readonly=True) as store:
        assert len(store) == 0
    pq.write_table(pa.table({"id": pa.array([1], type=pa.uint64()), "payload": pa.array([b"a"])}),
                   tmp_path / "k.parquet")
    with pytest.raises(ValueError, match="no 'key' column"):
        import_parquet(tmp_path / "k.parquet", tmp_path / "d")
    pq.write_table(pa.table({"key": pa.array([1], type=pa.uint64())}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="no 'payload' column"):
        import_parquet(tmp_path / "p.parquet", tmp_path / "d")


def raw_table(tmp_path, **columns):
    """A raw export of two LZ4 records, with ``columns`` replaced."""
    with PayloadStore(tmp_path / "src", compression=Compression.LZ4) as store:
        store.put_many([1, 2], [b"x" * 300, b"y" * 300])
    export_parquet(tmp_path / "src", tmp_path / "raw.parquet", raw=True)
    table = pq.read_table(tmp_path / "raw.parquet")
    for name, col in columns.items():
        table = (table.drop_columns([name]) if col is None
                 else table.set_column(table.schema.get_field_index(name), name, col))
    pq.write_table(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


@pytest.mark.parametrize("columns, error, match", [
    ({"uncompressed_length": pa.array([300, None], type=pa.uint32())}, ValueError,
     r"row 1: the uncompressed_length column is null"),
    ({"uncompressed_length": None}, ValueError, "a 'compression' column but no 'uncompressed_length'"),
    ({"compression": pa.array(["1", "1"])}, TypeError, "the compression column must hold integers, not string"),
    ({"uncompressed_length": pa.array(["300", "300"])}, TypeError,
     "the uncompressed_length column must hold integers, not string"),
], ids=["null-length", "no-length", "string-codec", "string-length"])
def test_import_of_a_bad_raw_file_names_the_column(tmp_path, columns, error, match):
    bad = raw_table(tmp_path, **columns)
    with pytest.raises(error, match=match):
        import_parquet(bad, tmp_path / "d")
    with PayloadStore(tmp_path / "d", readonly=True) as store:
        assert len(store) == 0


def test_import_refuses_a_fifo_or_a_directory_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    script = """if True:
        import sys
        from diskhash import import_parquet
        for path in sys.argv[1:3]:
            try:
                import_parquet(path, sys.argv[3])
            except ValueError as exc:
                print("refused:", exc)
    """
    r = run_child(script, tmp_path / "fifo", tmp_path, tmp_path / "d", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("not a regular file") == 2, r.stdout
    assert not (tmp_path / "d").exists()        # refused before the store was created
    with pytest.raises(FileNotFoundError):
        import_parquet(tmp_path / "missing.parquet", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_an_export_into_the_store_directory_is_refused(tmp_path):
    values = fill(tmp_path / "s", Compression.NONE, n=50)
    with PayloadStore(tmp_path / "s") as store:
        for name in sorted(os.listdir(tmp_path / "s")):
            with pytest.raises(ValueError, match="inside the store's directory"):
                export_parquet(store, tmp_path / "s" / name)
        with pytest.raises(ValueError, match="inside the store's directory"):
            export_parquet(store, tmp_path / "s" / "new.parquet")
    assert not [n for n in os.listdir(tmp_path / "s") if n.endswith((".parquet", ".tmp"))]
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        assert store.get_many(list(values)) == list(values.values())


def _workers() -> "list[str]":
    return [t.name for t in threading.enumerate() if t.name.startswith(("diskhash-export", "diskhash-import"))]


def test_a_failed_background_write_ends_the_export(tmp_path, monkeypatch):
    """The export's Parquet writes run in a worker thread: its error is the
    export's error (not lost, not a hang), no file is left, no worker lives on."""
    fill(tmp_path / "s", Compression.NONE, n=300)
    real = pq.ParquetWriter.write_batch
    calls = []

    def failing(self, batch, *args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing)
    with pytest.raises(OSError, match="No space left"):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet", batch_rows=50)
    assert os.listdir(tmp_path) == ["s"]
    assert calls[0].startswith("diskhash-export")
    assert _workers() == []
    monkeypatch.setattr(pq.ParquetWriter, "write_batch", real)
    assert export_parquet(tmp_path / "s", tmp_path / "o.parquet", batch_rows=50) == 300
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 300


def test_import_reads_ahead_and_stops_on_an_error(tmp_path):
    """The import reads batch i + 1 in a worker while batch i is put: every
    batch lands once and in order (a key met twice keeps its last row); a
    bad batch ends the import with the batches before it stored, and the
    reader thread does not live on."""
    keys = [k.to_bytes(16, "little") for k in range(10)] * 3
    payloads = [b"first"] * 10 + [b"second"] * 10 + [b"third"] * 10
    pq.write_table(pa.table({"key": pa.array(keys, type=pa.binary(16)),
                             "payload": pa.array(payloads, type=pa.large_binary())}),
                   tmp_path / "dup.parquet", row_group_size=7)
    assert import_parquet(tmp_path / "dup.parquet", tmp_path / "d", batch_rows=4) == 30
    with PayloadStore(tmp_path / "d", readonly=True) as store:
        assert store.get_many(list(range(10))) == [b"third"] * 10
    bad = payloads[:25] + [None] + payloads[26:]
    pq.write_table(pa.table({"key": pa.array(keys, type=pa.binary(16)),
                             "payload": pa.array(bad, type=pa.large_binary())}),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="is null"):
        import_parquet(tmp_path / "bad.parquet", tmp_path / "e", batch_rows=10)
    assert _workers() == []
    with PayloadStore(tmp_path / "e", readonly=True) as store:
        assert store.get_many(list(range(10))) == [b"second"] * 10      # two batches stored, not the third


def test_an_import_into_an_empty_store_sizes_the_index_once(tmp_path):
    """The file's row count (its metadata) sizes the index before the first
    batch: one grow, not one each time a batch finds the table too small.
    A store that already holds keys sizes batch by batch (rows may overwrite)."""
    n = 20_000
    pq.write_table(pa.table({"key": pa.array([k.to_bytes(16, "little") for k in range(n)], type=pa.binary(16)),
                             "payload": pa.array([b"p%d" % k for k in range(n)], type=pa.large_binary())}),
                   tmp_path / "in.parquet")
    with PayloadStore(tmp_path / "d") as store:
        sizes = []
        assert import_parquet(tmp_path / "in.parquet", store, batch_rows=2000,
                              progress=lambda done, total: sizes.append(store.stats().index_bytes)) == n
        assert len(sizes) == 10 and len(set(sizes)) == 1, sizes
        assert store.get_many([0, n - 1]) == [b"p0", b"p%d" % (n - 1)]
    with PayloadStore(tmp_path / "e") as store:
        store.put(n + 1, b"before")
        assert import_parquet(tmp_path / "in.parquet", store, batch_rows=2000) == n
        assert len(store) == n + 1 and store.get(n + 1) == b"before" and store.get(7) == b"p7"


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _forge_row_count(src, dst, rows, claim):
    """``src`` with its footer's FileMetaData.num_rows (thrift compact: a
    zigzag varint, the first of its value, before the row groups) set to ``claim``."""
    import struct
    data = src.read_bytes()
    flen = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - flen:-8]
    old = _varint(rows * 2)
    at = footer.index(old)
    footer = footer[:at] + _varint(claim * 2) + footer[at + len(old):]
    dst.write_bytes(data[:-8 - flen] + footer + struct.pack("<I", len(footer)) + b"PAR1")


@pytest.mark.parametrize("claim", [10, 2_000_000_000_000], ids=["fewer", "trillions"])
def test_an_import_refuses_a_footer_that_lies_about_its_rows(tmp_path, claim):
    """The up-front sizing trusted the footer's row count: a file claiming
    two trillion rows (its 123,457 rows readable) failed with the index's
    EFBIG while sizing (or, claiming a few hundred million, allocated gigabytes);
    one claiming fewer reported ``progress`` past its total.  The row groups'
    counts are what the read gives: a footer that disagrees is refused,
    naming the file, before the store is created."""
    n = 123_457
    pq.write_table(pa.table({"key": pa.array([k.to_bytes(16, "little") for k in range(n)], type=pa.binary(16)),
                             "payload": pa.array([b"p%d" % k for k in range(n)], type=pa.large_binary())}),
                   tmp_path / "in.parquet")
    _forge_row_count(tmp_path / "in.parquet", tmp_path / "forged.parquet", n, claim)
    meta = pq.ParquetFile(tmp_path / "forged.parquet").metadata
    assert meta.num_rows == claim and meta.row_group(0).num_rows == n
    with pytest.raises(ValueError, match=f"forged.parquet: the file's metadata says {claim} rows"):
        import_parquet(tmp_path / "forged.parquet", tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with PayloadStore(tmp_path / "e") as store:
        with pytest.raises(ValueError, match="row groups hold 123457"):
            import_parquet(tmp_path / "forged.parquet", store)
        assert len(store) == 0 and store.stats().index_bytes < 1 << 20
