"""PayloadStore side by side with py-lmdb, sqlite3 and diskcache, in one run.

(The issue-11 targets. Every peer -- RocksDB, LevelDB, dbm.gnu too -- at
several sizes, saved as JSON and drawn: ``store_peers.py`` and ``report.py``.)

    pip install ".[bench]"      # lmdb, diskcache, lz4, zstandard, numpy
    python benchmarks/store_compare.py [--entries 1000000] [--lookups 200000] [--repeat 3] [--dir DIR]

Two data sets of ``--entries`` payloads of 1 KiB under random 128-bit keys:
``text`` (compressible words) and ``random`` (incompressible bytes).  For each:

* PayloadStore: ``put`` one at a time then one ``save()`` (timed together),
  ``put_many`` (into a new store, best of ``--repeat``: the first call of a
  process also imports numpy; its ``save()`` timed apart, it is the disk's
  write speed), ``get`` (NONE, checksum on; the bound
  method in a local), ``get`` of an LZ4 store, ``get_many`` (one call over
  the whole sample), ``await store.get`` inline on asyncio (the difference
  from the sync call is the async overhead), ``rebuild_index``, ``compact``
  (after overwriting every payload once: half the log is garbage), and bytes
  on disk (data file + index file) per payload against the stored size;
* py-lmdb: one write transaction for all puts (commit timed); reads
  ``bytes(txn.get(k))`` in one read transaction; keys prebuilt 16-byte
  strings (not timed: that favours lmdb);
* sqlite3: ``WITHOUT ROWID`` table (id BLOB PRIMARY KEY, v BLOB), WAL,
  ``executemany`` in one transaction; ``SELECT v ... WHERE id = ?`` (timed on
  a fifth of the sample: slow);
* diskcache: ``Cache.set``/``Cache.get`` (timed on a fifth of the sample).

Reads run over a shuffled sample, best of ``--repeat``, page cache warm,
garbage collector off.  First, untimed, 4x the data size of memory is
touched and freed (``warm_up``; ``--no-warm-up`` skips it).  Targets (issue 11) end the report with PASS/MISS.
Timings on a shared machine are noisy: the lead measures on a quiet one.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time

import diskhash
from diskhash import AsyncPayloadStore, Compression, PayloadStore

try:
    import lmdb
except ImportError:
    lmdb = None
try:
    import diskcache
except ImportError:
    diskcache = None

PAYLOAD = 1024


def make_payloads(kind: str, n: int, rng: random.Random) -> list[bytes]:
    if kind == "random":
        pool = [rng.randbytes(PAYLOAD) for _ in range(min(n, 4096))]
    else:
        words = [b"edge", b"node", b"weight", b"label", b"source", b"target", b"graph",
                 b"relation", b"attribute", b"value", b"timestamp", b"2024-05-01"]
        pool = []
        for _ in range(min(n, 4096)):
            parts = []
            size = 0
            while size < PAYLOAD:
                w = rng.choice(words) + b" %d " % rng.randrange(1000)
                parts.append(w)
                size += len(w)
            pool.append(b"".join(parts)[:PAYLOAD])
    return [pool[i % len(pool)] for i in range(n)]


def warm_up(base: str, nbytes: int) -> None:
    """Touch ``nbytes`` of memory once through the page cache (a file written
    and deleted) and once as anonymous memory, untimed, then free it.

    On a VM the first touch of guest memory the host has not backed yet
    costs a fault in the hypervisor: without this the first data set of a
    run measured 15-25% slower puts and gets than the second on the same
    code, and py-lmdb, measured after PayloadStore, did not pay it.
    """
    chunk = b"\x01" * (8 << 20)
    path = os.path.join(base, "warm-up")
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // len(chunk))):
            f.write(chunk)
    os.unlink(path)
    buf = bytearray(chunk) * max(1, nbytes // len(chunk))
    del buf


def best(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        gc.disable()
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
        gc.enable()
    return min(times)


def du(path: str) -> int:
    """Bytes allocated on disk under ``path`` (blocks, not apparent size)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            total += st.st_blocks * 512
    return total


def apparent(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            if not f.endswith(".lock"):
                total += os.path.getsize(os.path.join(root, f))
    return total


def row(name: str, seconds: float, ops: int, nbytes: int | None = None) -> dict:
    ns = seconds / ops * 1e9
    mbs = (nbytes if nbytes is not None else ops * PAYLOAD) / seconds / 1e6
    print(f"  {name:<34} {ns:>10.0f} ns/op {mbs:>10.1f} MB/s")
    return {"ns": ns, "mbs": mbs}


def bench_store(base: str, keys: list[int], payloads: list[bytes], sample: list[int],
                repeat: int) -> dict:
    res: dict = {}
    n = len(keys)
    d1 = os.path.join(base, "dh-put")
    s = PayloadStore(d1)
    put = s.put
    gc.disable()
    t = time.perf_counter()
    for k, p in zip(keys, payloads):
        put(k, p)
    s.save()
    res["put"] = row("put (one at a time) + save", time.perf_counter() - t, n)
    gc.enable()
    s.close()
    res["disk_per_payload"] = apparent(d1) / n
    res["stored_per_payload"] = PAYLOAD

    # Best of --repeat, each into a new store: the first put_many of a
    # process also imports numpy (~0.1 s) and faults in its 16 MiB buffer.
    d2 = os.path.join(base, "dh-putmany")
    runs, saves = [], []
    for _ in range(repeat):
        s = PayloadStore(d2)
        t = time.perf_counter()
        s.put_many(keys, payloads)
        t1 = time.perf_counter()
        s.save()
        t2 = time.perf_counter()
        s.close()
        shutil.rmtree(d2)
        runs.append(t1 - t)
        saves.append(t2 - t1)
    res["put_many"] = row("put_many (save not timed)", min(runs), n)
    row("  its save() (fsync of the data)", saves[runs.index(min(runs))], n)

    s = PayloadStore(d1, readonly=True)
    sample_keys = [keys[i] for i in sample]
    get = s.get

    def gets() -> None:
        for k in sample_keys:
            get(k)

    gets()
    res["get"] = row("get (NONE, checksum on)", best(repeat, gets), len(sample_keys))
    res["get_many"] = row("get_many (one call)", best(repeat, s.get_many, sample_keys), len(sample_keys))

    def gets_kept() -> None:
        [get(k) for k in sample_keys]

    # Like for like with get_many, which must hold every result at once:
    # fresh memory for them is faulted in (glibc gave the last call's back).
    res["gets_kept"] = row("  gets kept in a list", best(repeat, gets_kept), len(sample_keys))

    import anyio

    async def aget_all() -> float:
        a = AsyncPayloadStore(s)
        g = a.get
        t0 = time.perf_counter()
        for k in sample_keys:
            await g(k)
        return time.perf_counter() - t0

    times = [anyio.run(aget_all, backend="asyncio") for _ in range(repeat)]
    res["aget"] = row("await get (asyncio, inline)", min(times), len(sample_keys))
    s.close()

    d3 = os.path.join(base, "dh-lz4")
    with PayloadStore(d3, compression=Compression.LZ4) as s:
        s.put_many(keys, payloads)
        res["lz4_stored"] = s.stats().stored_bytes / n
    with PayloadStore(d3, readonly=True) as s:
        get = s.get

        def gets_lz4() -> None:
            for k in sample_keys:
                get(k)

        gets_lz4()
        res["get_lz4"] = row("get (LZ4)", best(repeat, gets_lz4), len(sample_keys))
    shutil.rmtree(d3)

    with PayloadStore(d1) as s:
        t = time.perf_counter()
        count = s.rebuild_index()
        dt = time.perf_counter() - t
        res["rebuild"] = row("rebuild_index", dt, count)
        res["rebuild_rps"] = count / dt
        s.put_many(keys, payloads)              # every payload overwritten once
        s.save()
        live = s.stats().live_bytes
        t = time.perf_counter()
        s.compact()
        dt = time.perf_counter() - t
        res["compact"] = row("compact (half the log live)", dt, n, live)
        res["compact_wait_ms"] = (s.last_compaction or {}).get("puts_waited_seconds", 0) * 1000
        print(f"  {'compact: puts waited':<34} {res['compact_wait_ms']:>10.1f} ms")
    print(f"  {'bytes on disk per payload':<34} {res['disk_per_payload']:>10.1f} "
          f"(stored {PAYLOAD}, LZ4 stored {res['lz4_stored']:.0f})")
    shutil.rmtree(d1)
    return res


def bench_lmdb(base: str, keys: list[int], payloads: list[bytes], sample: list[int],
               repeat: int) -> dict:
    res: dict = {}
    path = os.path.join(base, "lmdb")
    kb = [k.to_bytes(16, "little") for k in keys]
    env = lmdb.open(path, map_size=max(1 << 30, len(keys) * PAYLOAD * 4), writemap=False)
    t = time.perf_counter()
    with env.begin(write=True) as txn:
        put = txn.put
        for k, p in zip(kb, payloads):
            put(k, p)
    res["put"] = row("put (one txn)", time.perf_counter() - t, len(keys))
    sk = [kb[i] for i in sample]
    with env.begin() as txn:
        get = txn.get

        def gets() -> None:
            for k in sk:
                bytes(get(k))

        gets()
        res["get"] = row("get bytes(txn.get(k))", best(repeat, gets), len(sk))
    env.close()
    res["disk_per_payload"] = du(path) / len(keys)
    print(f"  {'bytes on disk per payload':<34} {res['disk_per_payload']:>10.1f}")
    shutil.rmtree(path)
    return res


def bench_sqlite(base: str, keys: list[int], payloads: list[bytes], sample: list[int],
                 repeat: int) -> dict:
    res: dict = {}
    path = os.path.join(base, "sq.db")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE p (id BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    kb = [k.to_bytes(16, "little") for k in keys]
    t = time.perf_counter()
    with con:
        con.executemany("INSERT INTO p VALUES (?, ?)", zip(kb, payloads))
    res["put"] = row("executemany (one txn)", time.perf_counter() - t, len(keys))
    sk = [kb[i] for i in sample[: max(1, len(sample) // 5)]]

    def gets() -> None:
        ex = con.execute
        for k in sk:
            ex("SELECT v FROM p WHERE id = ?", (k,)).fetchone()

    gets()
    res["get"] = row("SELECT ... fetchone", best(repeat, gets), len(sk))
    con.close()
    res["disk_per_payload"] = du(base + "/") and sum(
        os.path.getsize(os.path.join(base, f)) for f in os.listdir(base) if f.startswith("sq.db")) / len(keys)
    print(f"  {'bytes on disk per payload':<34} {res['disk_per_payload']:>10.1f}")
    for f in os.listdir(base):
        if f.startswith("sq.db"):
            os.unlink(os.path.join(base, f))
    return res


def bench_diskcache(base: str, keys: list[int], payloads: list[bytes], sample: list[int],
                    repeat: int) -> dict:
    res: dict = {}
    path = os.path.join(base, "dc")
    cache = diskcache.Cache(path)
    m = max(1, len(keys) // 5)
    t = time.perf_counter()
    for k, p in zip(keys[:m], payloads[:m]):
        cache.set(k, p)
    res["put"] = row("Cache.set (a fifth)", time.perf_counter() - t, m)
    sk = [keys[i] for i in sample if i < m][: max(1, len(sample) // 5)]

    def gets() -> None:
        for k in sk:
            cache.get(k)

    gets()
    res["get"] = row("Cache.get", best(repeat, gets), len(sk))
    cache.close()
    shutil.rmtree(path)
    return res


def targets(dh: dict, lm: dict | None) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []

    def add(name: str, figure: str, ok: bool | None) -> None:
        out.append((name, figure, ok))

    if lm:
        r = lm["get"]["ns"] / dh["get"]["ns"]
        add("get (NONE, checksum) >= 2x py-lmdb",
            f"{r:.2f}x ({dh['get']['ns']:.0f} vs {lm['get']['ns']:.0f} ns)", r >= 2)
        r = lm["get"]["ns"] / dh["get_lz4"]["ns"]
        add("get (LZ4) >= py-lmdb", f"{r:.2f}x ({dh['get_lz4']['ns']:.0f} ns)", r >= 1)
        r = lm["put"]["ns"] / dh["put"]["ns"]
        add("put one at a time >= 1.5x py-lmdb",
            f"{r:.2f}x ({dh['put']['ns']:.0f} vs {lm['put']['ns']:.0f} ns)", r >= 1.5)
    else:
        add("get / put vs py-lmdb", "py-lmdb not run (not installed, or --only store)", None)
    add("put_many >= 500 MB/s", f"{dh['put_many']['mbs']:.0f} MB/s", dh["put_many"]["mbs"] >= 500)
    r = dh["get"]["ns"] / dh["get_many"]["ns"]
    add("get_many >= 3x single gets", f"{r:.2f}x", r >= 3)
    r = dh["gets_kept"]["ns"] / dh["get_many"]["ns"]
    add("  (get_many vs gets kept in a list)", f"{r:.2f}x", None)
    over = (dh["aget"]["ns"] - dh["get"]["ns"]) / 1000
    add("await get inline <= 2 us over sync", f"{over:+.2f} us", over <= 2)
    add("rebuild_index >= 3M records/s", f"{dh['rebuild_rps'] / 1e6:.2f} M/s", dh["rebuild_rps"] >= 3e6)
    add("compact >= 300 MB/s", f"{dh['compact']['mbs']:.0f} MB/s", dh["compact"]["mbs"] >= 300)
    extra = dh["disk_per_payload"] - dh["stored_per_payload"]
    add("disk per payload <= stored + 64 B", f"stored + {extra:.0f} B", extra <= 64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--data", choices=("text", "random", "both"), default="both")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="skip touching 4x the data size of memory first (see warm_up)")
    ap.add_argument("--only", choices=("all", "store"), default="all",
                    help="'store': run PayloadStore alone (skips py-lmdb, sqlite3 and diskcache, "
                         "so the targets against py-lmdb read n/a); PayloadStore's own "
                         "measurements are the same as with 'all'")
    args = ap.parse_args()
    print(f"diskhash {diskhash.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"{args.entries} payloads of {PAYLOAD} bytes; {args.lookups} lookups, best of {args.repeat}")
    rng = random.Random(1)
    keys = [rng.getrandbits(128) for _ in range(args.entries)]
    sample = [rng.randrange(args.entries) for _ in range(min(args.lookups, args.entries))]
    kinds = ("text", "random") if args.data == "both" else (args.data,)
    if not args.no_warm_up:
        warm = tempfile.mkdtemp(prefix="store_compare-warm-", dir=args.dir)
        try:
            warm_up(warm, 4 * args.entries * PAYLOAD)
        finally:
            shutil.rmtree(warm, ignore_errors=True)
    summary = []
    for kind in kinds:
        payloads = make_payloads(kind, args.entries, rng)
        base = tempfile.mkdtemp(prefix="store_compare-", dir=args.dir)
        try:
            print(f"\n== {kind} payloads ==")
            print("PayloadStore")
            dh = bench_store(base, keys, payloads, sample, args.repeat)
            lm = None
            if args.only == "all":
                if lmdb is not None:
                    print("py-lmdb")
                    lm = bench_lmdb(base, keys, payloads, sample, args.repeat)
                print("sqlite3 (WITHOUT ROWID, WAL)")
                bench_sqlite(base, keys, payloads, sample, args.repeat)
                if diskcache is not None:
                    print("diskcache")
                    bench_diskcache(base, keys, payloads, sample, args.repeat)
            summary.append((kind, targets(dh, lm)))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print("\nTargets")
    for kind, rows in summary:
        for name, figure, ok in rows:
            verdict = "n/a " if ok is None else ("PASS" if ok else "MISS")
            print(f"  {verdict}  [{kind:<6}] {name:<38} {figure}")


if __name__ == "__main__":
    sys.exit(main())
