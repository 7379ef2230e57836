"""prepare_inserts: a table about to take many inserts in several insert_many
calls (a put_many's pieces) is faulted in for writing in one call, not one
write fault per page; it changes no entry."""

from __future__ import annotations

import os
import resource

import pytest

from diskhash import DiskHashIndex, ReadOnlyIndexError

np = pytest.importorskip("numpy")
from diskhash import KEY_DTYPE, META_DTYPE  # noqa: E402
from diskhash._index.batch import prepare_inserts  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def batch(n, seed=3):
    rng = np.random.default_rng(seed)
    keys = np.zeros(n, dtype=KEY_DTYPE)
    keys["lo"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    keys["hi"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    recs = np.zeros(n, dtype=META_DTYPE)
    recs["offset"] = np.arange(n, dtype=np.uint64) * 64
    recs["length"] = 7
    recs["uncompressed_length"] = 7
    return keys, recs


def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def test_a_saved_table_takes_its_inserts_without_a_fault_per_page(tmp_path):
    n = 40_000
    keys, recs = batch(n)
    with DiskHashIndex(tmp_path / "i.idx") as idx:
        idx.reserve(n)
        idx.save()              # (the pages clean, write-protected: each first write faults)
        pages = os.path.getsize(tmp_path / "i.idx") // PAGE
        prepare_inserts(idx, n)
        before = faults()
        for i in range(0, n, 500):                  # a put_many's pieces
            idx.insert_many(keys[i:i + 500], recs[i:i + 500])
        taken = faults() - before
        assert taken < pages // 4, f"{taken} faults for {pages} pages"
        assert len(idx) == n
        got = idx.get_many(keys)
        assert got["found"].all() and (got["offset"] == recs["offset"]).all()


def test_it_changes_no_entry_and_checks_the_index(tmp_path):
    keys, recs = batch(5000)
    with DiskHashIndex(tmp_path / "i.idx") as idx:
        idx.insert_many(keys, recs)
        before = idx.get_many(keys)
        slots = idx.num_slots
        for count in (0, -1, 1, 5000, 10**9):       # none grows the table or writes a slot
            prepare_inserts(idx, count)
        assert idx.num_slots == slots and len(idx) == 5000
        assert (idx.get_many(keys) == before).all()
    with DiskHashIndex(tmp_path / "i.idx", readonly=True) as ro:
        with pytest.raises(ReadOnlyIndexError):
            prepare_inserts(ro, 5000)
    closed = DiskHashIndex(tmp_path / "i.idx")
    closed.close()
    with pytest.raises(Exception, match="closed"):
        prepare_inserts(closed, 5000)
