"""Bytes written by save() after a few random inserts into a grown table.

    python benchmarks/save_after_grow.py [--entries 700000] [--inserts 100]

A grow maps its new file with MADV_RANDOM (as an opened file is mapped) so
the kernel caches it in 4 KiB pages: save() then writes about one page per
changed slot.  Without the advice the page cache may hold the new file in
large folios (Linux 6.x, ext4/xfs), and save() writes whole folios (up to
2 MiB) per changed slot.  Reads the process's write_bytes from /proc/self/io.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from diskhash import DiskHashIndex, PayloadMeta


def written() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=700_000)
    ap.add_argument("--inserts", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        with DiskHashIndex(os.path.join(tmp, "grown.idx")) as idx:
            for _ in range(args.entries):                 # grows by doubling, many times
                k = rng.getrandbits(128)
                idx.insert(k, PayloadMeta(k, 1, 2, 0, 3))
            idx.save()
            before = written()
            for _ in range(args.inserts):
                k = rng.getrandbits(128)
                idx.insert(k, PayloadMeta(k, 1, 2, 0, 3))
            t0 = time.perf_counter()
            idx.save()
            elapsed = time.perf_counter() - t0
            kib = (written() - before) / 1024
            print(f"{args.entries:,} entries ({idx.num_slots:,} slots): save() after {args.inserts} "
                  f"random inserts wrote {kib:,.0f} KiB in {elapsed * 1e3:.1f} ms "
                  f"({kib * 1024 / args.inserts / 4096:.1f} pages per insert)")


if __name__ == "__main__":
    main()
