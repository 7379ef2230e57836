"""Building and serving a sharded set on a real dask.distributed cluster (LocalCluster,
worker processes).  The default run stays small; the 1M-entry and killed-worker
tests are marked slow (``--run-slow``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers.processes import subprocess_env
from helpers.records import random_key_array

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
import dask.bag as db  # noqa: E402  (after the importorskips)
import pandas as pd  # noqa: E402

from diskhash import (  # noqa: E402
    IndexClosedError,
    ManifestError,
    PayloadStore,
    ShardBuildError,
    ShardedStore,
    ShardMismatchError,
)
from diskhash.dask import LookupService, build_store  # noqa: E402

# ``client``: the session's one LocalCluster (tests/shards/conftest.py).


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, list[bytes]]:
    rng = np.random.default_rng(seed)
    keys = random_key_array(rng, n)
    sizes = rng.integers(0, 120, n)
    blob = rng.bytes(int(sizes.sum()))
    ends = np.cumsum(sizes)
    payloads = [blob[e - s:e] for s, e in zip(sizes.tolist(), ends.tolist())]
    return keys, payloads


def frame(keys: np.ndarray, payloads: list[bytes], npartitions: int) -> dd.DataFrame:
    df = pd.DataFrame({"lo": keys["lo"], "hi": keys["hi"],
                       "payload": pd.Series(payloads, dtype=object)})
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_pandas(df, npartitions=npartitions)


def single_store(path: Path, keys: np.ndarray, payloads: list[bytes]) -> PayloadStore:
    store = PayloadStore(path)
    store.put_many(keys, payloads)
    return store


def absent_keys(n: int) -> np.ndarray:
    keys, _ = make_data(n, seed=999)
    return keys


def assert_same_set(set_dir: Path, one: PayloadStore, keys: np.ndarray) -> None:
    """Every key, every payload byte (and misses) as the single store answers."""
    with ShardedStore(set_dir, readonly=True) as sh:
        assert len(sh) == len(one)
        assert sh.get_many(keys) == one.get_many(keys)
        miss = absent_keys(200)
        assert sh.get_many(miss) == one.get_many(miss) == [None] * 200
        assert sorted(sh) == sorted(one)
        sh.verify()


def test_core_package_does_not_import_dask(tmp_path: Path) -> None:
    code = ("import sys, diskhash\n"
            "with diskhash.ShardedStore(sys.argv[1], shards=2) as s:\n"
            "    s.put_many([1, 2], [b'a', b'b']); assert s.get_many([1, 2]) == [b'a', b'b']\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'pandas')]\n"
            "print('IMPORTED', bad)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=120, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout


def test_build_without_a_distributed_client(tmp_path: Path) -> None:
    # No Client in the process: the local threaded scheduler runs the build.
    code = ("import sys, dask.bag as db\n"
            "from diskhash import ShardedStore\n"
            "from diskhash.dask import build_store\n"
            "bag = db.from_sequence([(i, b'%d' % i) for i in range(500)], npartitions=3)\n"
            "build_store(bag, sys.argv[1], shards=3, progress=True)\n"
            "with ShardedStore(sys.argv[1], readonly=True) as s:\n"
            "    assert s.get_many(list(range(501))) == [b'%d' % i for i in range(500)] + [None]\n"
            "print('BUILT')\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=180, env=subprocess_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BUILT" in out.stdout and "Completed" in out.stdout      # the progress bar showed


def test_dataframe_build_equals_one_store(client, tmp_path: Path) -> None:
    keys, payloads = make_data(3000)
    keys[:5] = keys[100:105]                 # duplicates: the later occurrence wins
    manifest = build_store(frame(keys, payloads, 4), tmp_path / "set", shards=4,
                           id_columns=("lo", "hi"))
    assert manifest.shards == 4
    assert json.loads((tmp_path / "set" / "manifest.json").read_text())["shards"] == 4
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)
    assert not [n for n in os.listdir(tmp_path / "set") if n.endswith(".tmp")]


def test_bag_build_equals_one_store(client, tmp_path: Path) -> None:
    keys, payloads = make_data(1200, 1)
    ids: list[object] = [int(lo) | int(hi) << 64 for lo, hi in zip(keys["lo"], keys["hi"])]
    ids[::3] = [uuid.UUID(int=k) for k in ids[::3]]      # any key form
    bag = db.from_sequence(list(zip(ids, payloads)), npartitions=3)
    build_store(bag, tmp_path / "set", shards=3)
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_16_byte_id_column(client, tmp_path: Path, byteorder: str) -> None:
    keys, payloads = make_data(500, 2)
    ids = [int(lo) | int(hi) << 64 for lo, hi in zip(keys["lo"], keys["hi"])]
    col = [k.to_bytes(16, byteorder) for k in ids]      # "big" is uuid.UUID.bytes
    df = pd.DataFrame({"edge_id": pd.Series(col, dtype=object),
                       "payload": pd.Series(payloads, dtype=object)})
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=2)
    build_store(ddf, tmp_path / "set", shards=2, id_byteorder=byteorder)
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)


def test_integer_id_column_and_arrow_binary_payloads(client, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    payloads = [b"p%d" % i for i in range(400)]
    df = pd.DataFrame({"edge_id": np.arange(400, dtype=np.uint64),
                       "payload": pd.Series(payloads, dtype=pd.ArrowDtype(pa.binary()))})
    build_store(dd.from_pandas(df, npartitions=2), tmp_path / "set", shards=2)
    with ShardedStore(tmp_path / "set", readonly=True) as sh:
        assert sh.get_many(np.arange(400, dtype=np.uint64)) == payloads


def test_local_dir_records_hosts_and_paths(client, tmp_path: Path) -> None:
    keys, payloads = make_data(600, 3)
    manifest = build_store(frame(keys, payloads, 2), tmp_path / "set", shards=3,
                           id_columns=("lo", "hi"), local_dir=tmp_path / "local")
    doc = json.loads((tmp_path / "set" / "manifest.json").read_text())
    for i, loc in enumerate(doc["locations"]):
        assert loc["host"] == "127.0.0.1"
        assert loc["path"] == str(tmp_path / "local" / manifest.set_id / f"shard-0000{i}")
    assert not [n for n in os.listdir(tmp_path / "set") if n.startswith("shard-")]
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)
    with LookupService(client, tmp_path / "set") as svc:
        assert svc.get_many(keys) == payloads
    doc["locations"][1]["host"] = "10.255.255.1"          # a machine without a worker
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardMismatchError, match="shard 1 lives on host 10.255.255.1"):
        LookupService(client, tmp_path / "set")


def test_bad_input_fails_and_writes_no_manifest(client, tmp_path: Path) -> None:
    bag = db.from_sequence([(1, b"a"), (2, "not bytes"), (3, b"c")], npartitions=2)
    with pytest.raises(ShardBuildError, match="payloads.*bytes-like.*no manifest was written"):
        build_store(bag, tmp_path / "set", shards=2)
    assert not (tmp_path / "set" / "manifest.json").exists()
    with pytest.raises((ManifestError, FileNotFoundError)):
        ShardedStore(tmp_path / "set", readonly=True)
    # The same directory then takes a good build.
    build_store(db.from_sequence([(1, b"a"), (2, b"b")], npartitions=2), tmp_path / "set", shards=2)
    with ShardedStore(tmp_path / "set", readonly=True) as sh:
        assert sh.get_many([1, 2, 3]) == [b"a", b"b", None]


@pytest.mark.parametrize("frame_kwargs, error, match", [
    ({"id_columns": ("lo", "nope")}, KeyError, "no column 'nope'"),
    ({"id_columns": "payload"}, ShardBuildError, "16 bytes|16-byte"),
    ({"id_columns": ("lo", "hi"), "payload_column": "lo"}, TypeError, "column 'lo' is uint64"),
    ({"id_columns": ("payload", "hi")}, TypeError, "column 'payload' is object"),
    ({"id_columns": ("lo", "hi", "x")}, TypeError, "id_columns"),
    ({"id_columns": ("lo", "hi"), "id_byteorder": "middle"}, ValueError, "id_byteorder"),
])
def test_bad_frame_arguments(client, tmp_path: Path, frame_kwargs: dict, error: type,
                             match: str) -> None:
    keys, payloads = make_data(50, 4)
    with pytest.raises(error, match=match):
        build_store(frame(keys, payloads, 2), tmp_path / "set", shards=2, **frame_kwargs)
    assert not (tmp_path / "set" / "manifest.json").exists()


def test_build_refuses_existing_set_and_foreign_files(client, tmp_path: Path) -> None:
    with ShardedStore(tmp_path / "set", shards=2):
        pass
    bag = db.from_sequence([(1, b"a")], npartitions=1)
    with pytest.raises(FileExistsError, match="already exists"):
        build_store(bag, tmp_path / "set", shards=2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("x")
    with pytest.raises(FileExistsError, match="data.csv"):
        build_store(bag, tmp_path / "other", shards=2)
    with pytest.raises(TypeError, match="DataFrame or Bag"):
        build_store([(1, b"a")], tmp_path / "x", shards=2)
    with pytest.raises(ValueError):
        build_store(bag, tmp_path / "x", shards=0)


def test_build_while_the_scheduler_lists_no_worker(client, tmp_path: Path, monkeypatch) -> None:
    """Writer placement asks the scheduler for its workers; with none listed
    (workers still registering, or restarted by an earlier test) the writers
    go unplaced.  They were submitted with allow_other_workers=True and no
    workers=, which distributed refuses: the build failed (seen in .ci/run)."""
    real = type(client).scheduler_info

    def no_workers(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        info = dict(real(self, *args, **kwargs))
        info["workers"] = {}
        return info

    monkeypatch.setattr(type(client), "scheduler_info", no_workers)
    keys, payloads = make_data(2000, 9)
    build_store(frame(keys, payloads, 2), tmp_path / "set", shards=3, id_columns=("lo", "hi"),
                client=client)
    with ShardedStore(tmp_path / "set", readonly=True) as local, \
            LookupService(client, tmp_path / "set") as svc:     # the actors unplaced too
        assert svc.get_many(keys[:500]) == local.get_many(keys[:500])
    monkeypatch.undo()
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)


def test_actor_lookups_equal_local_lookups(client, tmp_path: Path) -> None:
    keys, payloads = make_data(4000, 5)
    build_store(frame(keys, payloads, 3), tmp_path / "set", shards=4, id_columns=("lo", "hi"))
    mixed = np.concatenate([keys[::2], absent_keys(500), keys[1::2]])
    rng = np.random.default_rng(0)
    rng.shuffle(mixed)
    with ShardedStore(tmp_path / "set", readonly=True) as local, \
            LookupService(client, tmp_path / "set") as svc:
        assert svc.shards == 4
        assert svc.get_many(mixed) == local.get_many(mixed)
        ints = [int(lo) | int(hi) << 64 for lo, hi in zip(mixed["lo"][:300], mixed["hi"][:300])]
        assert svc.get_many(ints) == local.get_many(ints)
        assert svc.get(ints[0]) == local.get(ints[0])
        assert svc.get(12345, b"default") == b"default"
        assert svc.get_many([]) == []
        where = {svc.actor(s).where().result() for s in range(4)}
        assert os.getpid() not in {pid for _, pid in where}        # served by worker processes
        assert len({pid for _, pid in where}) == 2                  # spread over both workers
        with pytest.raises(OverflowError):
            svc.get_many([1, -1])
    with pytest.raises(IndexClosedError):
        svc.get_many(mixed[:3])
    with pytest.raises(TypeError, match="distributed.Client"):
        LookupService(None, tmp_path / "set")


def test_empty_input_and_more_shards_than_entries(client, tmp_path: Path) -> None:
    build_store(db.from_sequence([], npartitions=1), tmp_path / "empty", shards=3)
    with ShardedStore(tmp_path / "empty", readonly=True) as sh:
        assert len(sh) == 0 and sh.shards == 3
    build_store(db.from_sequence([(7, b"seven")], npartitions=1), tmp_path / "one", shards=5)
    with ShardedStore(tmp_path / "one", readonly=True) as sh:
        assert sh.get_many([7, 8]) == [b"seven", None]
        assert sorted(s.entries for s in sh.stats().shards) == [0, 0, 0, 0, 1]


def test_lookup_service_refuses_bad_sets(client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LookupService(client, tmp_path / "nothing")
    build_store(db.from_sequence([(i, b"x") for i in range(20)], npartitions=2),
                tmp_path / "set", shards=2)
    doc = json.loads((tmp_path / "set" / "manifest.json").read_text())
    doc["version"] = 9
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="version"):
        LookupService(client, tmp_path / "set")
    doc["version"] = 1
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(doc))
    (tmp_path / "set" / "shard-00001" / "shard.json").write_text(
        (tmp_path / "set" / "shard-00000" / "shard.json").read_text())
    with pytest.raises(ShardMismatchError, match="shard 1"):
        LookupService(client, tmp_path / "set")


# ---------------------------------------------------------------------------
# Slow: the full-size equality and killed workers

def _million_part(seed: int) -> pd.DataFrame:
    keys, payloads = make_data(125_000, seed)
    return pd.DataFrame({"lo": keys["lo"], "hi": keys["hi"],
                         "payload": pd.Series(payloads, dtype=object)})


@pytest.mark.slow
def test_million_entries_eight_shards_equal_one_store(client, tmp_path: Path) -> None:
    # The partitions are generated on the workers (a 1M-row frame shipped from
    # here would be a 75 MiB graph); the reference store is built from the same seeds.
    seeds = list(range(100, 108))
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_map(_million_part, seeds)
    build_store(ddf, tmp_path / "set", shards=8, id_columns=("lo", "hi"))
    parts = [make_data(125_000, seed) for seed in seeds]
    keys = np.concatenate([k for k, _ in parts])
    with PayloadStore(tmp_path / "one") as one:
        for k, p in parts:
            one.put_many(k, p)
        with ShardedStore(tmp_path / "set", readonly=True) as sh:
            assert len(sh) == len(one) == 1_000_000
            for lo in range(0, 1_000_000, 100_000):
                batch = keys[lo:lo + 100_000]
                assert sh.get_many(batch) == one.get_many(batch)
            assert sh.get_many(absent_keys(1000)) == [None] * 1000
            assert sorted(sh) == sorted(one)
            assert min(s.entries for s in sh.stats().shards) > 100_000
        with LookupService(client, tmp_path / "set") as svc:
            assert svc.get_many(keys[:50_000]) == one.get_many(keys[:50_000])


def _kill_first_put_many(marker: str) -> None:
    """On a worker: the first bulk write anywhere (a shard writer's one
    ``put_many`` of its Arrow pieces) writes half its batch, then the worker
    process dies (SIGKILL), leaving a half-written shard directory."""
    import diskhash
    from diskhash._shards import sharded as _sharded

    def first() -> bool:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    class Dying(diskhash.PayloadStore):
        def put_many(self, edge_ids, payloads, **kw):  # type: ignore[no-untyped-def]
            if not first():
                return super().put_many(edge_ids, payloads, **kw)
            half = len(payloads) // 2
            super().put_many(edge_ids[:half], payloads[:half], **kw)
            self.save()
            os.kill(os.getpid(), signal.SIGKILL)

    _sharded.payload_store_class = lambda: Dying


@pytest.mark.slow
def test_worker_killed_while_writing_a_shard(tmp_path: Path) -> None:
    keys, payloads = make_data(20_000, 8)
    marker = str(tmp_path / "killed-once")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, direct_to_workers=True) as c:
        c.run(_kill_first_put_many, marker)
        build_store(frame(keys, payloads, 4), tmp_path / "set", shards=4,
                    id_columns=("lo", "hi"), client=c)
    assert os.path.exists(marker)                   # a worker did die mid-write
    with single_store(tmp_path / "one", keys, payloads) as one:
        assert_same_set(tmp_path / "set", one, keys)
    assert not [n for n in os.listdir(tmp_path / "set") if n.endswith(".tmp")]


def _always_die() -> None:
    from diskhash._shards import sharded as _sharded

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    _sharded.payload_store_class = die  # type: ignore[assignment]


@pytest.mark.slow
def test_build_fails_cleanly_when_workers_keep_dying(tmp_path: Path) -> None:
    keys, payloads = make_data(2000, 9)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster, direct_to_workers=True) as c:
            c.run(_always_die)
            # Restarted workers come back unpatched: patch them again as they appear.
            stop = threading.Event()

            def repatch() -> None:
                while not stop.is_set():
                    try:
                        c.run(_always_die)
                    except Exception:
                        pass
                    time.sleep(0.05)

            t = threading.Thread(target=repatch, daemon=True)
            t.start()
            try:
                with pytest.raises(ShardBuildError, match="no manifest was written") as info:
                    build_store(frame(keys, payloads, 2), tmp_path / "set", shards=2,
                                id_columns=("lo", "hi"), client=c)
            finally:
                stop.set()
                t.join()
    assert "KilledWorker" in str(info.value) or "died" in str(info.value)
    assert info.value.shard in (0, 1)
    assert not (tmp_path / "set" / "manifest.json").exists()
    with pytest.raises(ManifestError):
        ShardedStore(tmp_path / "set", readonly=True)


@pytest.mark.slow
def test_lookups_survive_a_worker_restart(tmp_path: Path) -> None:
    keys, payloads = make_data(5000, 10)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, direct_to_workers=True) as c:
        build_store(frame(keys, payloads, 2), tmp_path / "set", shards=4,
                    id_columns=("lo", "hi"), client=c)
        with LookupService(c, tmp_path / "set") as svc:
            assert svc.get_many(keys) == payloads
            _, pid = svc.actor(0).where().result()
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            assert svc.get_many(keys) == payloads          # actor reopened elsewhere
            assert pid not in {svc.actor(s).where().result()[1] for s in range(4)}
            _, pid = svc.actor(1).where().result()
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            assert svc.get_many_arrow(keys).to_pylist() == payloads     # the Arrow calls too
            assert pid not in {svc.actor(s).where().result()[1] for s in range(4)}
