"""Temporary files a crashed grow or create leaves behind are removed by the next writer."""

from __future__ import annotations

from diskhash import DiskHashIndex, PayloadMeta


def test_leftover_temporaries_are_removed_by_a_writer_only(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, PayloadMeta(1, 2, 3, 0, 4))
    d = index_path.parent
    leftovers = [d / f".{index_path.name}.grow-4242-deadbeef.tmp",
                 d / f".{index_path.name}.create-1-00000000.tmp",
                 d / f".{index_path.name}.repair-7-0badf00d.tmp"]
    unrelated = [d / ".other.idx.grow-1-aaaaaaaa.tmp", d / f"{index_path.name}.bak"]
    for p in leftovers + unrelated:
        p.write_bytes(b"half a table")

    with DiskHashIndex(index_path, readonly=True) as idx:   # readers never delete
        assert idx[1] == (1, 2, 3, 0, 4)
    assert all(p.exists() for p in leftovers)

    with DiskHashIndex(index_path) as idx:
        assert idx[1] == (1, 2, 3, 0, 4)
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in unrelated)


def test_grow_leaves_no_temporary_file(index_path):
    with DiskHashIndex(index_path) as idx:
        for k in range(10_000):
            idx.insert(k, PayloadMeta(k, k, 1, 0, 1))
        assert idx.num_slots == 16384
    names = sorted(p.name for p in index_path.parent.iterdir())
    assert names == [index_path.name, index_path.name + ".lock"]
