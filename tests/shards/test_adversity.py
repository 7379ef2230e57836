"""Hostile conditions for sharded sets: close racing calls from threads, SIGKILL
while a set is created, a full disk.  Crash and hang checks run in a subprocess
with a timeout."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

from diskhash import ManifestError, ShardedStore, ShardMismatchError


def run_child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env())


@pytest.mark.slow
def test_close_racing_calls_from_threads(tmp_path: Path) -> None:
    code = """
        import sys, threading, numpy as np, diskhash
        from diskhash import ShardedStore, DiskHashError
        for round in range(6):
            s = ShardedStore(f"{sys.argv[1]}/set{round}", shards=4)
            s.put_many(list(range(2000)), [b"x" * 50] * 2000)
            stop = threading.Event()
            bad = []
            def hammer(i):
                calls = [lambda: s.get_many(np.arange(500, dtype=np.uint64)),
                         lambda: s.put_many([i, i + 1], [b"a", b"b"]),
                         lambda: s.get(i), lambda: len(s), lambda: list(s),
                         lambda: i in s, lambda: s.stats(), s.save]
                while not stop.is_set():
                    for c in calls:
                        try:
                            c()
                        except (DiskHashError, RuntimeError):
                            pass          # closed, or keys changed under an iterator
                        except BaseException as e:
                            bad.append(repr(e)); return
            ts = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
            for t in ts: t.start()
            threading.Event().wait(0.02 * (round % 5))
            s.close()
            stop.set()
            for t in ts: t.join()
            assert not bad, bad
        print("OK")
    """
    out = run_child(code, str(tmp_path), timeout=240)
    assert out.returncode == 0 and "OK" in out.stdout, (out.returncode, out.stderr[-3000:])


@pytest.mark.slow
def test_sigkill_while_creating_and_filling(tmp_path: Path) -> None:
    # Killed at a random moment, a set either opens with whole records or is
    # reported unfinished (ManifestError); never half a manifest or a crash.
    code = """
        import sys
        from diskhash import ShardedStore
        with ShardedStore(sys.argv[1], shards=8) as s:
            for i in range(50):
                s.put_many(list(range(i * 100, i * 100 + 100)), [b"%d" % j for j in range(100)])
                s.save()
    """
    rng = random.Random(13)
    outcomes = set()
    for attempt in range(5):
        path = tmp_path / f"set{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path)],
                                env=subprocess_env())
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        try:
            with ShardedStore(path, readonly=True) as s:
                for k in list(s)[:300]:
                    assert s.get(k) == b"%d" % (k % 100)
                outcomes.add("opened")
        except ManifestError as exc:
            assert "unfinished" in str(exc)
            outcomes.add("unfinished")
        except FileNotFoundError:
            outcomes.add("nothing yet")
    assert outcomes <= {"opened", "unfinished", "nothing yet"}


@pytest.fixture
def small_ext4(tmp_path: Path):
    if os.geteuid() != 0 or not os.path.exists("/sbin/mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted ext4 image")
    img, mnt = tmp_path / "img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "24M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot loop-mount here")
    try:
        yield mnt
    finally:
        # A mount left behind breaks pytest's clean-up of old temp dirs for
        # every later run: fall back to a lazy unmount.
        if subprocess.run(["umount", str(mnt)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_keeps_what_was_saved(small_ext4: Path) -> None:
    code = """
        import sys
        from diskhash import ShardedStore
        s = ShardedStore(sys.argv[1], shards=4)
        saved = 0
        try:
            for i in range(1000):
                s.put_many(list(range(i * 50, i * 50 + 50)), [bytes([i % 251]) * 20000] * 50)
                s.save()
                saved = (i + 1) * 50
        except OSError as e:
            print("ENOSPC" if e.errno == 28 else repr(e))
        print("SAVED", saved)
        try:
            s.close()
        except OSError:
            pass
    """
    out = run_child(code, str(small_ext4 / "set"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ENOSPC" in out.stdout, out.stdout
    saved = int(out.stdout.split("SAVED")[1].split()[0])
    assert saved > 0
    with ShardedStore(small_ext4 / "set", readonly=True) as s:
        for k in range(0, saved, 7):
            assert s.get(k) == bytes([(k // 50) % 251]) * 20000


# -- creating a set: concurrent creators, an interrupted creation -------------------

CREATOR = """
import os, sys, time
from diskhash import ShardedStore
base, wid, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
open(os.path.join(base, f"ready-{wid}"), "w").close()
for r in range(rounds):
    go = os.path.join(base, f"go{r}")
    while not os.path.exists(go):
        time.sleep(0.0005)
    with ShardedStore(os.path.join(base, f"set{r}"), shards=4, timeout=60) as s:
        s.put(1000 * r + wid, b"w%d" % wid)
        s.save()
    open(os.path.join(base, f"done{r}-{wid}"), "w").close()
print("OK")
"""


def _race_creators(base: Path, rounds: int, workers: int = 4) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, str(base), str(w), str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env()) for w in range(workers)]
    try:
        deadline = time.monotonic() + 120       # all of them started (past their imports)
        while not all((base / f"ready-{w}").exists() for w in range(workers)):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "creators never started"
            time.sleep(0.005)
        for r in range(rounds):
            (base / f"go{r}").touch()
            deadline = time.monotonic() + 120
            while not all((base / f"done{r}-{w}").exists() for w in range(workers)):
                dead = [p for p in procs if p.poll() is not None and p.returncode != 0]
                assert not dead, dead[0].communicate()[1][-3000:]
                assert time.monotonic() < deadline, "creators hung"
                time.sleep(0.005)
            with ShardedStore(base / f"set{r}", readonly=True) as s:
                assert sorted(s) == [1000 * r + w for w in range(workers)], f"round {r}"
                for w in range(workers):
                    assert s.get(1000 * r + w) == b"w%d" % w
                s.verify()
            assert not (base / f"set{r}" / "manifest.lock").exists()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and "OK" in out, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_concurrent_creators_make_one_set(tmp_path: Path) -> None:
    # Four processes opening-or-creating one new directory at once: the
    # manifest named one set and the markers another (every open then a
    # ShardMismatchError), or a late creator re-seeded a set holding records.
    _race_creators(tmp_path, rounds=4)
    with pytest.raises(ShardMismatchError, match="4 shards, shards=3"):
        ShardedStore(tmp_path / "set0", shards=3)


@pytest.mark.slow
def test_concurrent_creators_make_one_set_many_rounds(tmp_path: Path) -> None:
    _race_creators(tmp_path, rounds=40)


KILLED_CREATOR = """
import os, signal, sys
import diskhash
from diskhash import ShardedStore
from diskhash._shards import manifest as _manifest
point, k = sys.argv[2], int(sys.argv[3])
calls = [0]
def killer(orig):
    def call(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **kw)
    return call
if point == "store-data":
    D = diskhash._store.generation.StoreDirectory; D.create_data_file = killer(D.create_data_file)
elif point == "store-manifest":
    D = diskhash._store.generation.StoreDirectory; D.write_manifest = killer(D.write_manifest)
elif point == "marker":
    _manifest.write_shard_marker = killer(_manifest.write_shard_marker)
elif point == "manifest":
    _manifest.write_manifest = killer(_manifest.write_manifest)
elif point == "clear":      # a second creator killed while clearing the first one's leftovers
    import shutil
    shutil.rmtree = killer(shutil.rmtree)
ShardedStore(sys.argv[1], shards=4).close()
print("NOT KILLED")
"""


@pytest.mark.parametrize("point,k", [("store-data", 1), ("store-manifest", 3), ("marker", 1),
                                     ("marker", 4), ("manifest", 1)])
def test_a_killed_creation_is_redone(tmp_path: Path, point: str, k: int) -> None:
    # A creator SIGKILLed part way left shards and no manifest; every later
    # ShardedStore(dir, shards=N) raised ManifestError ("build the set
    # again"), which is what failed.  Now the next creator clears and redoes it.
    path = tmp_path / "set"
    r = run_child(KILLED_CREATOR, str(path), point, str(k))
    assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr[-2000:])
    assert (path / "manifest.lock").exists()        # the killed holder could not remove it
    assert not (path / "manifest.json").exists()
    with pytest.raises(ManifestError, match="unfinished"):
        ShardedStore(path)                           # no shards=: nothing to create
    if len([n for n in os.listdir(path) if n.startswith("shard-")]) >= 2:
        # a second creator killed while clearing the leftovers (one shard
        # directory removed, not the next): the third finishes
        r = run_child(KILLED_CREATOR, str(path), "clear", "2")
        assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr[-2000:])
    with ShardedStore(path, shards=4) as s:
        s.put_many(list(range(100)), [b"%d" % i for i in range(100)])
    with ShardedStore(path, readonly=True) as s:
        assert len(s) == 100 and s.get(42) == b"42"
        s.verify()
    assert sorted(os.listdir(path)) == ["manifest.json"] + [f"shard-{i:05d}" for i in range(4)]


def test_an_unfinished_set_holding_records_is_never_cleared(tmp_path: Path) -> None:
    # No manifest but records (an interrupted build_store, or a lost
    # manifest.json): a creator refuses and removes nothing.
    path = tmp_path / "set"
    with ShardedStore(path, shards=3) as s:
        s.put_many(list(range(50)), [b"x%d" % i for i in range(50)])
    manifest = (path / "manifest.json").read_bytes()
    (path / "manifest.json").unlink()
    before = sorted(os.listdir(path))
    with pytest.raises(ManifestError, match="holds records"):
        ShardedStore(path, shards=3)
    assert sorted(os.listdir(path)) == before
    (path / "manifest.json").write_bytes(manifest)
    with ShardedStore(path, readonly=True) as s:
        assert len(s) == 50 and s.get(7) == b"x7"


def test_an_unfinished_set_with_a_foreign_entry_is_not_cleared(tmp_path: Path) -> None:
    path = tmp_path / "set"
    (path / "shard-00000").mkdir(parents=True)
    (path / "shard-00001").write_bytes(b"not a shard")
    with pytest.raises(ManifestError, match="not a shard directory"):
        ShardedStore(path, shards=2)
    assert (path / "shard-00001").read_bytes() == b"not a shard"
