"""compact(): disk back to about the live bytes; readers and a writer keep going."""

from __future__ import annotations

import os
import random
import threading

from diskhash import Compression, PayloadStore


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
    from diskhash import _compact
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
