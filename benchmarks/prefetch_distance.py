"""Measure get_many throughput against the prefetch distance, to choose the default.

    python benchmarks/prefetch_distance.py [--entries 1000000] [--batch 1000000] [--repeat 5]

Builds an index of random 128-bit keys (warm page cache), then times
``get_many`` over a shuffled batch of hits (and one of misses) for each
distance; prints keys/s per distance, best of --repeat runs, and the best
distance.  The default in ``diskhash/_index/batch.pyx`` is set from this.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import diskhash
from diskhash import DiskHashIndex
from diskhash._index import batch as _batch

DISTANCES = [0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    keys = np.zeros(n, dtype=diskhash.KEY_DTYPE)
    keys["lo"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    keys["hi"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    return keys


def best_rate(idx: DiskHashIndex, keys: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        idx.get_many(keys)
        best = min(best, time.perf_counter() - t0)
    return len(keys) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    keys = random_keys(rng, args.entries)
    recs = np.zeros(args.entries, dtype=diskhash.META_DTYPE)
    recs["offset"] = np.arange(args.entries)
    hits = keys[rng.integers(0, args.entries, args.batch)]
    misses = random_keys(rng, args.batch)
    old = _batch.prefetch_distance()
    with tempfile.TemporaryDirectory() as tmp:
        with DiskHashIndex(os.path.join(tmp, "bench.idx"), capacity=args.entries) as idx:
            idx.insert_many(keys, recs)
            idx.get_many(hits)                                   # warm the map
            print(f"{args.entries:,} entries, {idx.num_slots:,} slots, batch {args.batch:,}, "
                  f"current default distance {old}")
            print(f"{'distance':>8} {'hits Mkeys/s':>13} {'misses Mkeys/s':>15}")
            results = {}
            try:
                for d in DISTANCES:
                    _batch.set_prefetch_distance(d)
                    h = best_rate(idx, hits, args.repeat)
                    m = best_rate(idx, misses, args.repeat)
                    results[d] = (h, m)
                    print(f"{d:>8} {h / 1e6:>13.1f} {m / 1e6:>15.1f}")
            finally:
                _batch.set_prefetch_distance(old)
    best = max(results, key=lambda d: results[d][0] + results[d][1])
    print(f"best distance (hits + misses): {best}; no prefetch: "
          f"{results[0][0] / 1e6:.1f} M hits/s, best: {results[best][0] / 1e6:.1f} M hits/s")


if __name__ == "__main__":
    main()
