"""compact(): disk back to about the live bytes; readers and a writer keep going."""

from __future__ import annotations

import os
import random
import threading

import pytest

from diskhash import Compression, PayloadStore
from diskhash._store import compact as _compact
from diskhash._store import writer as _writer_module


def _try_insert_refuses(index, key, meta):
    """An index insert that declines (as when a reader holds the map lock or a
    grow is due): ``try_put`` then writes its frame and backs it out."""
    return False


def make(k: int, v: int) -> bytes:
    head = b"%d:%d:" % (k, v)
    return head + bytes([(k + v) % 251]) * ((k * 31 + v) % 2000)


def parse_ok(k: int, data: bytes) -> bool:
    kk, v, _ = data.split(b":", 2)
    return int(kk) == k and data == make(k, int(v))


def test_compact_reclaims_space(tmp_path):
    with PayloadStore(tmp_path / "s", compression=Compression.LZ4) as s:
        for v in range(5):
            s.put_many(range(1000), [make(k, v) for k in range(1000)])
        for k in range(0, 1000, 2):
            s.delete(k)
        before = s.stats()
        assert before.garbage_ratio > 0.8
        s.compact()
        after = s.stats()
        assert after.entries == 500 and after.garbage_ratio == 0.0
        assert after.data_bytes == 64 + after.live_bytes
        assert os.path.getsize(s.data_path) <= after.data_bytes + (64 << 20)
        assert after.data_generation == before.data_generation + 1
        for k in range(1000):
            assert s.get(k) == (None if k % 2 == 0 else make(k, 4))
        s.verify()
        assert s.last_compaction["puts_waited_seconds"] >= 0
        names = sorted(os.listdir(s.directory))
    assert len([n for n in names if n.startswith("data-")]) == 1
    with PayloadStore(tmp_path / "s", readonly=True) as r:
        assert r.stats().garbage_ratio == 0.0 and r.get(999) == make(999, 4)


def test_compact_under_concurrent_readers_and_writer(tmp_path):
    s = PayloadStore(tmp_path / "s", compression=Compression.ZSTD)
    keys = 2000
    s.put_many(range(keys), [make(k, 0) for k in range(keys)])
    for k in range(keys):
        s.put(k, make(k, 1))                 # half the log is garbage
    versions = {k: 1 for k in range(keys)}
    stop = threading.Event()
    errors: list = []

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            k = rng.randrange(keys)
            try:
                got = s.get(k)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            if got is not None and not parse_ok(k, got):
                errors.append((k, got[:30]))

    def writer():
        rng = random.Random(99)
        v = 2
        while not stop.is_set():
            k = rng.randrange(keys)
            v += 1
            if rng.random() < 0.2:
                s.delete(k)
                versions[k] = None
            else:
                s.put(k, make(k, v))
                versions[k] = v

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            s.compact()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    for k in range(keys):
        want = versions[k]
        assert s.get(k) == (None if want is None else make(k, want)), k
    s.verify()
    s.close()
    with PayloadStore(tmp_path / "s") as s2:
        assert s2.recovery is None
        for k in range(keys):
            want = versions[k]
            assert s2.get(k) == (None if want is None else make(k, want))


def test_compact_without_the_compiled_copy(tmp_path, monkeypatch):
    from diskhash._store import compact as _compact
    monkeypatch.setattr(_compact, "_copy_live_c", None)
    with PayloadStore(tmp_path / "s", compression=Compression.LZ4) as s:
        for v in range(3):
            s.put_many(range(300), [make(k, v) for k in range(300)])
        s.put((1 << 100) + 1, b"wide")
        s.delete(7)
        s.compact()
        assert s.stats().garbage_ratio == 0.0 and len(s) == 300
        assert s.get(8) == make(8, 2) and s.get((1 << 100) + 1) == b"wide" and 7 not in s
        s.verify()


def test_compact_catch_up_never_reads_an_end_a_backed_out_put_moves_back(tmp_path, monkeypatch):
    """An inline put (the async store's ``_try_put``) whose insert declines
    writes its frame, moves the log's end past it, then zeroes it and moves the
    end back -- all under the writer lock.  compact()'s unlocked catch-up
    rounds read ``store._writer.end`` without that lock: one read in between took the
    backed-out end as done, so the next put written at the old end (another
    size) was skipped by the last round -- the record vanished from the store
    after the switch (or, with more frames after it, compact() refused the
    healthy log as damaged in the middle).

    A hostile pass over the read-ahead commits and compact() found this.
    """
    s = PayloadStore(tmp_path / "s")
    for k in range(100):
        s.put(k, b"old %d" % k * 20)
    for k in range(0, 100, 2):
        s.delete(k)
    in_undo, resume = threading.Event(), threading.Event()
    real_undo = s._writer.undo_append

    def slow_undo(g, start, end):
        in_undo.set()
        assert resume.wait(30)
        real_undo(g, start, end)

    def backed_out_put():
        real_try_insert = _writer_module.try_insert
        _writer_module.try_insert = _try_insert_refuses
        s._writer.undo_append = slow_undo
        try:
            assert s._writer.try_put(777, memoryview(b"z" * 100), None) is None
        finally:
            _writer_module.try_insert = real_try_insert
            del s._writer.undo_append

    real_copy, real_catch_up = _compact._copy_live_indexed, _compact._catch_up
    state = {"t": None, "rounds": 0}

    def copy_then_write(*args):
        built = real_copy(*args)
        # after e0: more than CATCH_UP_SMALL to catch up, and a put that backs out
        s.put_many(list(range(1000, 1040)), [b"m" * 40_000] * 40)
        state["t"] = threading.Thread(target=backed_out_put)
        state["t"].start()
        assert in_undo.wait(30)
        # Let the put finish shortly: compact() now reads the end (unlocked, it
        # read the one the put is about to take back; under the lock, it waits)
        state["timer"] = threading.Timer(0.5, resume.set)
        state["timer"].start()
        return built

    def catch_up(*args):
        got = real_catch_up(*args)
        if state["rounds"] == 0:            # the first round, without the lock
            state["t"].join(30)
            s.put(888, b"y" * 5000)         # at the end the backed-out put had reached
        state["rounds"] += 1
        return got

    monkeypatch.setattr(_compact, "_copy_live_indexed", copy_then_write)
    monkeypatch.setattr(_compact, "_catch_up", catch_up)
    try:
        s.compact()
        assert s.get(888) == b"y" * 5000
        assert s.get(777) is None
        assert s.get(1039) == b"m" * 40_000
        assert [s.get(k) for k in range(100)] == [None if k % 2 == 0 else b"old %d" % k * 20
                                                  for k in range(100)]
    finally:
        resume.set()
        if state.get("timer") is not None:
            state["timer"].cancel()
        if state["t"] is not None:
            state["t"].join(30)
        s.close()
    monkeypatch.undo()
    with PayloadStore(tmp_path / "s") as s:
        assert s.get(888) == b"y" * 5000
        s.compact()
        assert s.get(888) == b"y" * 5000


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("rounds", ["locked", "unlocked"])
def test_compact_refuses_a_record_damaged_after_its_start(tmp_path, monkeypatch, compiled, rounds):
    """The early-end refusal covers the catch-up too: a record written after
    compact() noted the log's end ``e0`` (an overwrite), then damaged, is the
    log's last record.  The catch-up's scan stopped short of it and the switch
    went on, so the key silently got its older value back (before, its get
    raised ``CorruptPayloadError``).  Now compact() refuses, as for a damaged
    record before ``e0``, leaving the store on its generation.

    A hostile pass over the read-ahead commits and compact() found this.
    """
    import os

    from diskhash import CorruptPayloadError

    if not compiled:
        monkeypatch.setattr(_compact, "_copy_live_into", None)
        monkeypatch.setattr(_compact, "_copy_live_c", None)
    s = PayloadStore(tmp_path / "s")
    s.put_many(list(range(100)), [b"old %d" % k * 20 for k in range(100)])
    s.save()
    gens = (s._writer.gen.data_gen, s._writer.gen.index_gen)
    real_copy = _compact._copy_live_indexed

    def copy_then_damage(*args):
        built = real_copy(*args)
        if rounds == "unlocked":            # more than CATCH_UP_SMALL behind
            s.put_many(list(range(1000, 1040)), [b"m" * 40_000] * 40)
        meta = s.put(7, b"new value " * 30)
        os.pwrite(s._writer.gen.fd, b"\xff", meta.offset + 5)
        return built

    monkeypatch.setattr(_compact, "_copy_live_indexed", copy_then_damage)
    try:
        files = sorted(os.listdir(tmp_path / "s"))
        with pytest.raises(CorruptPayloadError, match="ends early"):
            s.compact()
        assert (s._writer.gen.data_gen, s._writer.gen.index_gen) == gens
        assert sorted(os.listdir(tmp_path / "s")) == files
        with pytest.raises(CorruptPayloadError):
            s.get(7)                        # the damage is reported, not hidden
        assert s.get(8) == b"old 8" * 20
        s.put(9, b"still writable")
        assert s.get(9) == b"still writable"
    finally:
        s.close()


@pytest.mark.parametrize("op", ["compact", "rebuild_index"])
def test_iteration_across_a_compaction_is_runtime_error_not_closed(tmp_path, op):
    # The key iterator outlived the generation compact()/rebuild_index()
    # replaced: it raised IndexClosedError although the store was open.
    """A hostile pass over PayloadStore and ShardedStore found this."""
    from diskhash import IndexClosedError

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(5000)), [b"x"] * 5000)
        it = iter(s)
        first = [next(it) for _ in range(10)]
        getattr(s, op)()
        with pytest.raises(RuntimeError, match="replaced the index during iteration"):
            list(it)
        assert len(set(first)) == 10 and sorted(s) == list(range(5000))
        it = s.keys()
        next(it)
    with pytest.raises(IndexClosedError):
        list(it)


def test_compact_failing_to_create_its_data_file_leaves_no_file(tmp_path, monkeypatch):
    # On a full ext4 image compact() failed writing the new data file's header
    # and left data-000002.dat behind (found with a 24 MiB loop image).
    """A hostile pass over PayloadStore and ShardedStore found this."""
    import errno
    import os

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(100)), [b"v%d" % i for i in range(100)])
        s.delete(3)

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(OSError) as info:
            s.compact()
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC
        assert not [n for n in os.listdir(s.directory) if n.startswith("data-") and n != "data-000001.dat"]
        assert len(s) == 99 and s.get(50) == b"v50"
        s.compact()
        assert s.get_many([2, 3, 4]) == [b"v2", None, b"v4"]
