"""compact() and damage (issue 20: item 6 and the compact half of "damage in
the middle must not block maintenance forever").

* A damaged record the index no longer points at (dead) never blocks
  compact(): it is dropped, and ``last_salvage`` says what was passed over.
  Before, one damaged frame anywhere, even one overwritten long ago, made
  compact() refuse for ever.
* Every index entry is accounted for: one whose record is damaged, past the
  end of the log or another key's makes compact() refuse with
  DamagedRecordsError naming the keys, nothing changed; ``salvage=True``
  drops exactly those keys.  Before, an entry that did not match its frame
  was silently dropped by a compact() that "succeeded".
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.processes import subprocess_env

from diskhash import (
    CorruptPayloadError,
    DamagedRecordsError,
    PayloadMeta,
    PayloadStore,
    SalvageReport,
)
from diskhash._format import payload as fmt
from diskhash._store import compact as _compact

N = 300


def value(k: int) -> bytes:
    return b"value %d " % k * (5 + k % 7)


@pytest.fixture(params=["compiled", "python"])
def paths(request, monkeypatch):
    """Both copy passes: the compiled one, and the Python one (no numpy)."""
    if request.param == "python":
        monkeypatch.setattr(_compact, "_copy_live_into", None)
        monkeypatch.setattr(_compact, "_copy_live_c", None)
    return request.param


def filled(directory) -> PayloadStore:
    s = PayloadStore(directory)
    s.put_many(list(range(N)), [b"old %d" % k * 10 for k in range(N)])
    for k in range(N):                      # every first record is dead
        s.put(k, value(k))
    s.delete(N - 1)
    s.save()
    return s


def flip(s: PayloadStore, offset: int) -> None:
    with open(s.data_path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def frame_offset_of_first_put(s: PayloadStore, key: int) -> int:
    """Where the first (now dead) record of ``key`` starts."""
    for item in fmt.scan(s._writer.gen.fd, fmt.DATA_HEADER_SIZE, s._writer.end, s.data_path):
        if isinstance(item, fmt.Frame) and item.key == key and item.kind == fmt.KIND_PUT:
            return item.offset
    raise AssertionError(key)


def check_all(s: PayloadStore, gone=()) -> None:
    for k in range(N - 1):
        assert s.get(k) == (None if k in gone else value(k)), k
    assert s.get(N - 1) is None
    assert len(s) == N - 1 - len(gone)


@pytest.mark.parametrize("where", ["payload", "header", "mark", "hole"])
def test_damaged_dead_records_do_not_block_compact(tmp_path, paths, where):
    """A dead record damaged in its payload (the skip by its claimed length),
    its lengths or its frame mark (a search for the next frame), or a hole of
    zeros over several dead records: compact() drops them, keeps every live
    record, and reports the stretches in last_salvage."""
    s = filled(tmp_path / "s")
    try:
        first = frame_offset_of_first_put(s, 10)
        if where == "payload":
            flip(s, first + fmt.FRAME_SIZE + 3)
        elif where == "header":
            flip(s, first + 9)              # stored_length
        elif where == "mark":
            flip(s, first + 6)
        else:
            end = frame_offset_of_first_put(s, 14)
            os.pwrite(s._writer.gen.fd, bytes(end - first), first)
        with pytest.raises(CorruptPayloadError):
            s.verify()                      # the damage is there
        s.compact()
        report = s.last_salvage
        assert isinstance(report, SalvageReport) and report.keys == ()
        assert report.frames == 1 and report.bytes > 0, report
        check_all(s)
        s.verify()
        s.compact()                         # nothing damaged left: reset per call
        assert s.last_salvage is None
    finally:
        s.close()
    with PayloadStore(tmp_path / "s") as s:
        check_all(s)
        s.verify()


def _mismatch(s: PayloadStore, kind: str, key: int) -> None:
    """Make ``key``'s index entry not match a record of it."""
    m = s.index[key]
    other = s.index[key + 1]
    if kind == "past_end":
        bad = PayloadMeta(key, s._writer.end + 4096, m.length, m.compression, m.uncompressed_length)
    elif kind == "another_key":
        bad = PayloadMeta(key, other.offset, other.length, other.compression,
                          other.uncompressed_length)
    elif kind == "mid_payload":
        bad = PayloadMeta(key, m.offset + 5, m.length - 5, 0, m.length - 5)
    elif kind == "damaged":
        flip(s, m.offset + 1)
        return
    s._writer.gen.index.insert(key, bad)


KINDS = ["past_end", "another_key", "mid_payload", "tombstone", "damaged"]


@pytest.mark.parametrize("kind", KINDS)
def test_compact_refuses_to_lose_a_live_key_then_salvages_it(tmp_path, paths, kind):
    """Each kind of index entry that does not lead to an intact record of its
    key: compact() refuses with DamagedRecordsError naming exactly that key,
    every file and the generation as they were; compact(salvage=True) then
    drops that key alone and reports it."""
    s = filled(tmp_path / "s")
    try:
        if kind == "tombstone":
            s.put(N + 5, b"soon gone")
            s.delete(N + 5)
            tomb_end = s._writer.end
            m = s.index[20]
            s._writer.gen.index.insert(20, PayloadMeta(20, tomb_end, 0, m.compression, 0))
        else:
            _mismatch(s, kind, 20)
        gens = (s._writer.gen.data_gen, s._writer.gen.index_gen)
        files = sorted(os.listdir(tmp_path / "s"))
        with pytest.raises(DamagedRecordsError) as err:
            s.compact()
        assert err.value.keys == (20,)
        assert "0x14" in str(err.value) and "salvage=True" in str(err.value)
        assert err.value.path == s.data_path
        assert (s._writer.gen.data_gen, s._writer.gen.index_gen) == gens
        assert sorted(os.listdir(tmp_path / "s")) == files
        assert s.last_salvage is None
        with pytest.raises(CorruptPayloadError):
            s.get(20)                       # still reported, not hidden
        s.compact(salvage=True)
        assert s.last_salvage is not None and s.last_salvage.keys == (20,)
        check_all(s, gone={20})
        s.verify()
    finally:
        s.close()
    with PayloadStore(tmp_path / "s") as s:
        check_all(s, gone={20})


def test_an_entry_with_the_right_offset_but_wrong_lengths_is_copied_from_its_frame(tmp_path, paths):
    """An index entry pointing at its key's intact frame with the wrong
    metadata: the frame is the record, so compact() copies it and indexes
    it as the frame says (get() refused it before; it reads again)."""
    s = filled(tmp_path / "s")
    try:
        m = s.index[30]
        s._writer.gen.index.insert(30, PayloadMeta(30, m.offset, m.length - 1, 0, m.length - 1))
        with pytest.raises(CorruptPayloadError):
            s.get(30)
        s.compact()
        assert s.last_salvage is None
        check_all(s)
    finally:
        s.close()


def test_a_live_record_hidden_in_a_damaged_stretch_is_copied(tmp_path, paths):
    """A dead record whose header now claims to run over the live record
    after it (to a valid frame): the copy passes over both as one stretch,
    and the accounting finds the live record intact and copies it."""
    s = PayloadStore(tmp_path / "s")
    try:
        s.put(1, b"dead " * 20)
        a = s.index[1].offset - fmt.FRAME_SIZE
        s.put(2, b"live " * 30)
        b = s.index[2]
        s.put(3, b"after " * 10)
        s.put(1, b"one now")
        covered = b.offset + b.length - a - fmt.FRAME_SIZE     # A's payload runs to C's start
        os.pwrite(s._writer.gen.fd, covered.to_bytes(4, "little"), a + 8)
        s.compact()
        assert s.get(2) == b"live " * 30 and s.get(1) == b"one now" and s.get(3) == b"after " * 10
        assert s.last_salvage == SalvageReport((), 1, covered + fmt.FRAME_SIZE)
        s.verify()
    finally:
        s.close()


def test_salvage_must_be_a_bool(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"x")
        with pytest.raises(TypeError):
            s.compact(salvage="yes")
        assert s.get(1) == b"x"


def _damaged_live(directory) -> None:
    with PayloadStore(directory) as s:
        s.put_many(list(range(50)), [b"v%d" % k * 30 for k in range(50)])
        flip(s, s.index[7].offset + 2)


def test_cli_compact_refuses_then_salvages(tmp_path):
    d = tmp_path / "s"
    _damaged_live(d)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "diskhash", "store", "compact", str(d), *args],
                              capture_output=True, text=True, env=subprocess_env(), timeout=120)

    r = run()
    assert r.returncode == 1 and "0x7" in r.stderr and "salvage" in r.stderr, r.stderr
    r = run("--salvage")
    assert r.returncode == 0, r.stderr
    assert "dropped edge id 0x7" in r.stderr
    with PayloadStore(d) as s:
        assert s.get(7) is None and s.get(8) == b"v8" * 30 and len(s) == 49


@pytest.mark.anyio
async def test_async_compact_passes_salvage_on(tmp_path):
    from diskhash import AsyncPayloadStore
    _damaged_live(tmp_path / "s")
    s = await AsyncPayloadStore.open(tmp_path / "s")
    try:
        with pytest.raises(DamagedRecordsError):
            await s.compact()
        await s.compact(salvage=True)
        assert s.sync.last_salvage.keys == (7,)
        assert await s.get(7) is None and await s.get(8) == b"v8" * 30
    finally:
        await s.close()


def _damaged_sharded(directory):
    from diskhash import ShardedStore
    st = ShardedStore(directory, shards=2)
    st.put_many(list(range(100)), [b"s%d" % k * 20 for k in range(100)])
    shard = next(x for x in st._stores if 7 in x)
    flip(shard, shard.index[7].offset + 2)
    return st


def test_sharded_compact_passes_salvage_on(tmp_path):
    st = _damaged_sharded(tmp_path / "set")
    try:
        with pytest.raises(DamagedRecordsError):
            st.compact()
        st.compact(salvage=True)
        assert st.get(7) is None and st.get(8) == b"s8" * 20 and len(st) == 99
    finally:
        st.close()


@pytest.mark.anyio
async def test_async_sharded_compact_passes_salvage_on(tmp_path):
    from diskhash import AsyncShardedStore
    _damaged_sharded(tmp_path / "set").close()
    st = await AsyncShardedStore.open(tmp_path / "set")
    try:
        with pytest.raises(DamagedRecordsError):
            await st.compact()
        await st.compact(salvage=True)
        assert await st.get(7) is None and await st.get(8) == b"s8" * 20
    finally:
        await st.close()
