"""rebuild_index() and compact() through the compiled log passes (``LogFold``,
``copy_live_into``) give the same state as the Python passes: the log's last
put of each key, tombstones honoured, the same new data file byte for byte.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import FRAME_PRELUDE, child_stdout, subprocess_env

from diskhash import KEY_DTYPE, META_DTYPE, Compression, CorruptPayloadError, PayloadStore
from diskhash._format import payload as fmt
from diskhash._store import read as _store_read


def _child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


np = pytest.importorskip("numpy")


def _history(s: PayloadStore, rng: random.Random, n: int) -> "dict[int, bytes]":
    """Puts, overwrites, deletes and re-puts; returns the final model."""
    model: dict[int, bytes] = {}
    keys = [rng.getrandbits(rng.choice((10, 64, 128))) for _ in range(n)]
    for step in range(3 * n):
        k = rng.choice(keys)
        r = rng.random()
        if r < 0.2 and k in model:
            assert s.delete(k)
            del model[k]
        else:
            v = rng.randbytes(rng.randrange(0, 2500)) if r < 0.6 else b"word %d " % step * 40
            comp = Compression.LZ4 if step % 5 == 0 else Compression.NONE
            s.put(k, v, compression=comp)
            model[k] = v
        if step % 1000 == 0:
            s.put_many([k], [b"batch"])
            model[k] = b"batch"
    return model


def _python_state(s: PayloadStore) -> "dict[int, tuple[int, int, int, int]]":
    final, result = fmt.replay(s._writer.gen.fd, fmt.DATA_HEADER_SIZE, s._writer.end, s.data_path)
    assert not result.torn
    return {k: v for k, v in final.items() if v is not None}


def _index_state(s: PayloadStore) -> "dict[int, tuple[int, int, int, int]]":
    return {k: (m.offset, m.length, int(m.compression), m.uncompressed_length)
            for k, m in s.index.items()}


def _fold_state(s: PayloadStore) -> "tuple[int, dict[int, tuple[int, int, int, int]]]":
    """Fold the whole log of ``s`` with ``LogFold``: (its live count, key -> record)."""
    table = _store_read.LogFold()
    result = fmt.fold(s._writer.gen.fd, fmt.DATA_HEADER_SIZE, s._writer.end, s.data_path, table)
    assert not result.torn and result.end == s._writer.end
    key_rows, meta_rows = table.rows()
    karr = np.frombuffer(key_rows, dtype=KEY_DTYPE)
    marr = np.frombuffer(meta_rows, dtype=META_DTYPE)
    got = dict(zip((karr["lo"].astype(object) | karr["hi"].astype(object) << 64).tolist(),
                   zip(marr["offset"].tolist(), marr["length"].tolist(),
                       marr["compression"].tolist(), marr["uncompressed_length"].tolist())))
    return table.live, got


def test_log_fold_equals_the_python_replay(tmp_path):
    rng = random.Random(1)
    with PayloadStore(tmp_path / "s") as s:
        model = _history(s, rng, 3000)          # > 1024 keys: the fold's table grows
        s.save()
        live, got = _fold_state(s)
        assert live == len(got) == len(model)
        assert got == _python_state(s) == _index_state(s)


def test_log_fold_with_mapped_tables_equals_the_python_replay(tmp_path):
    """Past 2 MiB the fold's table is an anonymous map (huge pages advised),
    not calloc: 150,000 keys grow it through several mapped sizes."""
    rng = random.Random(5)
    keys = [rng.getrandbits(128) for _ in range(150_000)]
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(keys, [b"v%d" % i for i in range(len(keys))])
        s.put_many(keys[::3], [b"w"] * len(keys[::3]))          # overwrites
        for k in keys[1::7]:
            s.delete(k)
        s.save()
        live, got = _fold_state(s)          # (the mapped table is freed on return)
        assert live == len(got) == len(s)
        assert got == _python_state(s) == _index_state(s)


def test_rebuild_index_matches_the_old_index_and_the_model(tmp_path):
    rng = random.Random(2)
    with PayloadStore(tmp_path / "s") as s:
        model = _history(s, rng, 2000)
        before = _index_state(s)
        assert s.rebuild_index() == len(model)
        assert _index_state(s) == before
        assert s.get_many(list(model)) == list(model.values())
        s.verify()


def test_rebuild_of_an_empty_and_an_all_deleted_log(tmp_path):
    with PayloadStore(tmp_path / "a") as s:
        assert s.rebuild_index() == 0
        assert len(s) == 0
    with PayloadStore(tmp_path / "b") as s:
        s.put_many(range(100), [b"x"] * 100)
        for k in range(100):
            s.delete(k)
        assert s.rebuild_index() == 0
        assert len(s) == 0 and s.get(5) is None


def test_rebuild_index_after_deleting_the_index_file(tmp_path):
    rng = random.Random(3)
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        model = _history(s, rng, 500)
        index_path = s._writer.gen.index_path
    os.unlink(index_path)
    with PayloadStore(d) as s:
        assert s.recovery is not None and s.recovery.rebuilt == "index file missing"
        assert dict(zip(model, s.get_many(list(model)))) == model
        assert len(s) == len(model)


def test_compact_compiled_and_python_write_the_same_files(tmp_path, monkeypatch):
    from diskhash._store import compact as _compact
    rng = random.Random(4)
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        model = _history(s, rng, 1500)
    shutil.copytree(d, tmp_path / "p")
    results = {}
    for name in ("s", "p"):
        with monkeypatch.context() as m:
            if name == "p":
                m.setattr(_compact, "_copy_live_into", None)
            with PayloadStore(tmp_path / name) as s:
                s.compact()
                assert s.get_many(list(model)) == list(model.values())
                assert len(s) == len(model)
                s.verify()
                with open(s.data_path, "rb") as f:
                    data = f.read(s._writer.end)
                results[name] = (data[fmt.DATA_HEADER_SIZE:], _index_state(s))
    assert results["s"] == results["p"]


def test_copy_live_into_bad_arguments(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        live = _store_read.RowLog()
        out = bytearray(10)
        buf = b"\0" * 64
        for args in ((buf, 0, 0, object(), out, 0, live, 64),
                     (buf, 0, 0, s.index, b"bytes", 0, live, 64),
                     (buf, 0, 0, s.index, out, 0, object(), 64),
                     ("text", 0, 0, s.index, out, 0, live, 64)):
            with pytest.raises(TypeError):
                _store_read.copy_live_into(*args)
        for p, used in ((-1, 0), (0, -1), (0, 11)):
            with pytest.raises(ValueError):
                _store_read.copy_live_into(buf, p, 0, s.index, out, used, live, 64)
        with pytest.raises(TypeError):          # a LogFold is not a RowLog
            _store_read.copy_live_into(buf, 0, 0, s.index, out, 0, _store_read.LogFold(), 64)
        with pytest.raises(ValueError):
            _store_read.LogFold().fold(buf, -1, 0)
        assert live.live == 0 and live.rows() == (b"", b"")


def _flip_payload_byte(s: PayloadStore, key: int) -> int:
    """Flip one payload byte of ``key``'s record in the data file (the store
    open): its checksum no longer matches.  Returns the frame's offset."""
    meta = s.index[key]
    with open(s.data_path, "r+b") as f:
        f.seek(meta.offset)
        b = f.read(1)
        f.seek(meta.offset)
        f.write(bytes([b[0] ^ 0xFF]))
    return meta.offset - fmt.FRAME_SIZE


@pytest.mark.parametrize("compiled", [True, False])
def test_mapped_passes_refuse_a_damaged_record_in_the_middle(tmp_path, monkeypatch, compiled):
    """rebuild_index() (fold) and compact() (the copy) read the log through a
    map: a record damaged while the store is open, with valid records after
    it, is reported (CorruptPayloadError at its offset) by both, the compiled
    and the Python passes alike, and the store goes on with its generation."""
    from diskhash import CorruptPayloadError
    from diskhash._store import compact as _compact
    from diskhash._store import recovery as store_mod
    if not compiled:
        monkeypatch.setattr(store_mod, "LogFold", None)
        monkeypatch.setattr(_compact, "_copy_live_into", None)
    keys = list(range(1, 3001))
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(keys, [b"payload %d " % k * 30 for k in keys])
        s.save()
        gens = (s._writer.gen.data_gen, s._writer.gen.index_gen)
        files = sorted(os.listdir(tmp_path / "s"))
        bad = _flip_payload_byte(s, 1500)
        with pytest.raises(CorruptPayloadError) as err:
            s.rebuild_index()
        assert err.value.offset == bad
        with pytest.raises(CorruptPayloadError) as err:
            s.compact()
        assert err.value.offset == bad
        assert (s._writer.gen.data_gen, s._writer.gen.index_gen) == gens
        assert s.get(1501) == b"payload 1501 " * 30
        assert sorted(os.listdir(tmp_path / "s")) == files      # the new generation removed


def _damaged_last_record_outcome(d, compiled: bool) -> tuple:
    from diskhash import CorruptPayloadError
    from diskhash._store import compact as _compact
    from diskhash._store import recovery as store_mod
    with pytest.MonkeyPatch.context() as m:
        if not compiled:
            m.setattr(store_mod, "LogFold", None)
            m.setattr(_compact, "_copy_live_into", None)
        keys = list(range(1, 2001))
        with PayloadStore(d) as s:
            s.put_many(keys, [b"v%d" % k * 50 for k in keys])
            s.save()
            _flip_payload_byte(s, keys[-1])
            with pytest.raises(CorruptPayloadError):
                s.rebuild_index()           # the index points into the "torn" tail
            try:
                s.compact()
            except CorruptPayloadError as exc:
                return ("error", exc.offset, sorted(os.listdir(d)))
            return ("ok", len(s), s.get(keys[-2]), sorted(os.listdir(d)))


def test_mapped_passes_on_a_damaged_last_record(tmp_path):
    """The last record damaged while open (nothing valid after it): the walk
    reads it as a torn tail.  rebuild_index() refuses ("log ends early"), and
    so does compact(), through the map as through the Python pass: it used to
    copy what came before and switch, so the damaged record's key left the
    index without a word.  The store keeps its generation, every file as it was."""
    got = [_damaged_last_record_outcome(tmp_path / "c", True),
           _damaged_last_record_outcome(tmp_path / "p", False)]
    assert got[0] == got[1]
    kind, offset, files = got[0]
    assert kind == "error" and offset is not None
    assert files == sorted(os.listdir(tmp_path / "c"))
    with PayloadStore(tmp_path / "c", readonly=True) as s:     # the damage is reported, not hidden
        with pytest.raises(CorruptPayloadError):
            s.get(2000)
        assert s.get(1999) == b"v1999" * 50


def test_row_log_keeps_the_rows_in_order(tmp_path):
    """compact()'s RowLog: the live frames' new places, one row per copied
    frame in log order (grown past its first 1,024 rows), as insert_many rows."""
    rng = random.Random(7)
    keys = [rng.getrandbits(128) for _ in range(5000)]
    payloads = [rng.randbytes(rng.randrange(0, 300)) for _ in keys]
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(keys, payloads)
        s.save()
        live = _store_read.RowLog()
        out = bytearray(1 << 20)
        with fmt.mapped_reader(s._writer.gen.fd, fmt.DATA_HEADER_SIZE, s._writer.end) as read:
            buf = read(s._writer.gen.fd, s._writer.end, 0)
            stop, used, new_end = _store_read.copy_live_into(
                buf, fmt.DATA_HEADER_SIZE, 0, s.index, out, 0, live, fmt.DATA_HEADER_SIZE)
            del buf
        assert stop == s._writer.end and used == s._writer.end - fmt.DATA_HEADER_SIZE
        with open(s.data_path, "rb") as f:
            assert bytes(out[:used]) == f.read()[fmt.DATA_HEADER_SIZE:s._writer.end]
        key_rows, meta_rows = live.rows()
        karr = np.frombuffer(key_rows, dtype=KEY_DTYPE)
        marr = np.frombuffer(meta_rows, dtype=META_DTYPE)
        assert live.live == len(karr) == len(keys)
        assert [int(lo) | int(hi) << 64 for lo, hi in zip(karr["lo"], karr["hi"])] == keys
        want = [(m.offset, m.length, int(m.compression), m.uncompressed_length)
                for m in (s.index[k] for k in keys)]
        assert list(zip(marr["offset"].tolist(), marr["length"].tolist(),
                        marr["compression"].tolist(), marr["uncompressed_length"].tolist())) == want


@pytest.mark.parametrize("func", ["scan_into", "copy_live"])
def test_compiled_scanners_refuse_a_negative_start(func):
    # A negative start read before the buffer (out of bounds; a segfault on a map).
    """A hostile pass over PayloadStore and ShardedStore found this."""
    args = {"scan_into": "(mm, -4096, 0, {})",
            "copy_live": "(mm, -4096, 0, lambda k: None, [], {}, 0)"}[func]
    module = {"scan_into": "_frame", "copy_live": "_store_read"}[func]
    proc = _child(f"""
        import mmap
        from diskhash._format import frame as _frame
        from diskhash._store import read as _store_read
        mm = mmap.mmap(-1, 4096)
        mm[:] = b"\\xff" * 4096
        try:
            {module}.{func}{args}
        except ValueError as exc:
            print("ValueError", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError"), proc.stdout


def test_copy_live_get_returning_a_non_tuple(tmp_path):
    """``copy_live``'s ``get`` (the index's) returning something other than a
    PayloadMeta: ``TypeError``, not a read of a list as a tuple's items.

    A hostile pass over the compiled store paths found this.
    """
    out = child_stdout("""
        import pytest
        data = frame(7, b"p" * 100)
        for ret in ([1, 96], 5, (1,), (), "ab"):
            with pytest.raises(TypeError):
                sr.copy_live(data, 0, 64, lambda k: ret, [], {}, 64)
        out, live = [], {}
        assert sr.copy_live(data, 0, 64, lambda k: (7, 96, 100, 0, 100), out, live, 64) == (132, 196)
        assert out == [data] and live == {7: (96, 100, 0, 100)}
        print("ok")
    """, tmp_path, FRAME_PRELUDE)
    assert out.strip() == "ok"
