"""Typed use of the public API: ``mypy --strict`` must accept it (tests/project/test_typing.py)
and it must run, so the stubs and the runtime accept the same things."""

from __future__ import annotations

import os
import tempfile
import uuid

import anyio
import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import diskhash
from diskhash import AsyncDiskHashIndex, Compression, DiskHashIndex, PayloadMeta


def sync_calls(path: str) -> None:
    key = uuid.UUID(int=2**100 + 5)
    with DiskHashIndex(path, capacity=100) as idx:
        idx.insert(key, PayloadMeta(key, 1, 2, 0, 3))                 # int compression
        idx.insert(7, PayloadMeta(7, 1, 2, Compression.LZ4, 3))
        idx.insert(8, (8, 1, 2, 2, 3))                                # a plain tuple
        idx.insert(np.uint64(9), PayloadMeta(np.uint64(9), np.uint64(1), np.uint32(2), np.uint8(1),
                                             np.uint32(3)))
        assert_type(idx.get(key), PayloadMeta | None)
        assert_type(idx[7], PayloadMeta)
        assert key in idx and 7 in idx

        keys = np.array([7, 8, 10], dtype=np.uint64)
        rows = idx.get_many(keys)
        assert_type(rows, NDArray[np.void])
        hits = idx.contains_many([7, 8, 10])
        assert_type(hits, NDArray[np.bool_])
        assert rows["found"].tolist() == hits.tolist() == [True, True, False]
        wide = np.zeros(1, dtype=diskhash.KEY_DTYPE)
        wide["lo"], wide["hi"] = 5, 2**36
        assert idx.contains_many(wide).tolist() == [True]
        records = np.zeros(2, dtype=diskhash.META_DTYPE)
        records["offset"] = [100, 200]
        idx.insert_many(np.array([20, 21], dtype=np.uint64), records)
        # values read back from a result array round-trip into a record
        r = rows[0]
        again = PayloadMeta(7, r["offset"], r["length"], r["compression"], r["uncompressed_length"])
        assert again == idx[7]
        assert_type(idx.stats().entries, int)


async def async_calls(path: str) -> None:
    async with await AsyncDiskHashIndex.open(path) as aidx:
        await aidx.insert(uuid.UUID(int=42), PayloadMeta(42, 1, 2, 1, 3))
        assert_type(await aidx.get(42), PayloadMeta | None)
        rows = await aidx.get_many([42, 43])
        assert_type(rows, NDArray[np.void])
        assert_type(await aidx.contains_many(np.array([42], dtype=np.uint64)), NDArray[np.bool_])
        await aidx.insert_many([50], np.zeros(1, dtype=diskhash.META_DTYPE))
        assert [k async for k in aidx.keys()] != []  # noqa: SIM118 (an async iterator)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sync_calls(os.path.join(tmp, "a.idx"))
        anyio.run(async_calls, os.path.join(tmp, "b.idx"))
    print("ok")


if __name__ == "__main__":
    main()
