"""``build_store`` from Parquet read by Dask (``dd.read_parquet``, Arrow columns):
every key form the docs name, nulls and wrong types refused, empty, sliced and
chunked partitions; the split task's Arrow pieces checked without a cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.records import random_key_array

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
import pandas as pd  # noqa: E402

from diskhash import KEY_DTYPE, ShardBuildError, ShardedStore  # noqa: E402
from diskhash._shards import pieces as _pieces  # noqa: E402
from diskhash._shards import routing as _routing  # noqa: E402
from diskhash.dask import build_store  # noqa: E402


def make_records(n: int, seed: int) -> tuple[np.ndarray, pa.Array]:
    rng = np.random.default_rng(seed)
    keys = random_key_array(rng, n)
    sizes = rng.integers(0, 200, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    payloads = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                      pa.py_buffer(rng.bytes(int(offsets[-1])))])
    return keys, payloads


def fsb_ids(keys: np.ndarray, byteorder: str = "little") -> pa.Array:
    octets = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), 16)
    if byteorder == "big":
        octets = np.ascontiguousarray(octets[:, ::-1])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys),
                                                [None, pa.py_buffer(octets)])


def id_columns_of(keys: np.ndarray, form: str) -> tuple[dict[str, pa.Array], object, str]:
    """Columns holding ``keys`` in one of the documented forms, and the
    ``id_columns``/``id_byteorder`` arguments that read them."""
    if form == "fsb-little":
        return {"edge_id": fsb_ids(keys)}, "edge_id", "little"
    if form == "fsb-big":
        return {"edge_id": fsb_ids(keys, "big")}, "edge_id", "big"
    if form == "binary16":
        return {"edge_id": fsb_ids(keys).cast(pa.binary())}, "edge_id", "little"
    if form == "lo-hi":
        return {"lo": pa.array(keys["lo"]), "hi": pa.array(keys["hi"])}, ("lo", "hi"), "little"
    assert form == "uint64"
    return {"edge_id": pa.array(keys["lo"])}, "edge_id", "little"


def write_parquet(path: Path, columns: dict[str, pa.Array], files: int = 2,
                  row_group_size: int = 300) -> None:
    """``files`` Parquet files, several row groups each; with more than two
    files the first one is empty."""
    path.mkdir()
    table = pa.table(columns)
    n = table.num_rows
    if files > 2:
        cuts = [0] + [n * k // (files - 1) for k in range(files)]
    else:
        cuts = [n * k // files for k in range(files + 1)]
    for f in range(files):
        a, b = int(cuts[f]), int(cuts[f + 1])
        pq.write_table(table.slice(a, b - a), path / f"part-{f}.parquet",
                       row_group_size=row_group_size)


def read_back(set_dir: Path, keys: np.ndarray, payloads: pa.Array) -> None:
    """Every key reads back its payload, byte for byte (the last duplicate wins)."""
    expect: dict[tuple[int, int], bytes] = {}
    for (lo, hi), p in zip(keys.tolist(), payloads.to_pylist()):
        expect[(lo, hi)] = p
    with ShardedStore(set_dir, readonly=True) as sh:
        assert len(sh) == len(expect)
        assert sh.get_many(keys) == [expect[(lo, hi)] for lo, hi in keys.tolist()]
        sh.verify()


@pytest.mark.parametrize("form", ["fsb-little", "fsb-big", "binary16", "lo-hi", "uint64"])
def test_parquet_build_reads_back_every_key(client, tmp_path: Path, form: str) -> None:
    keys, payloads = make_records(1500, 1)
    if form == "uint64":
        keys["hi"] = 0
    keys[:4] = keys[700:704]                         # duplicates: the later occurrence wins
    cols, id_columns, byteorder = id_columns_of(keys, form)
    write_parquet(tmp_path / "in", {**cols, "payload": payloads})
    ddf = dd.read_parquet(tmp_path / "in", dtype_backend="pyarrow", split_row_groups=True)
    assert ddf.npartitions > 2
    build_store(ddf, tmp_path / "set", shards=3, id_columns=id_columns, id_byteorder=byteorder)
    read_back(tmp_path / "set", keys, payloads)


def test_parquet_object_columns_and_large_binary(client, tmp_path: Path) -> None:
    # Read without dtype_backend: bytes columns come as object columns.  A
    # large_binary payload column and a binary one in the same set.
    keys, payloads = make_records(800, 2)
    write_parquet(tmp_path / "in", {"edge_id": fsb_ids(keys),
                                    "payload": payloads.cast(pa.large_binary())})
    build_store(dd.read_parquet(tmp_path / "in"), tmp_path / "set", shards=2)
    read_back(tmp_path / "set", keys, payloads)


def test_parquet_with_an_empty_file_and_empty_payloads(client, tmp_path: Path) -> None:
    keys, payloads = make_records(900, 3)
    payloads = pa.array([b"" if i % 5 == 0 else p for i, p in enumerate(payloads.to_pylist())],
                        type=pa.binary())
    write_parquet(tmp_path / "in", {"edge_id": fsb_ids(keys), "payload": payloads}, files=4)
    assert pq.read_metadata(tmp_path / "in" / "part-0.parquet").num_rows == 0
    ddf = dd.read_parquet(tmp_path / "in", dtype_backend="pyarrow")
    build_store(ddf, tmp_path / "set", shards=4)
    read_back(tmp_path / "set", keys, payloads)


def test_sliced_and_chunked_arrow_columns(client, tmp_path: Path) -> None:
    # Partitions whose Arrow columns are chunked and sliced (non-zero offsets).
    keys, payloads = make_records(1000, 4)
    ids = fsb_ids(keys)
    big = pa.concat_arrays([pa.array([b"junk"] * 7, type=pa.binary()), payloads])
    id_chunks = pa.chunked_array([ids.slice(0, 333), ids.slice(333, 400), ids.slice(733)])
    pay_chunks = pa.chunked_array([big.slice(7, 500), big.slice(507)])
    df = pd.DataFrame({"edge_id": pd.arrays.ArrowExtensionArray(id_chunks),
                       "payload": pd.arrays.ArrowExtensionArray(pay_chunks)})
    build_store(dd.from_pandas(df, npartitions=3), tmp_path / "set", shards=3)
    read_back(tmp_path / "set", keys, payloads)


@pytest.mark.parametrize("column", ["edge_id", "payload"])
def test_a_null_fails_naming_column_and_row(client, tmp_path: Path, column: str) -> None:
    keys, payloads = make_records(400, 5)
    cols = {"edge_id": fsb_ids(keys), "payload": payloads}
    mask = np.zeros(400, dtype=bool)
    mask[17] = True
    cols[column] = pa.array(cols[column].to_pylist(), type=cols[column].type, mask=mask)
    write_parquet(tmp_path / "in", cols, files=1)
    ddf = dd.read_parquet(tmp_path / "in", dtype_backend="pyarrow")
    with pytest.raises(ShardBuildError,
                       match=f"column '{column}' is null at partition 0, row 17") as info:
        build_store(ddf, tmp_path / "set", shards=2)
    assert isinstance(info.value.__cause__, ValueError)
    assert not (tmp_path / "set" / "manifest.json").exists()


@pytest.mark.parametrize("cols, kwargs, match", [
    ({"edge_id": pa.array([b"x" * 16] * 4, pa.binary(16)), "payload": pa.array(["a"] * 4)},
     {}, r"column 'payload' is string.*; build_store needs bytes"),
    ({"edge_id": pa.array([b"x" * 8] * 4, pa.binary(8)), "payload": pa.array([b"a"] * 4)},
     {}, r"column 'edge_id' is fixed_size_binary\[8\].*; build_store needs 16-byte ids"),
    ({"lo": pa.array([1.0] * 4), "hi": pa.array([1] * 4, pa.uint64()),
      "payload": pa.array([b"a"] * 4)},
     {"id_columns": ("lo", "hi")}, "column 'lo' is double"),
])
def test_wrong_column_types_raise_type_error(client, tmp_path: Path, cols: dict, kwargs: dict,
                                             match: str) -> None:
    write_parquet(tmp_path / "in", cols, files=1)
    ddf = dd.read_parquet(tmp_path / "in", dtype_backend="pyarrow")
    with pytest.raises(TypeError, match=match):
        build_store(ddf, tmp_path / "set", shards=2, **kwargs)
    assert not (tmp_path / "set").exists() or not list((tmp_path / "set").iterdir())


def test_a_string_value_in_an_object_payload_column(client, tmp_path: Path) -> None:
    df = pd.DataFrame({"edge_id": np.arange(6, dtype=np.uint64),
                       "payload": pd.Series([b"a", b"b", "c", b"d", b"e", b"f"], dtype=object)})
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=1)
    with pytest.raises(ShardBuildError, match="column 'payload' holds a str at partition 0, row 2") as info:
        build_store(ddf, tmp_path / "set", shards=2)
    assert isinstance(info.value.__cause__, TypeError)


# ---------------------------------------------------------------------------
# The split task alone (no cluster)

def test_split_pieces_are_arrow_batches_in_input_order() -> None:
    keys, payloads = make_records(700, 6)
    sliced_ids = pa.concat_arrays([fsb_ids(keys[:5]), fsb_ids(keys)]).slice(5)
    df = pd.DataFrame({"edge_id": pd.arrays.ArrowExtensionArray(pa.chunked_array([sliced_ids])),
                       "payload": pd.arrays.ArrowExtensionArray(pa.chunked_array([payloads]))})
    spec = ("frame", ("edge_id",), "payload", "little")
    pieces = _pieces.split(df, spec, seed=12345, shards=4, part_no=0)
    assert len(pieces) == 4 and all(isinstance(p, _pieces.Piece) for p in pieces)
    assert all(isinstance(p.batch, pa.RecordBatch) for p in pieces)
    sid = _routing.shards_of(keys, 12345, 4)
    for s, piece in enumerate(pieces):
        mine = np.flatnonzero(sid == s)
        assert np.array_equal(_pieces._piece_keys(piece.batch), keys[mine])
        assert piece.batch.column(1).to_pylist() == payloads.take(pa.array(mine)).to_pylist()
    got_keys, got_payloads = _pieces.shard_records(pieces)
    assert got_keys.dtype == KEY_DTYPE and len(got_keys) == 700
    assert isinstance(got_payloads, pa.ChunkedArray)


def test_split_of_an_empty_partition() -> None:
    df = pd.DataFrame({"edge_id": pd.arrays.ArrowExtensionArray(pa.array([], pa.binary(16))),
                       "payload": pd.arrays.ArrowExtensionArray(pa.array([], pa.binary()))})
    pieces = _pieces.split(df, ("frame", ("edge_id",), "payload", "little"), 99, 3, 0)
    assert [p.batch.num_rows for p in pieces] == [0, 0, 0]
    keys, payloads = _pieces.shard_records(pieces)
    assert len(keys) == 0 and payloads is None


def test_pieces_cross_workers_by_pickle_without_a_copy() -> None:
    """distributed ships a bare RecordBatch as one Arrow IPC stream (every
    payload copied into it); a piece goes by pickle protocol 5, one frame per
    buffer, the payload frame the batch's own data buffer."""
    from dask.sizeof import sizeof
    from distributed.protocol import deserialize, serialize

    keys, payloads = make_records(500, 8)
    df = pd.DataFrame({"edge_id": pd.arrays.ArrowExtensionArray(pa.chunked_array([fsb_ids(keys)])),
                       "payload": pd.arrays.ArrowExtensionArray(pa.chunked_array([payloads]))})
    piece = _pieces.split(df, ("frame", ("edge_id",), "payload", "little"), 5, 2, 0)[1]
    header, frames = serialize(piece, serializers=["dask", "pickle"])
    assert header["serializer"] == "pickle"
    data = piece.batch.column(1).buffers()[2]
    assert data.address in {pa.py_buffer(f).address for f in frames}
    back = deserialize(header, frames)
    assert isinstance(back, _pieces.Piece) and back.batch.equals(piece.batch)
    assert sizeof(piece) >= piece.batch.nbytes > 0
