"""Bulk-load millions of entries from an async producer while lookups go on.

    python examples/bulk_loader.py [--entries 3000000] [--readers 4] [--backend asyncio|uvloop|trio]

A producer (standing in for a network stream) yields batches of records; a
loader awaits ``insert`` for each (inline, except the few that grow the table,
which run in a worker thread); meanwhile reader tasks keep looking up ids
already loaded, and a heartbeat task measures how late the loop runs.  Every
``--report-every`` seconds it prints the load rate, the grows so far, lookups
served and their latency, and the loop's longest lag.  At the end it saves,
checks every loaded id (or ``--check`` of them), and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from typing import AsyncIterator

import anyio

from diskhash import AsyncDiskHashIndex, Compression, PayloadMeta

_ODD = 0x9E3779B97F4A7C15F39CC0605CEDC835        # odd: i -> i * _ODD mod 2**128 is a bijection


def edge_id(i: int) -> int:
    return (i * _ODD) & ((1 << 128) - 1)


def record(i: int) -> PayloadMeta:
    return PayloadMeta(edge_id(i), i * 256, 256, Compression.LZ4, 1024)


async def produce(total: int, batch: int) -> AsyncIterator[list[tuple[int, PayloadMeta]]]:
    """The upstream: batches of (edge id, record), with a checkpoint between batches."""
    for start in range(0, total, batch):
        await anyio.sleep(0)
        yield [(edge_id(i), record(i)) for i in range(start, min(total, start + batch))]


class Progress:
    def __init__(self) -> None:
        self.loaded = 0
        self.grows = 0
        self.grow_seconds: list[float] = []
        self.lookups = 0
        self.latencies_ns: list[int] = []      # a 1-in-16 sample, since the last report
        self.max_get_ns = 0                    # since the last report
        self.max_lag_ms = 0.0                  # since the last report
        self.worst_lag_ms = 0.0
        self.worst_get_us = 0.0
        self.errors: list[str] = []
        self.done = anyio.Event()


async def loader(idx: AsyncDiskHashIndex, p: Progress, total: int, batch: int) -> None:
    slots = idx.num_slots
    async for records in produce(total, batch):
        for n, (key, meta) in enumerate(records, 1):
            t = time.perf_counter()
            await idx.insert(key, meta)
            if n % 64 == 0:
                await anyio.sleep(0)               # inline inserts never yield: let readers in
            if idx.num_slots != slots:             # this insert grew the table
                slots = idx.num_slots
                p.grows += 1
                p.grow_seconds.append(time.perf_counter() - t)
        p.loaded += len(records)
    await idx.save()
    p.done.set()


async def reader(idx: AsyncDiskHashIndex, p: Progress, seed: int) -> None:
    rng = random.Random(seed)
    while not p.done.is_set():
        for n in range(100):
            if not p.loaded:
                break
            i = rng.randrange(p.loaded)
            t = time.perf_counter_ns()
            meta = await idx.get(edge_id(i))
            dt = time.perf_counter_ns() - t
            p.max_get_ns = max(p.max_get_ns, dt)
            if n % 16 == 0:                    # a sample: sorting every latency would stall the loop
                p.latencies_ns.append(dt)
            if meta != record(i):
                p.errors.append(f"id #{i}: got {meta!r}")
        p.lookups += 100
        await anyio.sleep(0)


async def heartbeat(p: Progress) -> None:
    last = time.perf_counter()
    while not p.done.is_set():
        await anyio.sleep(0.001)
        now = time.perf_counter()
        lag = (now - last) * 1e3 - 1.0
        p.max_lag_ms = max(p.max_lag_ms, lag)
        p.worst_lag_ms = max(p.worst_lag_ms, lag)
        last = now


async def reporter(idx: AsyncDiskHashIndex, p: Progress, every: float, t0: float) -> None:
    last_loaded, last_lookups, last_t = 0, 0, t0
    while not p.done.is_set():
        with anyio.move_on_after(every):
            await p.done.wait()
        now = time.perf_counter()
        lat = sorted(p.latencies_ns)
        p.latencies_ns = []
        dt = max(now - last_t, 1e-9)
        if lat:
            p.worst_get_us = max(p.worst_get_us, p.max_get_ns / 1e3)
            lat_text = (f"get p50 {lat[len(lat) // 2] / 1e3:.1f} us, p99 {lat[len(lat) * 99 // 100] / 1e3:.1f} us, "
                        f"max {p.max_get_ns / 1e3:.0f} us")
            p.max_get_ns = 0
        else:
            lat_text = "no lookups yet"
        print(f"[{now - t0:6.1f} s] {p.loaded:>10,} loaded ({(p.loaded - last_loaded) / dt:>9,.0f}/s), "
              f"{p.grows} grows, {idx.num_slots:,} slots | {(p.lookups - last_lookups) / dt:>9,.0f} lookups/s, "
              f"{lat_text} | loop lag max {p.max_lag_ms:.1f} ms", flush=True)
        p.max_lag_ms = 0.0
        last_loaded, last_lookups, last_t = p.loaded, p.lookups, now


async def run(path: str, args: argparse.Namespace) -> int:
    p = Progress()
    t0 = time.perf_counter()
    async with await AsyncDiskHashIndex.open(path) as idx:
        async with anyio.create_task_group() as tg:
            tg.start_soon(loader, idx, p, args.entries, args.batch)
            for n in range(args.readers):
                tg.start_soon(reader, idx, p, n)
            tg.start_soon(heartbeat, p)
            tg.start_soon(reporter, idx, p, args.report_every, t0)
        elapsed = time.perf_counter() - t0
        grow_text = ", ".join(f"{s * 1e3:.0f}" for s in p.grow_seconds)
        print(f"loaded {p.loaded:,} entries in {elapsed:.1f} s ({p.loaded / elapsed:,.0f}/s) with "
              f"{p.grows} grows (ms each: {grow_text}); {p.lookups:,} lookups served meanwhile, "
              f"slowest {p.worst_get_us:.0f} us; longest loop lag {p.worst_lag_ms:.1f} ms")
        # Check: the count, and every loaded id (or a sample) reads back exactly.
        n_check = p.loaded if args.check is None else min(args.check, p.loaded)
        sample = range(p.loaded) if n_check == p.loaded else random.Random(9).sample(range(p.loaded), n_check)
        bad = [i for i in sample if await idx.get(edge_id(i)) != record(i)]
        ok = len(idx) == args.entries and not bad and not p.errors
        print(f"{'all' if ok else 'NOT all'} {n_check:,} checked entries read back exactly; "
              f"{len(idx):,} entries in the index; {len(p.errors)} wrong lookups during the load")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=3_000_000)
    parser.add_argument("--batch", type=int, default=256, help="records per producer batch")
    parser.add_argument("--readers", type=int, default=4, help="concurrent lookup tasks")
    parser.add_argument("--report-every", type=float, default=1.0, help="seconds between progress lines")
    parser.add_argument("--check", type=int, default=None, help="check this many ids at the end (default: all)")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    backend, options = ("asyncio", {"use_uvloop": True}) if args.backend == "uvloop" else (args.backend, {})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        code = anyio.run(run, os.path.join(tmp, "bulk.idx"), args, backend=backend, backend_options=options)
    sys.exit(code)


if __name__ == "__main__":
    main()
