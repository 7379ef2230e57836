"""The main job: build a real index and a payload store, reopen both, check
every entry and every payload byte, print throughput.

    python examples/demo.py [--entries N] [--payloads N] [--dir DIR | --keep DIR]

Keys are random 128-bit edge ids.  The index maps each to where its payload
would sit in an append-only data file; the store (``DIR/payloads``) then keeps
real payloads and the index that points into them.  ``--keep DIR`` leaves
both there, to try the command line on (``diskhash info DIR/edges.idx``,
``diskhash store stats DIR/payloads``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from typing import Iterator

from diskhash import Compression, DiskHashIndex, PayloadMeta, PayloadStore


def main() -> None:
    # The docstring's first paragraph, whole (its first line ends mid-sentence).
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--entries", type=int, default=1_000_000,
                        help="random 128-bit keys put into the index (default: %(default)s)")
    parser.add_argument("--payloads", type=int, default=200_000,
                        help="payloads (64 B - 2 KiB each) put into the store (default: %(default)s)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", default=None,
                       help="where to make the temporary directory it builds in (removed at the end)")
    where.add_argument("--keep", default=None, metavar="DIR",
                       help="build DIR/edges.idx and DIR/payloads (DIR is created if needed) and keep them")
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
        store_lines = _store_phase(os.path.join(tmp, "payloads"), args.payloads, rng)

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
    for line in store_lines:
        print(line)
    if args.keep is not None:
        print(f"kept {path}: try  diskhash info {path}")
        print(f"kept {os.path.join(args.keep, 'payloads')}: try  diskhash store stats "
              f"{os.path.join(args.keep, 'payloads')}")


def _store_phase(directory: str, n: int, rng: random.Random) -> list[str]:
    """Put ``n`` payloads one at a time, save, reopen read-only, read every one back."""
    if os.path.exists(directory):
        raise SystemExit(f"{directory} exists already: remove it or --keep another directory")
    words = [b"edge", b"node", b"weight", b"label", b"since", b"2026", b"source", b"target"]
    keys = [rng.getrandbits(128) for _ in range(n)]
    payloads = [b" ".join(rng.choices(words, k=rng.randrange(10, 300)))[:2048] for _ in range(n)]
    t0 = time.perf_counter()
    with PayloadStore(directory) as store:
        for key, payload in zip(keys, payloads):
            store.put(key, payload)
        t_put = time.perf_counter() - t0
        t1 = time.perf_counter()
        store.save()
        t_save = time.perf_counter() - t1
    with PayloadStore(directory, readonly=True) as store:
        assert len(store) == n, f"reopened store has {len(store)} payloads, expected {n}"
        t0 = time.perf_counter()
        for key, payload in zip(keys, payloads):
            if store[key] != payload:
                raise SystemExit(f"payload {key} read back wrong")
        t_get = time.perf_counter() - t0
        stats = store.stats()
    total = sum(map(len, payloads))
    return [
        f"payloads           {n:>12,}   {total / 2**20:.1f} MiB, on disk {stats.data_bytes / 2**20:.1f} MiB",
        f"put (one at a time){n / t_put:>12,.0f} /s   {t_put / n * 1e9:7.0f} ns each",
        f"store save         {t_save * 1e3:>12.1f} ms",
        f"get + compare      {n / t_get:>12,.0f} /s   {t_get / n * 1e9:7.0f} ns each",
        f"all {n:,} payloads read back exactly",
    ]


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
