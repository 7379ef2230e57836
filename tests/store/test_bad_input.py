"""Bad input and bad files: clear errors, nothing written, nothing stored lost."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from diskhash import (
    CodecUnavailableError,
    Compression,
    CorruptPayloadError,
    DiskHashError,
    PayloadStore,
)
from diskhash._format import payload as fmt


def _snapshot(directory):
    out = {}
    for p in sorted(Path(directory).iterdir()):
        st = p.stat()
        out[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def store(tmp_path):
    s = PayloadStore(tmp_path / "s")
    s.put(1, b"one")
    s.save()
    yield s
    s.close()


@pytest.mark.parametrize("payload", ["text", 5, None, 1.5, True, ["a"], {"a": 1}])
def test_non_bytes_payload_is_type_error_and_writes_nothing(store, payload):
    end = store._writer.end
    with pytest.raises(TypeError, match="bytes-like"):
        store.put(2, payload)
    with pytest.raises(TypeError):
        store.put_many([2, 3], [b"ok", payload])
    assert store._writer.end == end and 2 not in store and len(store) == 1


def test_over_u32_is_value_error_before_any_write(store):
    np = pytest.importorskip("numpy")
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(2**32,), strides=(0,))
    end = store._writer.end
    with pytest.raises(ValueError, match="u32"):
        store.put(2, huge)
    with pytest.raises(ValueError, match="u32"):
        store.put_many([3, 4], [b"fine", huge])
    assert store._writer.end == end and 3 not in store and len(store) == 1


@pytest.mark.parametrize("key, exc", [(-1, (ValueError, OverflowError)), (2**128, (ValueError, OverflowError)),
                                      ("7", TypeError), (True, TypeError), (None, TypeError),
                                      (1.0, TypeError), (b"\x01", TypeError)])
def test_bad_keys_write_nothing(store, key, exc):
    end = store._writer.end
    with pytest.raises(exc):
        store.put(key, b"x")
    with pytest.raises(exc):
        store.put_many([5, key], [b"x", b"y"])
    with pytest.raises(exc):
        store.delete(key)
    assert store._writer.end == end and len(store) == 1


def test_put_many_argument_errors(store):
    with pytest.raises(ValueError, match="2 edge ids but 1"):
        store.put_many([1, 2], [b"a"])
    with pytest.raises(TypeError):
        store.put_many([1], b"a")
    with pytest.raises(TypeError):
        store.put_many("12", [b"a", b"b"])
    assert store.get(1) == b"one"


def test_bad_compression_argument(tmp_path, store):
    with pytest.raises(ValueError, match="Compression"):
        store.put(2, b"x", compression=7)
    with pytest.raises(TypeError):
        store.put(2, b"x", compression=True)
    with pytest.raises(ValueError):
        PayloadStore(tmp_path / "other", compression="lz5")
    with pytest.raises((TypeError, ValueError)):
        PayloadStore(tmp_path / "other2", sync="sometimes")
    with pytest.raises(TypeError):
        PayloadStore(tmp_path / "other3", readonly=1)
    assert 2 not in store


def _corrupt_header(path, data):
    with open(path, "r+b") as f:
        f.write(data)


@pytest.mark.parametrize("what", ["magic", "version", "short", "empty", "checksum"])
def test_bad_data_file_names_the_file(tmp_path, what):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
        path = s.data_path
    if what == "magic":
        _corrupt_header(path, b"NOTDATA!")
    elif what == "version":
        with open(path, "r+b") as f:
            f.seek(8)
            f.write((99).to_bytes(4, "little"))
    elif what == "short":
        os.truncate(path, 40)
    elif what == "empty":
        os.truncate(path, 0)
    else:
        with open(path, "r+b") as f:
            f.seek(30)
            f.write(b"\xff")
    before = _snapshot(d)
    for readonly in (True, False):
        with pytest.raises(CorruptPayloadError) as ei:
            PayloadStore(d, readonly=readonly)
        assert isinstance(ei.value, DiskHashError) and ei.value.path == path and path in str(ei.value)
        if what == "version":
            assert "version 99" in str(ei.value)
    after = _snapshot(d)
    after.pop("store.lock", None)
    before.pop("store.lock", None)
    assert after == before                          # nothing changed by the failed opens


def test_data_file_shorter_than_an_indexed_record(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one" * 100)
        m = s.put(2, b"two" * 100)
        path = s.data_path
    os.truncate(path, m.offset + 10)
    with PayloadStore(d, readonly=True) as r:
        assert r.get(1) == b"one" * 100
        with pytest.raises(CorruptPayloadError, match="shorter") as ei:
            r.get(2)
        assert ei.value.edge_id == 2 and ei.value.path == path
    with pytest.raises(CorruptPayloadError, match="shorter than its checkpoint"):
        PayloadStore(d)
    assert os.path.getsize(path) == m.offset + 10


def test_bad_manifest(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
    (d / "MANIFEST").write_bytes(b"garbage")
    with pytest.raises(CorruptPayloadError, match="MANIFEST"):
        PayloadStore(d)
    (d / "MANIFEST").unlink()
    with pytest.raises(CorruptPayloadError, match="MANIFEST is missing"):
        PayloadStore(d)


def test_readonly_never_writes(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d, compression=Compression.LZ4) as s:
        s.put_many(range(100), [b"x%d" % i * 50 for i in range(100)])
        s.delete(3)
    before = _snapshot(d)
    with PayloadStore(d, readonly=True) as r:
        assert len(r) == 99
        r.get_many(range(100))
        r.stats()
        r.verify()
        list(r)
    assert _snapshot(d) == before


def test_directory_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(OSError):
        PayloadStore(f)
    with pytest.raises(OSError):
        PayloadStore(f, readonly=True)
    assert f.read_bytes() == b"x"


def test_corrupt_compressed_record(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d, compression=Compression.ZSTD) as s:
        m = s.put(1, b"compress me " * 100)
        path = s.data_path
    with open(path, "r+b") as f:
        f.seek(m.offset + 5)
        f.write(b"\x00\x00")
    with PayloadStore(d, verify_checksums=False, readonly=True) as r:
        with pytest.raises(CorruptPayloadError, match="zstd") as ei:
            r.get(1)
        assert ei.value.edge_id == 1
    with PayloadStore(d, readonly=True) as r:
        with pytest.raises(CorruptPayloadError, match="checksum"):
            r.get(1)
        with pytest.raises(CorruptPayloadError):
            r.verify()


def test_missing_codec_names_the_extra(tmp_path):
    """Without the codec packages the store works with NONE and names the extra."""
    import subprocess
    import sys
    import textwrap

    from helpers.processes import subprocess_env
    code = textwrap.dedent(f"""
        import sys
        for name in ("lz4", "lz4.block", "zstandard"):
            sys.modules[name] = None          # as if not installed
        from diskhash import PayloadStore, Compression, CodecUnavailableError
        try:
            PayloadStore({str(tmp_path / "a")!r}, compression=Compression.LZ4)
        except CodecUnavailableError as e:
            assert 'diskhash-sochidx (pip install ".[store]"' in str(e) and 'lz4' in str(e), e
        else:
            raise SystemExit("no error")
        with PayloadStore({str(tmp_path / "b")!r}) as s:
            s.put(1, b"plain")
            try:
                s.put(2, b"x" * 100, compression=Compression.ZSTD)
            except CodecUnavailableError as e:
                assert 'zstandard' in str(e)
            else:
                raise SystemExit("no error")
            assert s.get(1) == b"plain" and 2 not in s
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert issubclass(CodecUnavailableError, ImportError)


def test_frame_format_constants():
    assert fmt.FRAME_SIZE == 32 and fmt.DATA_HEADER_SIZE == 64


def test_compiled_and_python_read_paths_agree(tmp_path):
    with PayloadStore(tmp_path / "s", compression=Compression.LZ4) as s:
        for i in range(50):
            s.put(i, b"abc %d " % i * i)
        g = s._writer.gen
        for i in range(50):
            m = s.meta(i)
            assert s._reader.read(g, m) == s._reader.read_py(g, m) == b"abc %d " % i * i
        m = s.meta(7)
        with open(s.data_path, "r+b") as f:
            f.seek(m.offset + 1)
            f.write(b"#")
        for read in (s._reader.read, s._reader.read_py):
            with pytest.raises(CorruptPayloadError, match="checksum"):
                read(g, m)


def test_corrupt_payload_error_pickles():
    """A hostile pass over PayloadStore found this."""
    import pickle
    e = CorruptPayloadError("/x/data", ["a", "b"], edge_id=5, offset=64)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.defects, e2.edge_id, e2.offset) == ("/x/data", ["a", "b"], 5, 64)
    assert str(e2) == str(e)
