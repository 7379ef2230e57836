"""rebuild_index(): the index from the data file alone, identical to the one lost."""

from __future__ import annotations

import os

import pytest

from diskhash import Compression, CorruptIndexError, PayloadStore


def _populate(s):
    for i in range(3000):
        s.put(i, b"v1 %d " % i * (i % 50), compression=Compression(i % 3))
    for i in range(0, 3000, 7):
        s.put(i, b"v2 %d" % i)                   # overwrites
    for i in range(0, 3000, 11):
        s.delete(i)                              # tombstones
    s.put(11, b"back after a delete")
    s.put_many(range(5000, 5500), [b"many %d" % i for i in range(5000, 5500)])


def _records(s):
    return {k: tuple(s.meta(k)) for k in s}


def test_rebuild_gives_the_same_records(tmp_path):
    seen = []
    with PayloadStore(tmp_path / "s") as s:
        _populate(s)
        before = _records(s)
        n = s.rebuild_index(progress=lambda done, total: seen.append((done, total)))
        assert n == len(before) == len(s)
        assert _records(s) == before
        s.verify()
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_index_file_deleted_is_rebuilt_on_open(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        _populate(s)
        before = _records(s)
        index_path = s.index.path
    os.unlink(index_path)
    with PayloadStore(d) as s:
        assert s.recovery == {"rebuilt": "index file missing"}
        assert _records(s) == before
        assert s.get(11) == b"back after a delete" and 22 not in s
        s.verify()


def test_damaged_index_is_rebuilt_on_writable_open_only(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        _populate(s)
        before = _records(s)
        index_path = s.index.path
    with open(index_path, "r+b") as f:
        f.write(b"NOTANIDX")
    with pytest.raises(CorruptIndexError):
        PayloadStore(d, readonly=True)
    with PayloadStore(d) as s:
        assert "index damaged" in s.recovery["rebuilt"]
        assert _records(s) == before
    with PayloadStore(d, readonly=True) as r:
        assert _records(r) == before


def test_readers_keep_answering_during_rebuild(tmp_path):
    import threading
    with PayloadStore(tmp_path / "s") as s:
        _populate(s)
        before = {k: s.get(k) for k in s}
        stop = threading.Event()
        errors = []

        def reader():
            keys = list(before)
            i = 0
            while not stop.is_set():
                k = keys[i % len(keys)]
                i += 1
                try:
                    if s.get(k) != before[k]:
                        errors.append(k)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(3):
            s.rebuild_index()
        stop.set()
        for t in threads:
            t.join()
        assert not errors
