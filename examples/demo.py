"""The main job: build a real index, reopen it, check every entry, print throughput.

    python examples/demo.py [--entries N] [--dir DIR | --keep DIR]

Keys are random 128-bit edge ids; each maps to where its payload would sit in
an append-only data file.  ``--keep DIR`` builds ``DIR/edges.idx`` and leaves
it there, to try the command line on (``python -m diskhash info DIR/edges.idx``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from typing import Iterator

from diskhash import Compression, DiskHashIndex, PayloadMeta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", default=None,
                       help="where to make the temporary directory it builds in (removed at the end)")
    where.add_argument("--keep", default=None, metavar="DIR",
                       help="build DIR/edges.idx (DIR is created if needed) and keep it")
    args = parser.parse_args()
    n = args.entries

    rng = random.Random(2026)
    keys = [rng.getrandbits(128) for _ in range(n)]
    lengths = [rng.randrange(64, 4096) for _ in range(n)]

    with _workdir(args.dir, args.keep) as tmp:
        path = os.path.join(tmp, "edges.idx")
        if args.keep is not None and os.path.exists(path):
            raise SystemExit(f"{path} exists already: remove it or --keep another directory")

        t0 = time.perf_counter()
        with DiskHashIndex(path) as idx:
            offset = 0
            for key, length in zip(keys, lengths):
                idx.insert(key, PayloadMeta(key, offset, length, Compression.LZ4, length * 2))
                offset += length
            t_insert = time.perf_counter() - t0
            t1 = time.perf_counter()
            idx.save()
            t_save = time.perf_counter() - t1
            slots = idx.num_slots

        t0 = time.perf_counter()
        with DiskHashIndex(path, readonly=True) as idx:
            t_open = time.perf_counter() - t0
            assert len(idx) == n, f"reopened index has {len(idx)} entries, expected {n}"
            t0 = time.perf_counter()
            offset = 0
            for key, length in zip(keys, lengths):
                meta = idx[key]
                if meta != (key, offset, length, Compression.LZ4, length * 2):
                    raise SystemExit(f"entry {key} read back wrong: {meta}")
                offset += length
            t_check = time.perf_counter() - t0
            t0 = time.perf_counter()
            misses = sum(1 for _ in range(n) if rng.getrandbits(128) in idx)
            t_miss = time.perf_counter() - t0
            assert misses == 0
            stats = idx.stats()
        size = os.path.getsize(path)

    print(f"entries            {n:>12,}")
    print(f"slots              {slots:>12,}   load factor {stats.load_factor:.3f}, "
          f"longest probe {stats.longest_probe}, mean {stats.mean_probe:.2f}")
    print(f"file               {size / 2**20:>12.1f} MiB   {size / n:.1f} bytes/entry")
    print(f"insert (with grows){n / t_insert:>12,.0f} /s   {t_insert / n * 1e9:7.0f} ns each")
    print(f"save               {t_save * 1e3:>12.1f} ms")
    print(f"reopen             {t_open * 1e3:>12.2f} ms")
    print(f"get + compare      {n / t_check:>12,.0f} /s   {t_check / n * 1e9:7.0f} ns each")
    print(f"miss (in)          {n / t_miss:>12,.0f} /s   {t_miss / n * 1e9:7.0f} ns each")
    print(f"all {n:,} entries read back exactly")
    if args.keep is not None:
        print(f"kept {path}: try  python -m diskhash info {path}")


@contextlib.contextmanager
def _workdir(parent: "str | None", keep: "str | None") -> Iterator[str]:
    """The directory to build in: ``keep`` (made if missing, left behind) or a
    temporary directory under ``parent`` (removed at the end)."""
    if keep is not None:
        os.makedirs(keep, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        yield tmp


if __name__ == "__main__":
    main()
