"""Lookups grouped per worker process: ``ShardActor.get_group`` answers for the
shards whose actors live in its process, and ``LookupService`` asks each
shard's own actor for whatever a group call could not answer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
import anyio  # noqa: E402
from helpers.records import random_key_array  # noqa: E402

from diskhash import KEY_DTYPE, IndexClosedError, ShardedStore  # noqa: E402
from diskhash._shards import manifest as _manifest  # noqa: E402
from diskhash._shards import routing as _routing  # noqa: E402
from diskhash.dask import LookupService, ShardActor  # noqa: E402


def make_set(path: Path, n: int = 3000, shards: int = 3) -> tuple[np.ndarray, list[bytes]]:
    rng = np.random.default_rng(7)
    keys = random_key_array(rng, n)
    sizes = rng.integers(0, 50, n)
    sizes[::5] = 0                                   # empty payloads
    payloads = [rng.bytes(int(s)) for s in sizes]
    with ShardedStore(path, shards=shards) as store:
        store.put_many(keys, payloads)
        store.save()
    return keys, payloads


def by_shard(keys: np.ndarray, manifest: _manifest.Manifest) -> list[np.ndarray]:
    sid = _routing.shards_of(keys, manifest.seed, manifest.shards)
    return [keys[sid == s] for s in range(manifest.shards)]


def group(actor: ShardActor, parts: list[np.ndarray], shards: list[int]) -> list:
    import pickle

    sub = np.concatenate([parts[s] for s in shards])
    raw = anyio.run(actor.get_group, sub, shards, [len(parts[s]) for s in shards])
    return pickle.loads(raw)


def test_get_group_answers_for_its_siblings_and_none_for_others(tmp_path: Path) -> None:
    keys, _ = make_set(tmp_path / "set")
    absent = np.zeros(40, dtype=KEY_DTYPE)
    absent["lo"] = np.arange(1, 41, dtype=np.uint64)
    mixed = np.concatenate([keys, absent])           # present and absent keys
    manifest = _manifest.read_manifest(str(tmp_path / "set"))
    parts = by_shard(mixed, manifest)
    a0 = ShardActor(str(tmp_path / "set"), manifest, 0, service="svc-a")
    a1 = ShardActor(str(tmp_path / "set"), manifest, 1, service="svc-a")
    other = ShardActor(str(tmp_path / "set"), manifest, 2, service="svc-b")   # another service
    try:
        with ShardedStore(tmp_path / "set", readonly=True) as local:
            want = [local.get_many(p) for p in parts]
        assert any(None in w for w in want) and any(b"" in w for w in want)
        got = group(a0, parts, [0, 1, 2])
        assert got[0] == want[0] and got[1] == want[1]
        assert got[2] is None                        # shard 2 has no actor of svc-a here
        assert group(a1, parts, [1, 0]) == [want[1], want[0]]
        import pickle
        assert pickle.loads(anyio.run(a0.get_many, parts[0])) == want[0]   # the one-shard call
        a1.close()
        assert group(a0, parts, [0, 1]) == [want[0], None]    # a closed sibling is not asked
        with pytest.raises(ValueError, match="2 shards, 1 counts"):
            anyio.run(a0.get_group, parts[0], [0, 1], [len(parts[0])])
    finally:
        for a in (a0, a1, other):
            a.close()


# ``client``: the session's one LocalCluster (tests/shards/conftest.py).


def set_and_mixed_keys(tmp_path: Path, seed: int) -> np.ndarray:
    """A set of 4,000 keys in 5 shards at ``tmp_path / "set"``; its keys and
    300 absent ones, shuffled."""
    keys, _ = make_set(tmp_path / "set", n=4000, shards=5)
    absent = np.zeros(300, dtype=KEY_DTYPE)
    absent["hi"] = np.arange(1, 301, dtype=np.uint64)
    mixed = np.concatenate([keys, absent])
    np.random.default_rng(seed).shuffle(mixed)
    return mixed


def test_lookups_grouped_per_worker_equal_local_lookups(client, tmp_path: Path) -> None:
    mixed = set_and_mixed_keys(tmp_path, seed=3)
    with ShardedStore(tmp_path / "set", readonly=True) as local, \
            LookupService(client, tmp_path / "set") as svc:
        want = local.get_many(mixed)
        pids = [svc.actor(s).where().result()[1] for s in range(5)]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert svc.get_many(mixed) == want
        # Places gone stale (as after a worker restart): every shard looks as if
        # it lived with shard 0's actor.  That actor answers only for the shards
        # of its own process; the others are asked through their own actors.
        svc._places = [("stale-host", -1)] * 5
        asked_alone = []
        one_by_one = svc._result

        def counted(s, sub, fut, arrow=False):
            asked_alone.append(s)
            return one_by_one(s, sub, fut, arrow)

        svc._result = counted
        assert svc.get_many(mixed) == want
        assert sorted(asked_alone) == [s for s in range(5) if pids[s] != pids[0]]
        assert svc.get_many(mixed[:1]) == want[:1]


# -- Arrow answers -------------------------------------------------------------------------

def test_get_group_arrow_answers_in_arrow_and_names_the_shards_it_answered(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    keys, _ = make_set(tmp_path / "set")
    absent = np.zeros(40, dtype=KEY_DTYPE)
    absent["lo"] = np.arange(1, 41, dtype=np.uint64)
    manifest = _manifest.read_manifest(str(tmp_path / "set"))
    parts = by_shard(np.concatenate([keys, absent]), manifest)
    a0 = ShardActor(str(tmp_path / "set"), manifest, 0, service="svc-a")
    a1 = ShardActor(str(tmp_path / "set"), manifest, 1, service="svc-a")
    try:
        with ShardedStore(tmp_path / "set", readonly=True) as local:
            want = [local.get_many(p) for p in parts]
        one = anyio.run(a0.get_many_arrow, parts[0])
        assert isinstance(one, pa.RecordBatch) and one.column(0).type == pa.large_binary()
        assert one.column(0).to_pylist() == want[0]
        sub = np.concatenate([parts[s] for s in (1, 2, 0)])
        table = anyio.run(a0.get_group_arrow, sub, [1, 2, 0], [len(parts[s]) for s in (1, 2, 0)])
        assert isinstance(table, pa.Table)
        assert table.schema.metadata[b"answered"] == b"1,0,1"      # no actor of shard 2 here
        assert table.column(0).to_pylist() == want[1] + want[0]
        with pytest.raises(ValueError, match="2 shards, 1 counts"):
            anyio.run(a0.get_group_arrow, parts[0], [0, 1], [len(parts[0])])
    finally:
        a0.close()
        a1.close()


def test_lookup_service_get_many_arrow_sends_arrow_in_key_order(client, tmp_path: Path) -> None:
    """The actors answer with Arrow record batches and tables (no pickled
    list of bytes); the service puts them in key order with nulls for the
    absent keys, grouped per worker and, with stale places, shard by shard."""
    pa = pytest.importorskip("pyarrow")
    mixed = set_and_mixed_keys(tmp_path, seed=4)
    with ShardedStore(tmp_path / "set", readonly=True) as local, \
            LookupService(client, tmp_path / "set") as svc:
        want = local.get_many(mixed)
        assert want.count(None) == 300 and b"" in want
        seen = svc.actor(0).get_many_arrow(mixed[:10]).result()
        assert isinstance(seen, pa.RecordBatch)                      # Arrow on the wire
        asked = []
        call, call_group = svc._call, svc._call_group
        svc._call = lambda actor, sub, arrow=False: asked.append(arrow) or call(actor, sub, arrow)
        svc._call_group = lambda actor, sub, members, counts, arrow=False: (
            asked.append(arrow) or call_group(actor, sub, members, counts, arrow))
        got = svc.get_many_arrow(mixed)
        assert asked and all(asked)                                  # no pickled list asked for
        assert isinstance(got, pa.LargeBinaryArray)
        assert got.to_pylist() == want and got.null_count == 300
        got.validate(full=True)
        raw = mixed.tobytes()
        fixed = pa.array([raw[16 * i:16 * i + 16] for i in range(len(mixed))], type=pa.binary(16))
        assert svc.get_many_arrow(fixed).to_pylist() == want       # Arrow keys
        assert svc.get_many_arrow(mixed[:1]).to_pylist() == want[:1]
        empty = svc.get_many_arrow(np.zeros(0, dtype=KEY_DTYPE))
        assert len(empty) == 0 and empty.type == pa.large_binary()
        svc._places = [("stale-host", -1)] * 5           # groups answered in part
        assert svc.get_many_arrow(mixed).to_pylist() == want
    with pytest.raises(IndexClosedError):
        svc.get_many_arrow(mixed)
