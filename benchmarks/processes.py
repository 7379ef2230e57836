"""Several processes on one index or store, side by side with py-lmdb against speed targets.

    python benchmarks/processes.py [--entries 200000] [--seconds 2] [--rounds 2] [--dir DIR] [--quick]

Two data sets, each in diskhash and in py-lmdb, built before anything is timed:

* index: ``DiskHashIndex`` with one ``PayloadMeta`` record per key (a
  fixed-size slot), against py-lmdb with the same keys (16 bytes) and a
  32-byte value;
* store: ``PayloadStore`` with 1 KiB payloads, against py-lmdb with the
  same 1 KiB values.

For each, three targets, each printed with PASS or MISS:

(a) a reader process's ``get`` rate while another process writes as fast as
    it can: diskhash >= 2x py-lmdb;
(b) a writer process's ``put`` (index: ``insert``) rate while 2 reader
    processes read as fast as they can: diskhash >= 1.5x py-lmdb;
(c) one process, ``put`` then ``get`` of every key: the default shared
    mode within 10% of ``exclusive=True`` (where the class has it).

py-lmdb does what a server would: a read transaction per ``get``, a write
transaction per ``put``.  Its environments are opened with ``sync=False,
metasync=False``: a commit then survives a process crash but not a power
loss, as a diskhash write does before ``save()`` (with ``sync=True`` every
commit would wait for the disk and the comparison would be of fsyncs); its
writers with ``writemap=True`` too, its fastest way to commit (3-4x more
puts a second than through ``pwrite`` on the development VM).
Readers and writers open with the default constructors (the readers
``readonly=True``), keys are random over the data set, writers overwrite
existing keys (no grow).

The store part needs two processes to open one ``PayloadStore`` at once
(readers beside a writer, writable opens beside each other); where that
raises ``IndexLockedError`` it prints "store: needs the shared store" and
skips the store.

Each process figure is the best of ``--rounds`` runs of ``--seconds``,
diskhash and py-lmdb interleaved; (c) the best of 5 (or ``--rounds``)
interleaved runs.  The machine shows in every figure: on
the 2-core development VM the readers and the writer compete for 2 cores
(with whatever else runs there): run it twice.  ``--quick`` is a smoke run
(20,000 entries, 0.5 s per figure, one round).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import time

import lmdb

from diskhash import DiskHashIndex, PayloadMeta, PayloadStore
from diskhash.errors import IndexLockedError

PAYLOAD = 1024                  # bytes per store payload / py-lmdb value
LMDB_INDEX_VALUE = 32           # bytes per py-lmdb value beside the index
BATCH = 1000                    # operations between two clock / stop checks
SAMPLE = 100_000                # random keys each process cycles through

# (a), (b), (c): diskhash / py-lmdb at least this much ((c): shared / exclusive)
TARGET_READ = 2.0
TARGET_WRITE = 1.5
TARGET_SHARED = 0.9


# ---------------------------------------------------------------------------
# Opening and one operation, per kind: "index", "store", "lmdb-index", "lmdb-store".

def lmdb_key(k: int) -> bytes:
    return k.to_bytes(16, "little")


def open_env(path: str, readonly: bool) -> "lmdb.Environment":
    return lmdb.open(path, map_size=1 << 32, readonly=readonly, sync=False, metasync=False,
                     writemap=not readonly, readahead=False, max_readers=64)


def opener(kind: str, path: str, readonly: bool):
    if kind == "index":
        return DiskHashIndex(path, readonly=readonly)
    if kind == "store":
        return PayloadStore(path, readonly=readonly)
    return open_env(path, readonly)


def getter(kind: str, handle):
    """A one-argument get of this kind (py-lmdb: one read transaction per call)."""
    if kind in ("index", "store"):
        return handle.get
    begin = handle.begin

    def get(key: bytes) -> "bytes | None":
        with begin() as txn:
            return txn.get(key)
    return get


def putter(kind: str, handle):
    """A two-argument put of this kind (py-lmdb: one write transaction per call)."""
    if kind == "index":
        return handle.insert
    if kind == "store":
        return handle.put
    begin = handle.begin

    def put(key: bytes, value: bytes) -> None:
        with begin(write=True) as txn:
            txn.put(key, value)
    return put


def sample_keys(kind: str, n: int, seed: int) -> list:
    rng = random.Random(seed)
    keys = [rng.randrange(n) for _ in range(min(SAMPLE, 10 * n))]
    return [lmdb_key(k) for k in keys] if kind.startswith("lmdb") else keys


def sample_values(kind: str, keys: list, version: int) -> list:
    """What a writer writes for each of ``keys`` (same size as what is stored)."""
    if kind == "index":
        return [PayloadMeta(k, version * 4096 + k, PAYLOAD, 0, PAYLOAD) for k in keys]
    if kind == "lmdb-index":
        return [struct.pack("<QQQQ", version, version * 4096, PAYLOAD, PAYLOAD)] * len(keys)
    blob = os.urandom(PAYLOAD + 64)
    return [blob[i % 64:i % 64 + PAYLOAD] for i in range(len(keys))]


# ---------------------------------------------------------------------------
# Worker processes: run for ``seconds`` (then report ops/s) or until ``stop``.

def _run(op, keys: list, values: "list | None", seconds: "float | None", stop) -> float:
    done = 0
    t = time.perf_counter()
    end = t + seconds if seconds is not None else None
    i = 0
    m = len(keys)
    while True:
        if values is None:
            for j in range(i, i + BATCH):
                op(keys[j % m])
        else:
            for j in range(i, i + BATCH):
                op(keys[j % m], values[j % m])
        i = (i + BATCH) % m
        done += BATCH
        if end is not None:
            if time.perf_counter() >= end:
                break
        elif stop.is_set():
            break
    return done / (time.perf_counter() - t)


def reader_process(kind: str, path: str, n: int, seed: int, seconds, ready, go, stop, out) -> None:
    handle = opener(kind, path, readonly=True)
    try:
        get = getter(kind, handle)
        keys = sample_keys(kind, n, seed)
        ready.put(os.getpid())
        go.wait()
        out.put(("read", _run(get, keys, None, seconds, stop)))
    finally:
        handle.close()


def writer_process(kind: str, path: str, n: int, seed: int, seconds, ready, go, stop, out) -> None:
    handle = opener(kind, path, readonly=False)
    try:
        put = putter(kind, handle)
        keys = sample_keys(kind, n, seed)
        values = sample_values(kind, keys, seed)
        ready.put(os.getpid())
        go.wait()
        out.put(("write", _run(put, keys, values, seconds, stop)))
    finally:
        handle.close()


def contended(kind: str, path: str, n: int, seconds: float, readers: int, timed: str) -> float:
    """ops/s of the timed side: ``timed="read"``: one reader (``readers`` = 1)
    beside a writer that runs until it is told to stop; ``timed="write"``:
    one writer beside ``readers`` readers that run until it is done."""
    ctx = multiprocessing.get_context("spawn")
    ready, out, go, stop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    procs = []
    for r in range(readers):
        secs = seconds if timed == "read" else None
        procs.append(ctx.Process(target=reader_process,
                                 args=(kind, path, n, 100 + r, secs, ready, go, stop, out)))
    secs = seconds if timed == "write" else None
    procs.append(ctx.Process(target=writer_process, args=(kind, path, n, 7, secs, ready, go, stop, out)))
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        go.set()
        what, rate = out.get(timeout=seconds + 300)
        assert what == timed, (what, timed)
        stop.set()
        for _ in procs[1:]:
            out.get(timeout=120)
    finally:
        stop.set()
        for p in procs:
            p.join(120)
            if p.is_alive():
                p.kill()
    return rate


# ---------------------------------------------------------------------------
# Building the data sets (not timed).

def build(kind: str, path: str, n: int) -> None:
    if kind == "index":
        with DiskHashIndex(path, capacity=n) as idx:
            ins = idx.insert
            for k in range(n):
                ins(k, PayloadMeta(k, k * 4096, PAYLOAD, 0, PAYLOAD))
    elif kind == "store":
        with PayloadStore(path) as s:
            blob = os.urandom(PAYLOAD + 64)
            for start in range(0, n, 10_000):
                ks = range(start, min(n, start + 10_000))
                s.put_many(ks, [blob[k % 64:k % 64 + PAYLOAD] for k in ks])
    else:
        env = open_env(path, readonly=False)
        size = LMDB_INDEX_VALUE if kind == "lmdb-index" else PAYLOAD
        blob = os.urandom(size + 64)
        with env.begin(write=True) as txn:
            for k in range(n):
                txn.put(lmdb_key(k), blob[k % 64:k % 64 + size])
        env.sync(True)
        env.close()


def single(kind: str, path: str, n: int, exclusive: bool) -> "tuple[float, float]":
    """One process: put (index: insert) then get every key, ops/s."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    keys = list(range(n))
    random.Random(1).shuffle(keys)
    if kind == "index":
        handle = DiskHashIndex(path, exclusive=exclusive, capacity=n)
        values = [PayloadMeta(k, k, PAYLOAD, 0, PAYLOAD) for k in keys]
        put = handle.insert
    else:
        handle = PayloadStore(path, exclusive=exclusive)
        values = sample_values("store", keys, 1)
        put = handle.put
    try:
        t = time.perf_counter()
        for k, v in zip(keys, values):
            put(k, v)
        put_rate = n / (time.perf_counter() - t)
        get = handle.get
        random.Random(2).shuffle(keys)
        t = time.perf_counter()
        for k in keys:
            get(k)
        get_rate = n / (time.perf_counter() - t)
    finally:
        handle.close()
    return put_rate, get_rate


def store_is_shared(path: str) -> bool:
    """Whether a second writable ``PayloadStore`` opens beside a first."""
    with PayloadStore(path):
        try:
            PayloadStore(path).close()
        except IndexLockedError:
            return False
    return True


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def section(name: str, kind: str, d: str, args: argparse.Namespace) -> None:
    n, secs = args.entries, args.seconds
    print(f"\n{name}: {n:,} entries, (a) and (b) best of {args.rounds}, (c) of {args.single_rounds}", flush=True)
    ours, theirs = os.path.join(d, kind), os.path.join(d, f"lmdb-{kind}")
    t = time.perf_counter()
    build(kind, ours, n)
    build(f"lmdb-{kind}", theirs, n)
    print(f"  built both in {time.perf_counter() - t:.1f} s", flush=True)

    best: dict = {}
    for _ in range(args.rounds):                    # interleaved
        for target, readers, timed in (("a", 1, "read"), ("b", 2, "write")):
            for who, path in (("diskhash", ours), ("py-lmdb", theirs)):
                k = kind if who == "diskhash" else f"lmdb-{kind}"
                rate = contended(k, path, n, secs, readers, timed)
                best[target, who] = max(best.get((target, who), 0.0), rate)
    for target, what, goal in (("a", "(a) a reader process's get while another process writes",
                                TARGET_READ),
                               ("b", "(b) a writer's put while 2 reader processes read", TARGET_WRITE)):
        ours_rate, their_rate = best[target, "diskhash"], best[target, "py-lmdb"]
        ratio = ours_rate / their_rate
        print(f"  {what}: diskhash {ours_rate / 1e6:.3f} M/s, py-lmdb {their_rate / 1e6:.3f} M/s "
              f"({ratio:.2f}x) {verdict(ratio >= goal)} (>= {goal}x)", flush=True)

    path = os.path.join(d, f"single-{kind}")
    try:
        rates = {ex: [0.0, 0.0] for ex in (True, False)}
        for _ in range(args.single_rounds):         # (short runs: more of them)
            for ex in (True, False):
                put, got = single(kind, path, n, ex)
                rates[ex][0], rates[ex][1] = max(rates[ex][0], put), max(rates[ex][1], got)
    except TypeError as exc:                        # no exclusive= on this class
        print(f"  (c) single process: no exclusive=True to compare with ({exc})")
        return
    for what, col in (("put" if kind == "store" else "insert", 0), ("get", 1)):
        ex, sh = rates[True][col], rates[False][col]
        print(f"  (c) single process {what}: exclusive {ex / 1e6:.3f} M/s, shared {sh / 1e6:.3f} M/s "
              f"({sh / ex:.0%}) {verdict(sh >= TARGET_SHARED * ex)} (within 10%)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=None, help="entries per data set (200,000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per timed run (2)")
    parser.add_argument("--rounds", type=int, default=None, help="runs per figure, best kept (2)")
    parser.add_argument("--only", choices=["index", "store"], default=None)
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="20,000 entries, 0.5 s, one round")
    args = parser.parse_args()
    quick = args.quick
    args.entries = args.entries or (20_000 if quick else 200_000)
    args.seconds = args.seconds or (0.5 if quick else 2.0)
    args.rounds = args.rounds or (1 if quick else 2)
    args.single_rounds = 1 if quick else max(5, args.rounds)

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores{' (the readers and the writer compete for 2 cores)' if cores <= 2 else ''}, "
          f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
          f"py-lmdb {lmdb.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    d = tempfile.mkdtemp(dir=args.dir)
    try:
        if args.only in (None, "index"):
            section("index (DiskHashIndex records vs py-lmdb 32-byte values)", "index", d, args)
        if args.only in (None, "store"):
            probe = os.path.join(d, "probe-store")
            if store_is_shared(probe):
                section("store (PayloadStore vs py-lmdb, 1 KiB values)", "store", d, args)
            else:
                print("\nstore: needs the shared store (a second writable PayloadStore raised "
                      "IndexLockedError); skipped")
    finally:
        shutil.rmtree(d)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", file=sys.stdout)


if __name__ == "__main__":
    main()
