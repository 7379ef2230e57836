"""Bytes written by save() after a few random inserts into a grown table,
and by a PayloadStore's put + save() at the end of a grown data file.

    python benchmarks/save_after_grow.py [--entries 700000] [--inserts 100] [--puts 100000]

A grow maps its new file with MADV_RANDOM (as an opened file is mapped) so
the kernel caches it in 4 KiB pages: save() then writes about one page per
changed slot.  Without the advice the page cache may hold the new file in
large folios (Linux 6.x, ext4/xfs), and save() writes whole folios (up to
2 MiB) per changed slot.  The data file's new space is populated the same
way (read ahead, then MADV_POPULATE_WRITE, under MADV_RANDOM), so a put +
save() dirties a page of the data file, not a folio.  Reads the process's
write_bytes from /proc/self/io (a folio counts whole when it is dirtied).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from diskhash import DiskHashIndex, PayloadMeta, PayloadStore


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
    ap.add_argument("--puts", type=int, default=100_000, help="1 KiB puts before the put + save() loop")
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
        with PayloadStore(os.path.join(tmp, "store")) as store:
            payload = rng.randbytes(1024)
            for i in range(args.puts):                    # the data file grown many times
                store.put(i, payload)
            store.save()
            before = written()
            for i in range(args.inserts):
                store.put(args.puts + i, payload)
                store.save()
            per = (written() - before) / args.inserts
            print(f"PayloadStore of {args.puts:,} x 1 KiB: each of {args.inserts} put + save() "
                  f"wrote {per:,.0f} bytes (data page, index slot page, headers)")


if __name__ == "__main__":
    main()
