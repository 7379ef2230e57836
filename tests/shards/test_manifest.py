"""A sharded set opens only whole: bad, missing or disagreeing manifests are clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

from diskhash import (
    DiskHashError,
    ManifestError,
    ShardedStore,
    ShardMismatchError,
)
from diskhash._shards import manifest as _manifest


@pytest.fixture
def built(tmp_path: Path) -> Path:
    path = tmp_path / "set"
    with ShardedStore(path, shards=3) as sh:
        sh.put_many(list(range(300)), [b"p%d" % i for i in range(300)])
    return path


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def rewrite(path: Path, **changes: object) -> None:
    doc = manifest_of(path)
    doc.update(changes)
    (path / "manifest.json").write_text(json.dumps(doc))


def test_manifest_records_format_count_routing_and_locations(built: Path) -> None:
    doc = manifest_of(built)
    assert doc["format"] == "diskhash-sharded-set" and doc["version"] == 1
    assert doc["shards"] == 3
    assert doc["routing"]["hash"] == "fmix64-chain-v1"
    assert 0 < doc["routing"]["seed"] < 2**64
    assert doc["locations"] == [{"path": f"shard-0000{i}", "host": None} for i in range(3)]
    marker = json.loads((built / "shard-00001" / "shard.json").read_text())
    assert marker == {"format": "diskhash-shard", "version": 1, "set_id": doc["set_id"],
                      "index": 1, "shards": 3}


def test_routing_seed_is_not_a_shard_table_seed(built: Path) -> None:
    import diskhash

    seed = manifest_of(built)["routing"]["seed"]
    with ShardedStore(built, readonly=True) as sh:
        for i in range(3):
            with diskhash.PayloadStore(os.path.join(sh.manifest.shard_dir(sh.directory, i), "store"),
                                       readonly=True) as shard:
                assert shard.index.seed != seed


def test_two_sets_get_different_routing_seeds(tmp_path: Path) -> None:
    seeds = set()
    for i in range(3):
        with ShardedStore(tmp_path / f"s{i}", shards=2) as sh:
            seeds.add(sh.manifest.seed)
    assert len(seeds) == 3


def test_half_built_set_never_opens(built: Path) -> None:
    (built / "manifest.json").unlink()
    for kwargs in ({}, {"readonly": True}, {"shards": 3}):
        with pytest.raises(ManifestError, match="no manifest.json"):
            ShardedStore(built, **kwargs)


@pytest.mark.parametrize("change, match", [
    ({"format": "other"}, "format"),
    ({"version": 2}, "version"),
    ({"shards": 4}, "4 locations|3 locations"),
    ({"shards": 0}, "shards"),
    ({"shards": "3"}, "shards"),
    ({"routing": {"hash": "crc32", "seed": 5}}, "routing hash"),
    ({"routing": {"hash": "fmix64-chain-v1", "seed": 0}}, "seed"),
    ({"routing": {"hash": "fmix64-chain-v1", "seed": 2**64}}, "seed"),
    ({"routing": None}, "routing"),
    ({"set_id": "xyz"}, "set_id"),
    ({"locations": "shard-00000"}, "locations"),
    ({"locations": [{"path": "../elsewhere"}, {"path": "b"}, {"path": "c"}]}, "leaves"),
    ({"locations": [{"path": "a"}, {"path": "a"}, {"path": "c"}]}, "share"),
    ({"locations": [{"path": ""}, {"path": "b"}, {"path": "c"}]}, r"locations\[0\]"),
    ({"locations": [{"path": 5}, {"path": "b"}, {"path": "c"}]}, r"locations\[0\]"),
])
def test_malformed_manifest(built: Path, change: dict, match: str) -> None:
    rewrite(built, **change)
    with pytest.raises(ManifestError, match=match) as info:
        ShardedStore(built, readonly=True)
    assert str(built / "manifest.json") in str(info.value)
    assert isinstance(info.value, DiskHashError)


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b"\xff\xfe", b"null", b"1" * 100])
def test_unparsable_manifest(built: Path, content: bytes) -> None:
    (built / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match="manifest"):
        ShardedStore(built, readonly=True)


def test_manifest_that_is_not_a_file(built: Path) -> None:
    (built / "manifest.json").unlink()
    (built / "manifest.json").mkdir()
    with pytest.raises(ManifestError, match="not a regular file|cannot"):
        ShardedStore(built, readonly=True)


def test_manifest_fifo_does_not_hang(built: Path) -> None:
    (built / "manifest.json").unlink()
    os.mkfifo(built / "manifest.json")
    code = ("import diskhash, sys\n"
            "try:\n    diskhash.ShardedStore(sys.argv[1], readonly=True)\n"
            "except diskhash.ManifestError as e:\n    print('ManifestError', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(built)], capture_output=True,
                         text=True, timeout=60, env=subprocess_env())
    assert "ManifestError" in out.stdout and "not a regular file" in out.stdout, out.stderr


def test_missing_shard_directory(built: Path) -> None:
    shutil.rmtree(built / "shard-00001")
    with pytest.raises(ShardMismatchError, match="shard 1: shard directory .* is missing"):
        ShardedStore(built, readonly=True)


def test_missing_shard_marker_or_store(built: Path) -> None:
    (built / "shard-00002" / "shard.json").unlink()
    with pytest.raises(ShardMismatchError, match="shard 2: shard marker"):
        ShardedStore(built)
    _manifest.write_shard_marker(str(built / "shard-00002"), _manifest.read_manifest(str(built)), 2)
    shutil.rmtree(built / "shard-00002" / "store")
    with pytest.raises(ShardMismatchError, match="store directory"):
        ShardedStore(built, readonly=True)


def test_swapped_shards(built: Path) -> None:
    os.rename(built / "shard-00000", built / "tmp")
    os.rename(built / "shard-00001", built / "shard-00000")
    os.rename(built / "tmp", built / "shard-00001")
    with pytest.raises(ShardMismatchError, match="index is 1, the manifest says 0"):
        ShardedStore(built, readonly=True)


def test_shard_of_another_set(built: Path, tmp_path: Path) -> None:
    with ShardedStore(tmp_path / "other", shards=3):
        pass
    shutil.rmtree(built / "shard-00002")
    shutil.copytree(tmp_path / "other" / "shard-00002", built / "shard-00002")
    with pytest.raises(ShardMismatchError, match="set_id"):
        ShardedStore(built, readonly=True)


def test_extra_shard_directory(built: Path) -> None:
    shutil.copytree(built / "shard-00002", built / "shard-00003")
    with pytest.raises(ShardMismatchError, match="not in the manifest: shard-00003"):
        ShardedStore(built, readonly=True)


def test_shard_count_mismatch(built: Path) -> None:
    with pytest.raises(ShardMismatchError, match="3 shards, shards=4"):
        ShardedStore(built, shards=4)


def test_verify_rechecks_the_layout(built: Path) -> None:
    with ShardedStore(built, readonly=True) as sh:
        sh.verify()
        (built / "shard-00001" / "shard.json").write_text("{}")
        with pytest.raises(ShardMismatchError):
            sh.verify()


def test_failed_open_leaves_no_shard_open(built: Path) -> None:
    # Shard 2's MANIFEST damaged: the open fails and closes shards 0 and 1
    # (no descriptor of theirs is left open).
    from diskhash import CorruptPayloadError

    manifest = built / "shard-00002" / "store" / "MANIFEST"
    good = manifest.read_bytes()
    manifest.write_bytes(b"garbage!" + good[8:])
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(CorruptPayloadError):
        ShardedStore(built)
    left = [os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - before
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [p for p in left if str(built) in p], left
    manifest.write_bytes(good)
    with ShardedStore(built) as sh:
        assert len(sh) == 300


def test_manifest_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure while the new manifest is written leaves no manifest (and no temp).
    from diskhash._fs import files as _files

    real = _files.publish

    def boom(fd: int, tmp: str, path: str) -> None:
        if path.endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        real(fd, tmp, path)

    monkeypatch.setattr(_files, "publish", boom)
    with pytest.raises(OSError, match="No space"):
        ShardedStore(tmp_path / "set", shards=2)
    monkeypatch.undo()
    assert not (tmp_path / "set" / "manifest.json").exists()
    assert not [n for n in os.listdir(tmp_path / "set") if n.endswith(".tmp")]
    with pytest.raises(ManifestError, match="no manifest.json"):
        ShardedStore(tmp_path / "set")
    # The next creator clears the empty shards of the failed creation and redoes it.
    with ShardedStore(tmp_path / "set", shards=2) as s:
        s.put(1, b"one")
    with ShardedStore(tmp_path / "set", readonly=True) as s:
        assert s.get(1) == b"one" and len(s) == 1


def test_errors_pickle(built: Path) -> None:
    import pickle

    shutil.rmtree(built / "shard-00001")
    with pytest.raises(ShardMismatchError) as info:
        ShardedStore(built, readonly=True)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is ShardMismatchError and str(again) == str(info.value)
    assert again.path == info.value.path and again.defects == info.value.defects


def test_sharded_store_dirs_swapped_behind_the_markers_is_a_mismatch(tmp_path):
    # The shard.json markers stayed in place while two shards' store/
    # directories were swapped: the set opened and half the gets answered None.
    """A hostile pass over PayloadStore and ShardedStore found this."""
    import os

    from diskhash import ShardedStore, ShardMismatchError

    d = tmp_path / "set"
    with ShardedStore(d, shards=4) as s:
        s.put_many(list(range(200)), [b"v%d" % i for i in range(200)])
        a = s.manifest.shard_dir(str(d), 0)
        b = s.manifest.shard_dir(str(d), 1)
    sa, sb = os.path.join(a, "store"), os.path.join(b, "store")
    os.rename(sa, sa + ".x")
    os.rename(sb, sa)
    os.rename(sa + ".x", sb)
    for readonly in (True, False):
        with pytest.raises(ShardMismatchError, match="routes to shard"):
            ShardedStore(d, readonly=readonly)
    os.rename(sa, sa + ".x")
    os.rename(sb, sa)
    os.rename(sa + ".x", sb)
    with ShardedStore(d, readonly=True) as r:
        assert r.get_many(list(range(200))) == [b"v%d" % i for i in range(200)]
        r.verify()
