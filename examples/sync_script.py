"""The synchronous API in one script: build an index, query it, reopen it.

    python examples/sync_script.py [--entries N] [--dir DIR]

Builds an index of N edges (each pointing into an imaginary append-only data
file), queries it (hits, misses, iteration, delete), closes it, reopens it
read-only and checks that everything survived.  Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

from diskhash import Compression, DiskHashIndex, PayloadMeta, ReadOnlyIndexError


def record(edge_id: int, offset: int) -> PayloadMeta:
    length = 64 + edge_id % 512
    return PayloadMeta(edge_id, offset, length, Compression.ZSTD, length * 3)


def check(ok: bool, what: str) -> None:
    print(f"{'ok ' if ok else 'FAIL'} {what}")
    if not ok:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(11)
    ids = [rng.getrandbits(128) for _ in range(args.entries)]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "edges.idx")

        # Build: inserts grow the table as needed; save() makes them durable.
        expected = {}
        with DiskHashIndex(path) as idx:
            offset = 0
            for edge_id in ids:
                meta = record(edge_id, offset)
                idx.insert(edge_id, meta)
                expected[edge_id] = meta
                offset += meta.length
            idx.save()
            print(f"built {len(idx):,} entries in {idx.num_slots:,} slots")

            # Query: hits, misses, membership, iteration, delete.
            sample = rng.sample(ids, min(1000, len(ids)))
            check(all(idx[e] == expected[e] for e in sample), f"{len(sample)} lookups by id")
            check(idx.get(2**128 - 1) is None and (2**128 - 1) not in idx, "a missing id is absent")
            check(sum(1 for _ in idx.items()) == len(expected), "iteration sees every entry")
            gone = ids[0]
            check(idx.pop(gone) == expected.pop(gone) and gone not in idx, "pop removes an entry")
            s = idx.stats()
            print(f"stats: load factor {s.load_factor:.2f}, longest probe {s.longest_probe}, "
                  f"mean probe {s.mean_probe:.2f}, {s.file_bytes:,} bytes")

        # Reopen read-only: everything is there, and writes are refused.
        with DiskHashIndex(path, readonly=True) as idx:
            check(len(idx) == len(expected), f"reopened with {len(idx):,} entries")
            check(dict(idx.items()) == expected, "every entry read back exactly")
            try:
                idx.insert(gone, record(gone, 0))
            except ReadOnlyIndexError:
                check(True, "a read-only index refuses writes")
            else:
                check(False, "a read-only index refuses writes")
            idx.verify()
            check(True, "verify() finds no defect")


if __name__ == "__main__":
    main()
