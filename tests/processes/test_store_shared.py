"""One PayloadStore opened by several processes at once: writes take turns on
the robust mutex of store.lock's shared page, reads never wait, a compact()
of one process is followed by the others, a writer killed holding the lock
is finished by the next.  Every test runs real processes under a timeout;
payloads carry their key and version, so a reader tells a torn, stale or
foreign record from a right one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import finish, subprocess_env
from helpers.processes import spawn_python as spawn
from helpers.processes import versioned_payload as payload

from diskhash import IndexClosedError, PayloadStore

CHILD_TIMEOUT = 120

PRELUDE = r"""
import os, random, sys, time
from diskhash import PayloadStore

def payload(key, version, size=200):
    head = b"%d:%d:" % (key, version)
    return head + bytes([(key + version) & 0xFF]) * (size - len(head))

def check(key, got):
    if got is None:
        return -1
    k, v, rest = got.split(b":", 2)
    if int(k) != key or got != payload(key, int(v), len(got)):
        raise SystemExit(f"BAD key={key} {got[:40]!r}")
    return int(v)
"""

# Puts (acknowledged on stdout once they returned), overwrites, deletes; a
# compact() now and then when asked.
WRITER = PRELUDE + r"""
path, first, count, rounds, compact_every = sys.argv[1], *map(int, sys.argv[2:6])
rng = random.Random(first)
with PayloadStore(path, timeout=30) as s:
    for r in range(1, rounds + 1):
        for k in range(first, first + count):
            s.put(k, payload(k, r, rng.choice((40, 200, 1500))))
            print("ack", k, r, flush=True)
        if compact_every and r % compact_every == 0:
            s.compact()
        dead = first + rng.randrange(count)
        s.delete(dead)
        print("del", dead, r, flush=True)
    print("done", flush=True)
"""

# Reads every key of the ranges again and again until told to stop (stdin
# closed): each value checked, and a key's version never goes back.
READER = PRELUDE + r"""
import select
path, ranges = sys.argv[1], [tuple(map(int, r.split("+"))) for r in sys.argv[2:]]
keys = [k for first, count in ranges for k in range(first, first + count)]
seen = {}
reads = 0
with PayloadStore(path, readonly=True) as s:
    while not select.select([sys.stdin], [], [], 0)[0]:
        for k in keys:
            v = check(k, s.get(k))
            if v >= 0:
                if v < seen.get(k, 0):
                    raise SystemExit(f"WENT BACK key={k} {v} < {seen[k]}")
                seen[k] = v
            reads += 1
        for k, got in zip(keys, s.get_many(keys)):
            check(k, got)
print("reads", reads, flush=True)
"""


def acknowledged(out: str) -> "dict[int, int | None]":
    """What a writer's stdout says it stored: key -> last version (None: deleted)."""
    state: "dict[int, int | None]" = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ack":
            state[int(parts[1])] = int(parts[2])
        elif len(parts) == 3 and parts[0] == "del":
            state[int(parts[1])] = None
    return state


def check_store(path: Path, expected: "dict[int, int | None]", in_flight: bool = False) -> None:
    """Every acknowledged write is there; ``in_flight``: a killed writer's last
    call may have landed without its acknowledgement, so a newer version (or,
    after an acknowledged delete, any newer put) is right too."""
    with PayloadStore(path) as s:
        for key, version in expected.items():
            got = s.get(key)
            have = -1 if got is None else int(got.split(b":")[1])
            if version is None:
                assert got is None or in_flight, (key, got)
            elif in_flight:
                assert have >= version, (key, version, got)
            else:
                assert have == version, (key, version, got)
        s.verify()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    PayloadStore(path).close()
    return path


def test_three_writers_and_two_readers(store_path):
    """Three writer processes interleave puts, deletes and compact()s (the
    index grows under them) while two reader processes check every record:
    every acknowledged write is there at the end."""
    writers = [spawn(WRITER, store_path, i * 100_000, 1500, 4, 2 if i == 0 else 0) for i in range(3)]
    readers = [spawn(READER, store_path, "0+1500", "100000+1500", "200000+1500") for _ in range(2)]
    outs = [finish(w) for w in writers]
    reads = [int(finish(r).split()[-1]) for r in readers]
    assert all(n > 0 for n in reads), reads
    expected: "dict[int, int | None]" = {}
    for out in outs:
        assert out.endswith("done\n")
        expected.update(acknowledged(out))
    assert len(expected) == 4500
    check_store(store_path, expected)


def test_a_write_is_seen_by_a_read_that_starts_after_it(store_path):
    """put, overwrite and delete in process A; process B's get, started after
    A's call returned, sees each (a ping-pong over pipes), through compact()s
    of A that replace every file B has open."""
    script = PRELUDE + r"""
with PayloadStore(sys.argv[1]) as s:
    for line in sys.stdin:
        op, key, version = line.split()
        key, version = int(key), int(version)
        if op == "get":
            print(check(key, s.get(key)), flush=True)
        elif op == "put":
            s.put(key, payload(key, version)); print("ok", flush=True)
        elif op == "delete":
            s.delete(key); print("ok", flush=True)
        elif op == "compact":
            s.compact(); print("ok", flush=True)
"""
    a, b = spawn(script, store_path), spawn(script, store_path)
    try:
        def ask(proc: subprocess.Popen, line: str) -> str:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()

        for version in range(1, 40):
            key = version % 5
            assert ask(a, f"put {key} {version}") == "ok"
            assert ask(b, f"get {key} 0") == str(version)
            if version % 7 == 0:
                assert ask(a, f"delete {key} 0") == "ok"
                assert ask(b, f"get {key} 0") == "-1"
            if version % 10 == 0:
                assert ask(a, "compact 0 0") == "ok"
                assert ask(b, f"get {key} 0") == str(version)
                assert ask(b, f"put 99 {version}") == "ok"     # B writes to the new generation
                assert ask(a, "get 99 0") == str(version)
    finally:
        for p in (a, b):
            p.stdin.close()
        for p in (a, b):
            finish(p)


KILLED = PRELUDE + r"""
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(os.getpid())
with PayloadStore(path, timeout=30) as s:
    version = int(time.time() * 1e6)      # (later writers' versions are higher)
    while True:
        version += 1
        k = first + rng.randrange(count)
        how = rng.randrange(10)
        if how == 0:
            keys = [first + rng.randrange(count) for _ in range(50)]
            keys = list(dict.fromkeys(keys))
            s.put_many(keys, [payload(x, version) for x in keys])
            for x in keys:
                print("ack", x, version, flush=True)
        elif how == 1:
            with s.writing():
                for x in range(k, min(k + 5, first + count)):
                    s.put(x, payload(x, version, 3000))
                    print("ack", x, version, flush=True)
        elif how == 2:
            s.delete(k)
            print("del", k, version, flush=True)
        else:
            s.put(k, payload(k, version, rng.choice((30, 300, 5000))))
            print("ack", k, version, flush=True)
"""


def _kill_writers(store_path: Path, kills: int, seed: int) -> None:
    """Writers SIGKILLed at random moments, one after another, beside a second
    writer and a reader that run throughout: the acknowledged writes of every
    killed writer are there, nobody hangs, nothing read is damaged."""
    rng = random.Random(seed)
    other = subprocess.Popen([sys.executable, "-c", WRITER, str(store_path), "500000", "300", "1000000", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env())          # (runs until killed at the end)
    reader = spawn(READER, store_path, "0+200")
    expected: "dict[int, int | None]" = {}
    try:
        for i in range(kills):
            # (stdout to a file: a full pipe would stop the writer at a print)
            log = store_path.parent / f"victim-{i}.out"
            with open(log, "w") as out_file:
                victim = subprocess.Popen([sys.executable, "-c", KILLED, str(store_path), "0", "200"],
                                          stdout=out_file, stderr=subprocess.PIPE, text=True,
                                          env=subprocess_env())
                deadline = time.monotonic() + CHILD_TIMEOUT
                while not log.stat().st_size and victim.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)            # (until it writes: start-up is not the point)
                time.sleep(rng.uniform(0.0, 0.3))
                victim.send_signal(signal.SIGKILL)
                _out, err = victim.communicate(timeout=CHILD_TIMEOUT)
            assert victim.returncode == -signal.SIGKILL, err
            expected.update(acknowledged(log.read_text()))
            log.unlink()
            assert other.poll() is None, other.communicate()
            assert reader.poll() is None, reader.communicate()
        # the killed writers' keys: a last writer that is not killed checks them
    finally:
        finish(reader)
        other.kill()
        other.communicate()
    assert expected, "no writer got as far as a write before its kill"
    check_store(store_path, expected, in_flight=True)


def test_writers_killed_at_random_moments(store_path):
    _kill_writers(store_path, 6, 1)


@pytest.mark.slow
def test_writers_killed_200_times(store_path):
    _kill_writers(store_path, 200, 2)


def test_a_killed_writer_holding_the_lock_is_recovered(store_path):
    """A writer SIGKILLed inside ``writing()`` (it holds the lock for ever):
    the next write of another process finishes its frames and goes on; its
    acknowledged writes are there."""
    script = PRELUDE + r"""
s = PayloadStore(sys.argv[1])
with s.writing():
    for k in range(100):
        s.put(k, payload(k, 1))
    print("holding", flush=True)
    time.sleep(600)
"""
    holder = spawn(script, store_path)
    assert holder.stdout.readline().strip() == "holding"
    with PayloadStore(store_path, readonly=True) as r:
        assert r.get(5) == payload(5, 1)            # a reader never waits for it
    holder.kill()
    holder.communicate()
    with PayloadStore(store_path) as s:             # its first write lock recovers
        s.put(1000, b"after")
        assert [s.get(k) for k in range(100)] == [payload(k, 1) for k in range(100)]
        s.verify()


def test_a_killed_reader_changes_nothing(store_path):
    with PayloadStore(store_path) as s:
        s.put_many(list(range(300)), [payload(k, 1) for k in range(300)])
        reader = spawn(READER, store_path, "0+300")
        time.sleep(0.3)
        reader.kill()
        reader.communicate()
        s.put(7, payload(7, 2))
        assert s.get(7) == payload(7, 2) and s.get(8) == payload(8, 1)
    with PayloadStore(store_path) as s:
        assert s.recovery is None and len(s) == 300


def test_fork_child_gets_a_clear_error_and_opens_its_own(store_path):
    """A store opened before fork() is unusable in the child (IndexClosedError
    naming the fix); the child's own open works beside the parent's."""
    s = PayloadStore(store_path)
    s.put(1, b"parent")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # pragma: no cover - the child
        status = 1
        try:
            os.close(r)
            try:
                s.get(1)
            except IndexClosedError as exc:
                if "open it again in the child" in str(exc):
                    with PayloadStore(store_path) as mine:
                        mine.put(2, b"child")
                        status = 0 if mine.get(1) == b"parent" else 3
            os.write(w, b"%d" % status)
        finally:
            os._exit(status)
    os.close(w)
    _, code = os.waitpid(pid, 0)
    answer = os.read(r, 16)
    os.close(r)
    assert os.waitstatus_to_exitcode(code) == 0 and answer == b"0", answer
    assert s.get(2) == b"child"
    s.put(3, b"parent again")
    s.close()
    with PayloadStore(store_path) as again:
        assert again.recovery is None
        assert [again.get(k) for k in (1, 2, 3)] == [b"parent", b"child", b"parent again"]


def test_a_network_file_system_warns(store_path, monkeypatch):
    """An open on a network file system warns, naming it (processes of two
    machines must not share one store); here the test's own file system is
    made to count as one."""
    import warnings

    from diskhash import NetworkFileSystemWarning
    from diskhash._fs import files

    real = files.network_file_system(str(store_path / "store.lock"))
    assert real is None                     # (the tests run on a local file system)
    here = files.file_system_type(str(store_path))
    assert here                             # (ext4, tmpfs, overlay ...)
    monkeypatch.setattr(files, "NETWORK_FILE_SYSTEMS", frozenset({here}))
    with pytest.warns(NetworkFileSystemWarning, match="network file system"):
        PayloadStore(store_path).close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetworkFileSystemWarning)
        with PayloadStore(store_path, readonly=True) as s:
            assert len(s) == 0



def test_async_put_waits_off_the_loop_while_another_process_writes(store_path):
    """Another process holds the writer lock for seconds (a long ``writing()``
    block; a ``compact()`` would too): ``await store.put`` waits in a worker
    thread while the event loop goes on (a heartbeat task keeps ticking), and
    completes once the lock is free; an async read meanwhile does not wait."""
    script = PRELUDE + r"""
s = PayloadStore(sys.argv[1])
with s.writing():
    s.put(1, payload(1, 1))
    print("holding", flush=True)
    time.sleep(2.0)
print("released", flush=True)
s.close()
"""
    holder = spawn(script, store_path)
    assert holder.stdout.readline().strip() == "holding"
    import anyio

    from diskhash import AsyncPayloadStore

    async def main() -> "tuple[float, float, bytes | None]":
        gaps: "list[float]" = []
        async with await AsyncPayloadStore.open(store_path) as s:
            stop = anyio.Event()

            async def heartbeat() -> None:
                last = time.monotonic()
                while not stop.is_set():
                    await anyio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                t0 = time.monotonic()
                first = await s.get(1)              # a read: never waits for the writer
                await s.put(2, payload(2, 1))       # waits for the holder, off the loop
                waited = time.monotonic() - t0
                stop.set()
        return max(gaps), waited, first

    worst_gap, waited, first = anyio.run(main)
    finish(holder)
    assert first == payload(1, 1)
    assert waited > 0.5                             # the put did wait for the other process
    assert worst_gap < 0.5, f"the event loop stalled {worst_gap:.3f}s"
    with PayloadStore(store_path) as s:
        assert s.get(2) == payload(2, 1)


def test_async_reads_follow_another_process_compact(store_path):
    """Process B's compact()s replace every file; process A's async reads
    (get, get_many, meta, contains, inline put) go on and see B's writes."""
    script = PRELUDE + r"""
with PayloadStore(sys.argv[1]) as s:
    for line in sys.stdin:
        k = int(line)
        s.put(k, payload(k, 2))
        s.compact()
        print("ok", flush=True)
"""
    with PayloadStore(store_path) as s:
        s.put_many(list(range(50)), [payload(k, 1) for k in range(50)])
    b = spawn(script, store_path)
    import anyio

    from diskhash import AsyncPayloadStore

    async def main() -> None:
        async with await AsyncPayloadStore.open(store_path) as s:
            for k in range(10):
                b.stdin.write(f"{k}\n")
                b.stdin.flush()
                assert b.stdout.readline().strip() == "ok"
                assert await s.get(k) == payload(k, 2)
                assert (await s.meta(k)).length == len(payload(k, 2))
                assert await s.contains(k)
                assert await s.get_many([k, 40]) == [payload(k, 2), payload(40, 1)]
                await s.put(100 + k, payload(100 + k, 1))
            assert await s.get(105) == payload(105, 1)

    anyio.run(main)
    finish(b)


def test_iteration_while_another_process_writes(store_path):
    """Iterating the keys while another process adds keys raises
    ``RuntimeError``, as for another thread (it went on, and could miss keys
    another process's delete moved); inside ``writing()`` the other
    process's writes wait and the walk sees exactly the keys there were."""
    with PayloadStore(store_path) as s:
        s.put_many(list(range(5000)), [b"v"] * 5000)
        writer = spawn(PRELUDE + r"""
with PayloadStore(sys.argv[1]) as s:
    print("writing", flush=True)
    k = 10**6
    while True:
        s.put(k, b"w")
        k += 1
""", store_path)
        try:
            assert writer.stdout.readline().strip() == "writing"
            with pytest.raises(RuntimeError, match="changed size during iteration"):
                for i, _ in enumerate(s.keys()):
                    if i % 500 == 0:
                        time.sleep(0.02)
            with s.writing():
                before = len(s)
                walked = []
                for i, key in enumerate(s.keys()):
                    walked.append(key)
                    if i % 500 == 0:
                        time.sleep(0.002)
                assert len(walked) == len(set(walked)) == before == len(s)
                assert set(range(5000)) <= set(walked)
        finally:
            writer.kill()
            writer.communicate()
