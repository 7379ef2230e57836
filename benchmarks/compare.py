"""diskhash side by side with a Python dict, py-lmdb and sqlite3, in one run.

    pip install ".[bench]"      # numpy, lmdb (sqlite3 is in the standard library)
    python benchmarks/compare.py [--entries 1000000] [--lookups 1000000] [--repeat 3]
    python benchmarks/compare.py --entries 10000000

Every store gets the same data set: random 128-bit keys, each with a record
(offset u64, length u32, compression u8, uncompressed_length u32).

* diskhash: ``insert(k, PayloadMeta(...))`` one at a time (building the
  PayloadMeta is timed), ``insert_many`` without and with ``capacity=``
  (into a new file; ``close()``'s msync is not timed), ``get`` (hits,
  misses) with the bound method in a local, ``get_many``.
* dict: ``d[k] = PayloadMeta(...)``; lookups ``d[k]`` and ``d.get(k)``.
* py-lmdb: one write transaction for all puts (``txn.put(key, struct.pack(...))``,
  commit timed), ``txn.get(key)`` + ``struct.unpack`` in one read transaction.
  Keys are passed as prebuilt 16-byte strings (their conversion is not timed:
  that favours lmdb).
* sqlite3: ``WITHOUT ROWID`` table keyed by a 16-byte BLOB, WAL journal,
  ``executemany`` in one transaction; ``SELECT ... WHERE id = ?`` + ``fetchone``
  (sqlite lookups are timed on a fifth of the sample: they are slow).

``insert_many`` is also timed into a table whose file pages are already in the
page cache (read once, untimed), to separate diskhash's own work from the
kernel's first allocation of the memory.

Lookups run over a shuffled sample of ``--lookups`` keys, best of
``--repeat``, with the page cache warm and the garbage collector off (as
``timeit`` does).  "Memory beyond the map" is measured in a fresh child
process that opens the index read-only and looks up every key with
``get_many``: its RSS minus the resident pages of the mapped index file
(``/proc/self/smaps``).  Timings on a shared machine are noisy: re-run before
trusting a ratio near its target.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

import diskhash
from diskhash import DiskHashIndex, PayloadMeta

try:
    import lmdb
except ImportError:  # the bench extra is optional
    lmdb = None

REC = struct.Struct("<QIBI")   # offset, length, compression, uncompressed_length


def timed(fn, repeat: int) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs, garbage collector off."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


class Data:
    def __init__(self, n: int, lookups: int, seed: int = 2026) -> None:
        rng = np.random.default_rng(seed)
        lo = rng.integers(0, 2**64, n, dtype=np.uint64)
        hi = rng.integers(0, 2**64, n, dtype=np.uint64)
        self.karr = np.zeros(n, dtype=diskhash.KEY_DTYPE)
        self.karr["lo"], self.karr["hi"] = lo, hi
        self.recs = np.zeros(n, dtype=diskhash.META_DTYPE)
        self.recs["offset"] = np.arange(n, dtype=np.uint64) * 4096
        self.recs["length"] = rng.integers(64, 1 << 20, n, dtype=np.uint32)
        self.recs["compression"] = rng.integers(0, 3, n, dtype=np.uint8)
        self.recs["uncompressed_length"] = self.recs["length"] * 2
        self.keys = [(int(h) << 64) | int(lw) for lw, h in zip(lo.tolist(), hi.tolist())]
        self.rows = list(zip(self.keys, self.recs["offset"].tolist(), self.recs["length"].tolist(),
                             self.recs["compression"].tolist(), self.recs["uncompressed_length"].tolist()))
        pick = rng.permutation(n)[:lookups]
        self.hit_idx = pick
        self.hit_arr = self.karr[pick]
        # Fresh int objects, allocated in lookup order (as keys arriving from
        # elsewhere would be), not the stored ones visited in random order.
        self.hits = [(int(h) << 64) | int(lw) for lw, h in
                     zip(self.hit_arr["lo"].tolist(), self.hit_arr["hi"].tolist())]
        mlo = rng.integers(0, 2**64, lookups, dtype=np.uint64)
        mhi = rng.integers(0, 2**64, lookups, dtype=np.uint64)
        self.misses = [(int(h) << 64) | int(lw) for lw, h in zip(mlo.tolist(), mhi.tolist())]
        self.miss_arr = np.zeros(lookups, dtype=diskhash.KEY_DTYPE)
        self.miss_arr["lo"], self.miss_arr["hi"] = mlo, mhi


def _remove(*paths: str) -> None:
    for p in paths:
        if os.path.isdir(p):
            for name in os.listdir(p):
                os.remove(os.path.join(p, name))
            os.rmdir(p)
        elif os.path.exists(p):
            os.remove(p)


class DiskhashStore:
    name = "diskhash"

    def __init__(self, d: Data, tmp: str) -> None:
        self.d, self.tmp = d, tmp
        self.path = os.path.join(tmp, "single.idx")
        self.idx = None

    def build(self) -> float:
        """Insert one at a time into a new file, building each PayloadMeta.

        Stops before close(): its msync writes the whole table to disk, which
        the lmdb build (sync=False) does not pay either."""
        if self.idx is not None:
            self.idx.close()
        _remove(self.path, self.path + ".lock")
        idx = self.idx = DiskHashIndex(self.path)
        rows = self.d.rows

        def run() -> None:
            ins, PM = idx.insert, PayloadMeta
            for k, off, ln, c, ul in rows:
                ins(k, PM(k, off, ln, c, ul))

        return timed(run, 1)

    def lookups(self) -> dict:
        d, idx = self.d, self.idx
        assert len(idx) == len(d.keys)
        g = idx.get
        hits, misses = d.hits, d.misses
        assert g(hits[0]) == d.rows[d.hit_idx[0]] and g(misses[0]) is None

        def get_hits() -> None:
            for k in hits:
                g(k)

        def get_misses() -> None:
            for k in misses:
                g(k)

        return {
            "get_hit": (get_hits, len(hits)),
            "get_miss": (get_misses, len(misses)),
            "get_many": (lambda: idx.get_many(d.hit_arr), len(hits)),
            "get_many_miss": (lambda: idx.get_many(d.miss_arr), len(misses)),
            "contains_many": (lambda: idx.contains_many(d.hit_arr), len(hits)),
        }

    def batch_loads(self, repeat: int) -> dict:
        """insert_many into new files: without capacity=, with it, and with it
        and the file's pages already in the page cache (read once, untimed:
        what is left is diskhash's own work, without the kernel's first
        allocation of the table's memory)."""
        d, n, out = self.d, len(self.d.keys), {}
        for key, capacity, preread in (("insert_many", None, False), ("insert_many_cap", n, False),
                                       ("insert_many_resident", n, True)):
            best = float("inf")
            p = os.path.join(self.tmp, f"{key}.idx")
            for _ in range(repeat):
                _remove(p, p + ".lock")
                with DiskHashIndex(p, capacity=capacity) as idx:
                    if preread:
                        with open(p, "rb") as fh:
                            while fh.read(1 << 24):
                                pass
                    best = min(best, timed(lambda: idx.insert_many(d.karr, d.recs), 1))
            with DiskHashIndex(p, readonly=True) as idx:
                got = idx.get_many(d.karr)
                assert got["found"].all() and np.array_equal(got["offset"], d.recs["offset"])
            _remove(p, p + ".lock")
            out[key] = best / n
        return out

    def close(self) -> dict:
        slots = self.idx.num_slots
        self.idx.close()
        return {"slots": slots, "bytes": os.path.getsize(self.path) / len(self.d.keys)}


class DictStore:
    name = "dict"

    def __init__(self, d: Data, tmp: str) -> None:
        self.d, self.m = d, None

    def build(self) -> float:
        self.m = None
        holder = {}
        rows = self.d.rows

        def run() -> None:
            m = {}
            PM = PayloadMeta
            for k, off, ln, c, ul in rows:
                m[k] = PM(k, off, ln, c, ul)
            holder["m"] = m

        t = timed(run, 1)
        self.m = holder["m"]
        return t

    def lookups(self) -> dict:
        m, hits, misses = self.m, self.d.hits, self.d.misses
        get = m.get

        def get_hits() -> None:
            for k in hits:
                m[k]

        def get_hits_call() -> None:
            for k in hits:
                get(k)

        def get_misses() -> None:
            for k in misses:
                get(k)

        return {"get_hit": (get_hits, len(hits)), "get_hit_call": (get_hits_call, len(hits)),
                "get_miss": (get_misses, len(misses))}

    def close(self) -> dict:
        self.m = None
        return {}


class LmdbStore:
    name = "py-lmdb"

    def __init__(self, d: Data, tmp: str) -> None:
        self.d, self.path, self.env, self.txn = d, os.path.join(tmp, "lmdb"), None, None
        # Prebuilt 16-byte keys: their conversion is not timed (favours lmdb).
        self.items = [(k.to_bytes(16, "little"), REC_FIELDS(r)) for k, r in zip(d.keys, d.rows)]

    def build(self) -> float:
        if self.env is not None:
            self.env.close()
        _remove(self.path)
        n = len(self.d.keys)
        env = self.env = lmdb.open(self.path, map_size=max(1 << 30, n * 400), sync=False,
                                   metasync=False, readahead=False, max_dbs=0)
        items, pack = self.items, REC.pack

        def run() -> None:
            with env.begin(write=True) as txn:
                put = txn.put
                for key, (off, ln, c, ul) in items:
                    put(key, pack(off, ln, c, ul))

        return timed(run, 1)

    def lookups(self) -> dict:
        d = self.d
        hit_b = [k.to_bytes(16, "little") for k in d.hits]
        miss_b = [k.to_bytes(16, "little") for k in d.misses]
        unpack = REC.unpack
        txn = self.txn = self.env.begin()
        get = txn.get
        assert unpack(get(hit_b[0])) == d.rows[d.hit_idx[0]][1:] and get(miss_b[0]) is None

        def get_hits() -> None:
            for key in hit_b:
                unpack(get(key))

        def get_misses() -> None:
            for key in miss_b:
                get(key)

        return {"get_hit": (get_hits, len(hit_b)), "get_miss": (get_misses, len(miss_b))}

    def close(self) -> dict:
        self.items = []
        if self.txn is not None:
            self.txn.abort()
        self.env.close()
        return {"bytes": os.path.getsize(os.path.join(self.path, "data.mdb")) / len(self.d.keys)}


def REC_FIELDS(row: tuple) -> tuple:
    return row[1:]


class SqliteStore:
    name = "sqlite3"

    def __init__(self, d: Data, tmp: str) -> None:
        self.d, self.path, self.con = d, os.path.join(tmp, "sqlite.db"), None

    def build(self) -> float:
        if self.con is not None:
            self.con.close()
        _remove(self.path, self.path + "-wal", self.path + "-shm")
        con = self.con = sqlite3.connect(self.path, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE edges (id BLOB PRIMARY KEY, offset INTEGER, length INTEGER, "
                    "compression INTEGER, ulen INTEGER) WITHOUT ROWID")
        rows = self.d.rows

        def run() -> None:
            con.execute("BEGIN")
            con.executemany("INSERT INTO edges VALUES (?, ?, ?, ?, ?)",
                            ((k.to_bytes(16, "little"), off, ln, c, ul) for k, off, ln, c, ul in rows))
            con.execute("COMMIT")

        t = timed(run, 1)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return t

    def lookups(self) -> dict:
        d, con = self.d, self.con
        sample = max(1, len(d.hits) // 5)          # sqlite lookups are slow: a fifth of the sample
        hit_b = [k.to_bytes(16, "little") for k in d.hits[:sample]]
        miss_b = [k.to_bytes(16, "little") for k in d.misses[:sample]]
        q = "SELECT offset, length, compression, ulen FROM edges WHERE id = ?"
        ex = con.execute
        assert ex(q, (hit_b[0],)).fetchone() == d.rows[d.hit_idx[0]][1:]

        def get_hits() -> None:
            for key in hit_b:
                ex(q, (key,)).fetchone()

        def get_misses() -> None:
            for key in miss_b:
                ex(q, (key,)).fetchone()

        return {"get_hit": (get_hits, sample), "get_miss": (get_misses, sample)}

    def close(self) -> dict:
        self.con.close()
        size = os.path.getsize(self.path)
        if os.path.exists(self.path + "-wal"):
            size += os.path.getsize(self.path + "-wal")
        return {"bytes": size / len(self.d.keys)}


MEMORY_CHILD = r"""
import sys, numpy as np
import diskhash
from diskhash import DiskHashIndex

def rss_kib():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])

def mapped_rss_kib(path):
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[5] == path
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total

path, keyfile, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = rss_kib()
with DiskHashIndex(path, readonly=True) as idx:
    found = 0
    chunk = 1 << 16
    with open(keyfile, "rb") as f:
        for start in range(0, n, chunk):
            keys = np.fromfile(f, dtype=diskhash.KEY_DTYPE, count=min(chunk, n - start))
            found += int(idx.get_many(keys)["found"].sum())
            del keys
    total = rss_kib()
    mapped = mapped_rss_kib(path)
    assert found == n, (found, n)
    print(base, total, mapped)
"""


def memory_beyond_map(index_path: str, karr: np.ndarray, tmp: str) -> tuple[float, float, float]:
    """(RSS before opening, RSS beyond the map after looking up every key, map resident) in MiB."""
    keyfile = os.path.join(tmp, "keys.bin")
    karr.tofile(keyfile)
    res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, index_path, keyfile, str(len(karr))],
                         capture_output=True, text=True, check=True)
    base, total, mapped = (int(x) / 1024 for x in res.stdout.split())
    os.remove(keyfile)
    return base, total - mapped, mapped


def ns(x: float) -> str:
    return f"{x * 1e9:,.0f}"


def rate(x: float) -> str:
    return f"{1 / x / 1e6:,.2f}M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=None, help="lookup sample (default: min(entries, 1M))")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args()
    n = args.entries
    lookups = min(args.lookups or 1_000_000, n)
    print(f"# diskhash compare: {n:,} entries, {lookups:,} lookups, best of {args.repeat}")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}, lmdb {getattr(lmdb, '__version__', 'absent')}, "
          f"sqlite {sqlite3.sqlite_version}, numpy {np.__version__}")
    t0 = time.perf_counter()
    d = Data(n, lookups)
    print(f"# data set built in {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        kinds = [DiskhashStore, DictStore]
        if lmdb is not None:
            kinds.append(LmdbStore)
        stores = [k(d, tmp) for k in kinds]
        sq = None if args.no_sqlite else SqliteStore(d, tmp)
        results = {s.name: {} for s in stores}
        # Rounds interleave the stores, so a noisy minute on the shared
        # machine hits all of them rather than one: best of --repeat each.
        for r in range(args.repeat):
            for s in stores:
                t = s.build() / n
                results[s.name]["insert"] = min(results[s.name].get("insert", t), t)
            print(f"# build round {r + 1} done", flush=True)
        probes = {s.name: s.lookups() for s in stores}
        for _ in range(args.repeat):
            for s in stores:
                for key, (fn, count) in probes[s.name].items():
                    t = timed(fn, 1) / count
                    results[s.name][key] = min(results[s.name].get(key, t), t)
        print("# lookups done", flush=True)
        dh, dc = results["diskhash"], results["dict"]
        lm = results.get("py-lmdb")
        dh.update(stores[0].batch_loads(args.repeat))
        print("# insert_many done", flush=True)
        probes.clear()
        for s in stores:
            results[s.name].update(s.close())
        mem = memory_beyond_map(stores[0].path, d.karr, tmp)
        if sq is not None:
            sqr = {"insert": sq.build() / n}
            for key, (fn, count) in sq.lookups().items():
                sqr[key] = timed(fn, args.repeat) / count
            sqr.update(sq.close())
            sq = sqr
            print("# sqlite done", flush=True)

    def cell(res, key):
        if res is None or key not in res:
            return f"{'-':>10} {'-':>9}"
        return f"{ns(res[key]):>10} {rate(res[key]):>9}"

    print()
    print(f"{'operation (ns/op, ops/s)':<28} {'diskhash':>20} {'dict':>20} {'py-lmdb':>20} {'sqlite3':>20}")
    rows = [
        ("get hit (single call)", "get_hit"),
        ("get miss (single call)", "get_miss"),
        ("get_many hits (per key)", "get_many"),
        ("get_many misses (per key)", "get_many_miss"),
        ("contains_many (per key)", "contains_many"),
        ("insert one at a time", "insert"),
        ("insert_many (with grows)", "insert_many"),
        ("insert_many, capacity=n", "insert_many_cap"),
        ("  same, pages in cache", "insert_many_resident"),
    ]
    for label, key in rows:
        print(f"{label:<28} {cell(dh, key):>20} {cell(dc, key):>20} {cell(lm, key):>20} {cell(sq, key):>20}")
    print(f"{'dict.get(k) hit':<28} {'':>20} {cell(dc, 'get_hit_call'):>20}")

    def b(r):
        return f"{r['bytes']:>20.1f}" if r else f"{'-':>20}"

    print(f"{'bytes on disk per entry':<28} {b(dh)} {'-':>20} {b(lm)} {b(sq)}")
    print(f"{'diskhash slots, load factor':<28} {dh['slots']:>11,} {n / dh['slots']:>8.3f}")
    print(f"{'process memory (MiB)':<28} baseline {mem[0]:.1f}, beyond the mapped file {mem[1]:.1f} "
          f"(map resident {mem[2]:.1f})")

    print("\ntarget                                                   measured          result")
    checks = []

    def check(what: str, value: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        checks.append(ok)
        print(f"{what:<56} {value:<17} {verdict}")

    if lm:
        r = lm["get_hit"] / dh["get_hit"]
        check("get hit >= 3x faster than py-lmdb get+unpack", f"{r:.2f}x", r >= 3)
    r = dc["get_hit"] / dh["get_hit"]
    check("get hit faster than dict d[k]", f"{r:.2f}x", r > 1)
    r2 = dc["get_hit_call"] / dh["get_hit"]
    check("get hit faster than dict d.get(k)", f"{r2:.2f}x", r2 > 1)
    if lm:
        r = lm["get_miss"] / dh["get_miss"]
        check("get miss >= 3x faster than py-lmdb", f"{r:.2f}x", r >= 3)
    kps = 1 / dh["get_many"]
    check("get_many >= 25M keys/s (target stated at 1M entries)", f"{kps / 1e6:.1f}M keys/s",
          kps >= 25e6 if n <= 1_000_000 else None)
    if lm:
        r = lm["get_hit"] / dh["get_many"]
        check("get_many >= 20x py-lmdb single get rate", f"{r:.1f}x", r >= 20)
        r = lm["insert"] / dh["insert"]
        check("insert one at a time >= 1.5x faster than lmdb put", f"{r:.2f}x", r >= 1.5)
    eps = 1 / dh["insert_many"]
    check("insert_many >= 10M entries/s including grows", f"{eps / 1e6:.1f}M/s", eps >= 10e6)
    eps_cap = 1 / dh["insert_many_cap"]
    check("insert_many with capacity= faster still", f"{eps_cap / 1e6:.1f}M/s", eps_cap > eps)
    eps_res = 1 / dh["insert_many_resident"]
    print(f"{'  (capacity=, file pages already in the page cache)':<56} {eps_res / 1e6:.1f}M/s")
    want = 40 * dh["slots"] / n + 64 / n
    check("bytes on disk/entry = 40 / load factor", f"{dh['bytes']:.1f} (={want:.1f})",
          abs(dh["bytes"] - want) < 0.01)
    check("memory beyond the mapped file < 50 MB (target at 10M)", f"{mem[1]:.1f} MiB",
          mem[1] * 1.048576 < 50 if n >= 10_000_000 else None)
    misses = sum(1 for c in checks if c is False)
    print(f"\n{misses} target(s) missed" if misses else "\nall targets met")


if __name__ == "__main__":
    main()
