"""PayloadStore against the key-value stores users pick instead, the same work for each.

    pip install ".[bench]"      # lmdb, rocksdict, plyvel, diskcache, matplotlib, ...
    python benchmarks/store_peers.py [--sizes 100000,1000000] [--quick] [--json out.json]

Peers, each used the way its own documentation recommends (``HOW`` below is
what the charts and docs/performance.md quote): diskhash ``PayloadStore``,
py-lmdb, RocksDB (``rocksdict``, raw mode), LevelDB (``plyvel``),
``diskcache``, sqlite3 (``WITHOUT ROWID``, WAL) and ``dbm.gnu``; a peer that
is not installed is skipped with a line saying so.

For every size: random 128-bit keys (16 bytes for the peers, prebuilt and
not timed), random incompressible payloads of 1 KiB (100 bytes from 1M
entries up: ``--payload`` overrides).  Measured, per entry:

* ``put``: one call per record into a new store, then the one durable step
  each offers (``save()``, a synced commit, a synced write) -- timed together;
* ``put_many``: the batch API into another new store, durable step included;
* ``get``, ``get_miss``: single gets over a shuffled sample of present keys,
  and of absent ones;
* ``get_many``: the multi-get API (or a loop where there is none) in calls of
  ``--batch`` keys, payloads as ``bytes``; diskhash also ``get_many_arrow``;
* ``disk``: bytes allocated on disk per entry (blocks, after close);
* ``open``: opening the store of the largest size and one get, best of 3.

``diskcache`` (about half a millisecond a ``set`` here: a SQLite transaction
each) runs only up to ``--slow-max`` entries, so that the default run takes
minutes.

Reads are warm (the page cache holds the store), the garbage collector off,
timed in parts (2,000 single gets, one ``get_many`` call): each part the
fastest of ``--repeat`` runs, summed -- on a loaded machine this keeps
preemption by other jobs out of the figures.  The machine the figures in the docs come from is
a loaded 2-core VM shared with other jobs: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
from _backends import chunked, du, machine_info

import diskhash
from diskhash import KEY_DTYPE, PayloadStore

try:
    import lmdb
except ImportError:
    lmdb = None
try:
    import rocksdict
except ImportError:
    rocksdict = None
try:
    import plyvel
except ImportError:
    plyvel = None
try:
    import diskcache
except ImportError:
    diskcache = None
try:
    import dbm.gnu as gdbm
except ImportError:
    gdbm = None

HOW = {
    "diskhash": "PayloadStore: put() then save(); put_many(numpy keys, list of bytes) then save(); "
                "get(); get_many(list of ints), get_many_arrow(numpy keys); opened readonly=True",
    "lmdb": "one write transaction, txn.put() each, commit (synced); Cursor.putmulti() in one "
            "transaction; txn.get() in one read transaction; Cursor.getmulti()",
    "rocksdb": "rocksdict Rdict with Options(raw_mode=True): put() each, then flush_wal(sync=True); "
               "WriteBatch + write() then flush_wal(sync=True); get(); get(list) (MultiGet)",
    "leveldb": "plyvel DB: put() each, the last one sync=True; write_batch(sync=True); get(); "
               "no multi-get (a loop of get())",
    "diskcache": "Cache: set() each (its own transaction); set() inside cache.transact(); get(); "
                 "no multi-get (a loop of get())",
    "sqlite3": "table (id BLOB PRIMARY KEY, v BLOB), WITHOUT ROWID for rows under ~200 B "
               "(its docs' advice), WAL: INSERT each in one "
               "transaction then commit; executemany in one transaction; SELECT ... WHERE id = ?; "
               "SELECT ... WHERE id IN (500 keys)",
    "dbm.gnu": "dbm.gnu.open(path, 'nf'): d[k] = v each, then sync(); no batch or multi-get",
}


class Data:
    """One size's keys and payloads, in every form a backend takes (built untimed)."""

    def __init__(self, n: int, payload: int, lookups: int, seed: int = 19) -> None:
        rng = random.Random(seed)
        self.n, self.payload = n, payload
        self.ints = [rng.getrandbits(128) for _ in range(n)]
        self.np = np.zeros(n, dtype=KEY_DTYPE)
        self.np["lo"] = [k & (2**64 - 1) for k in self.ints]
        self.np["hi"] = [k >> 64 for k in self.ints]
        self.bytes = [k.to_bytes(16, "little") for k in self.ints]
        # (randbytes makes one int of all the bits: in pieces, past 256 MB)
        blob = b"".join(rng.randbytes(min(1 << 24, n * payload - at))
                        for at in range(0, n * payload, 1 << 24))
        self.payloads = [blob[i * payload:(i + 1) * payload] for i in range(n)]
        m = min(lookups, n)
        self.sample = [rng.randrange(n) for _ in range(m)]
        present = set(self.ints)
        self.absent_ints = []
        while len(self.absent_ints) < m:
            k = rng.getrandbits(128)
            if k not in present:
                self.absent_ints.append(k)


class Backend:
    """One peer: ``put``/``put_many`` build a store in ``path`` durably;
    ``open_read`` opens it for the reads and returns a close function."""

    name = ""
    available = True
    slow = False            # reads timed on a fifth of the sample

    def key(self, d: Data, i: int) -> Any:
        return d.bytes[i]

    def keys(self, d: Data, idx: list[int]) -> list[Any]:
        return [d.bytes[i] for i in idx]

    def absent(self, d: Data) -> list[Any]:
        return [k.to_bytes(16, "little") for k in d.absent_ints]

    def put(self, path: str, d: Data) -> None:
        raise NotImplementedError

    def put_many(self, path: str, d: Data) -> "bool | None":
        raise NotImplementedError

    def open_read(self, path: str) -> "tuple[Callable[[Any], Any], Callable[[list[Any]], Any], Callable[[], None]]":
        raise NotImplementedError


class DiskHash(Backend):
    name = "diskhash"

    def key(self, d: Data, i: int) -> Any:
        return d.ints[i]

    def keys(self, d: Data, idx: list[int]) -> list[Any]:
        return [d.ints[i] for i in idx]

    def absent(self, d: Data) -> list[Any]:
        return d.absent_ints

    def put(self, path: str, d: Data) -> None:
        s = PayloadStore(path)
        put = s.put
        for k, p in zip(d.ints, d.payloads):
            put(k, p)
        s.save()
        s.close()

    def put_many(self, path: str, d: Data) -> None:
        with PayloadStore(path) as s:
            s.put_many(d.np, d.payloads)
            s.save()

    def open_read(self, path: str) -> Any:
        s = PayloadStore(path, readonly=True)
        return s.get, s.get_many, s.close

    def arrow(self, path: str) -> Any:
        s = PayloadStore(path, readonly=True)
        return s.get_many_arrow, s.close


class Lmdb(Backend):
    name = "lmdb"
    available = lmdb is not None

    def _env(self, path: str, n: int, payload: int, **kw: Any) -> Any:
        return lmdb.open(path, map_size=max(1 << 30, n * (payload + 200) * 3), **kw)

    def put(self, path: str, d: Data) -> None:
        env = self._env(path, d.n, d.payload)
        with env.begin(write=True) as txn:
            put = txn.put
            for k, p in zip(d.bytes, d.payloads):
                put(k, p)
        env.close()

    def put_many(self, path: str, d: Data) -> None:
        env = self._env(path, d.n, d.payload)
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(zip(d.bytes, d.payloads))
        env.close()

    def open_read(self, path: str) -> Any:
        env = lmdb.open(path, readonly=True, lock=False)
        txn = env.begin()
        cur = txn.cursor()

        def close() -> None:
            cur.close()
            txn.abort()
            env.close()

        return txn.get, cur.getmulti, close


class Rocks(Backend):
    name = "rocksdb"
    available = rocksdict is not None

    def _open(self, path: str, **kw: Any) -> Any:
        return rocksdict.Rdict(path, rocksdict.Options(raw_mode=True), **kw)

    def put(self, path: str, d: Data) -> None:
        db = self._open(path)
        put = db.put
        for k, p in zip(d.bytes, d.payloads):
            put(k, p)
        db.flush_wal(True)
        db.close()

    def put_many(self, path: str, d: Data) -> None:
        db = self._open(path)
        wb = rocksdict.WriteBatch(raw_mode=True)
        put = wb.put
        for k, p in zip(d.bytes, d.payloads):
            put(k, p)
        db.write(wb)
        db.flush_wal(True)
        db.close()

    def open_read(self, path: str) -> Any:
        db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        return db.get, db.get, db.close


class Level(Backend):
    name = "leveldb"
    available = plyvel is not None

    def put(self, path: str, d: Data) -> None:
        db = plyvel.DB(path, create_if_missing=True)
        put = db.put
        for k, p in zip(d.bytes[:-1], d.payloads[:-1]):
            put(k, p)
        db.put(d.bytes[-1], d.payloads[-1], sync=True)
        db.close()

    def put_many(self, path: str, d: Data) -> None:
        db = plyvel.DB(path, create_if_missing=True)
        with db.write_batch(sync=True) as wb:
            put = wb.put
            for k, p in zip(d.bytes, d.payloads):
                put(k, p)
        db.close()

    def open_read(self, path: str) -> Any:
        db = plyvel.DB(path)
        get = db.get
        return get, lambda ks: [get(k) for k in ks], db.close


class DiskCache(Backend):
    name = "diskcache"
    available = diskcache is not None
    slow = True

    def put(self, path: str, d: Data) -> None:
        with diskcache.Cache(path) as c:
            put = c.set
            for k, p in zip(d.bytes, d.payloads):
                put(k, p)

    def put_many(self, path: str, d: Data) -> None:
        with diskcache.Cache(path) as c:
            with c.transact():
                put = c.set
                for k, p in zip(d.bytes, d.payloads):
                    put(k, p)

    def open_read(self, path: str) -> Any:
        c = diskcache.Cache(path)
        get = c.get
        return get, lambda ks: [get(k) for k in ks], c.close


class Sqlite(Backend):
    name = "sqlite3"
    slow = True

    def _open(self, path: str, payload: int) -> sqlite3.Connection:
        os.makedirs(path, exist_ok=True)
        con = sqlite3.connect(os.path.join(path, "p.db"))
        con.execute("PRAGMA journal_mode=WAL")
        # sqlite's docs: WITHOUT ROWID "works best when individual rows are
        # smaller than about 1/20th of the page size" (4 KiB pages: ~200 B).
        rowid = "" if payload > 200 else " WITHOUT ROWID"
        con.execute(f"CREATE TABLE IF NOT EXISTS p (id BLOB PRIMARY KEY, v BLOB){rowid}")
        return con

    def put(self, path: str, d: Data) -> None:
        con = self._open(path, d.payload)
        ex = con.execute
        with con:
            for k, p in zip(d.bytes, d.payloads):
                ex("INSERT OR REPLACE INTO p VALUES (?, ?)", (k, p))
        con.close()

    def put_many(self, path: str, d: Data) -> None:
        con = self._open(path, d.payload)
        with con:
            con.executemany("INSERT OR REPLACE INTO p VALUES (?, ?)", zip(d.bytes, d.payloads))
        con.close()

    def open_read(self, path: str) -> Any:
        con = sqlite3.connect(f"file:{os.path.join(path, 'p.db')}?mode=ro", uri=True)
        ex = con.execute

        def get(k: bytes) -> Any:
            r = ex("SELECT v FROM p WHERE id = ?", (k,)).fetchone()
            return r[0] if r else None

        def get_many(ks: list[bytes]) -> list[Any]:
            out = []
            for i in range(0, len(ks), 500):
                part = ks[i:i + 500]
                q = "SELECT id, v FROM p WHERE id IN (%s)" % ",".join("?" * len(part))
                found = dict(ex(q, part).fetchall())
                out.extend(found.get(k) for k in part)
            return out

        return get, get_many, con.close


class Gdbm(Backend):
    name = "dbm.gnu"
    available = gdbm is not None
    slow = True

    def put(self, path: str, d: Data) -> None:
        os.makedirs(path, exist_ok=True)
        db = gdbm.open(os.path.join(path, "db"), "nf")
        for k, p in zip(d.bytes, d.payloads):
            db[k] = p
        db.sync()
        db.close()

    def put_many(self, path: str, d: Data) -> None:
        return None

    def open_read(self, path: str) -> Any:
        db = gdbm.open(os.path.join(path, "db"), "r")
        get = db.get
        return get, lambda ks: [get(k) for k in ks], db.close


CHUNK = 2_000      # keys per timed part of the single gets

BACKENDS: list[Backend] = [DiskHash(), Lmdb(), Rocks(), Level(), DiskCache(), Sqlite(), Gdbm()]


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        gc.disable()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        gc.enable()
    return min(times)


def bench(b: Backend, base: str, d: Data, repeat: int, batch: int) -> dict:
    res: dict = {}
    n = d.n
    p1, p2 = os.path.join(base, b.name + "-put"), os.path.join(base, b.name + "-many")
    res["put"] = timed(lambda: b.put(p1, d)) / n * 1e9
    res["disk"] = du(p1) / n
    t = time.perf_counter()
    done = b.put_many(p2, d)
    if done is not False and os.path.exists(p2):
        res["put_many"] = (time.perf_counter() - t) / n * 1e9
    shutil.rmtree(p2, ignore_errors=True)
    idx = d.sample[: max(1, len(d.sample) // 5)] if b.slow else d.sample
    keys = b.keys(d, idx)
    miss = b.absent(d)[: len(keys)]
    get, get_many, close = b.open_read(p1)
    try:
        assert get(keys[0]) == d.payloads[idx[0]], f"{b.name}: wrong payload"
        assert get(miss[0]) is None, f"{b.name}: an absent key found"

        def gets(part: list[Any]) -> None:
            for k in part:
                get(k)

        def split(ks: list[Any], size: int) -> list[list[Any]]:
            return [ks[i:i + size] for i in range(0, len(ks), size)]

        res["get"] = chunked(gets, split(keys, CHUNK), repeat) / len(keys) * 1e9
        res["get_miss"] = chunked(gets, split(miss, CHUNK), repeat) / len(miss) * 1e9
        res["get_many"] = chunked(get_many, split(keys, batch), repeat) / len(keys) * 1e9
    finally:
        close()
    if isinstance(b, DiskHash):
        arrow, close = b.arrow(p1)
        nb = [d.np[idx[i:i + batch]] for i in range(0, len(idx), batch)]
        try:
            res["get_many_arrow"] = chunked(arrow, nb, repeat) / len(idx) * 1e9
        finally:
            close()
    return res


def open_time(b: Backend, path: str, d: Data) -> float:
    k = b.key(d, d.sample[0])

    def once() -> None:
        get, _many, close = b.open_read(path)
        get(k)
        close()

    return timed(once, 3) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="entries per run, comma-separated")
    ap.add_argument("--payload", type=int, default=None,
                    help="payload bytes (default: 1024 below 1M entries, 100 from 1M up)")
    ap.add_argument("--lookups", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=10_000, help="keys per get_many call")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slow-max", type=int, default=200_000,
                    help="largest size diskcache runs at (a SQLite transaction per set)")
    ap.add_argument("--only", default="", help="comma-separated backend names (default: all installed)")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 5,000 and 20,000 entries")
    args = ap.parse_args()
    sizes = [5_000, 20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.lookups, args.repeat = 2_000, 1
    wanted = set(filter(None, args.only.split(",")))
    backends = [b for b in BACKENDS if not wanted or b.name in wanted]
    for b in backends:
        if not b.available:
            print(f"{b.name}: not installed, skipped")
    backends = [b for b in backends if b.available]
    meta = machine_info(["numpy", "pyarrow", "lmdb", "rocksdict", "plyvel", "diskcache"])
    meta["versions"]["diskhash"] = diskhash.__version__
    meta["note"] = "loaded 2-core VM shared with other jobs" if os.cpu_count() == 2 else ""
    print(meta)
    out: dict = {"meta": meta, "how": {b.name: HOW[b.name] for b in backends}, "sizes": {}}
    for n in sizes:
        payload = args.payload or (1024 if n < 1_000_000 else 100)
        print(f"\n== {n} entries, {payload}-byte random payloads ==")
        d = Data(n, payload, args.lookups)
        base = tempfile.mkdtemp(prefix="store_peers-", dir=args.dir)
        rows: dict = {}
        try:
            for b in backends:
                if isinstance(b, DiskCache) and n > args.slow_max:
                    print(f"  {b.name:<10} skipped above --slow-max {args.slow_max}")
                    continue
                r = rows[b.name] = bench(b, base, d, args.repeat, args.batch)
                if n == max(sizes):
                    r["open_ms"] = open_time(b, os.path.join(base, b.name + "-put"), d)
                shutil.rmtree(os.path.join(base, b.name + "-put"), ignore_errors=True)
                print(f"  {b.name:<10} " + "  ".join(f"{k} {v:,.0f}" for k, v in r.items()), flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        out["sizes"][str(n)] = {"payload": payload, "results": rows}
    print("\nns per entry (disk: bytes per entry; open: ms); diskhash ahead?")
    for n, size in out["sizes"].items():
        rows = size["results"]
        dh = rows.get("diskhash")
        for op in ("get", "get_miss", "put", "put_many", "get_many", "disk"):
            if dh is None or op not in dh:
                continue
            peers = {name: r[op] for name, r in rows.items() if name != "diskhash" and op in r}
            if not peers:
                continue
            best_peer = min(peers, key=peers.__getitem__)
            ok = dh[op] <= peers[best_peer]
            print(f"  {'PASS' if ok else 'MISS'}  {n:>8} {op:<9} diskhash {dh[op]:,.0f}  "
                  f"best peer {best_peer} {peers[best_peer]:,.0f} ({peers[best_peer] / dh[op]:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"written {args.json}")


if __name__ == "__main__":
    sys.exit(main())
