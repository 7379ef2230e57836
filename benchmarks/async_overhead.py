"""Per-call cost of ``await idx.get(k)`` over ``idx.get(k)``, on each event loop.

    python benchmarks/async_overhead.py [--entries 200000] [--calls 200000] [--backend all]

Both loops run the same random hits over a warm table; best of 5 runs each.
For scale it also times what a facade that hops to a worker thread per call
(``await anyio.to_thread.run_sync(idx.get, k)``, the lmdb/aiosqlite way)
would cost.  The sync baseline is timed inside the same running event loop.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import anyio
import anyio.to_thread
from _backends import backend_for

from diskhash import AsyncDiskHashIndex, DiskHashIndex


def best_ns_per_call(fn, calls: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t)
    return best / calls


async def best_ns_per_call_async(fn, calls: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter_ns()
        await fn()
        best = min(best, time.perf_counter_ns() - t)
    return best / calls


async def measure(path: str, probe: list[int]) -> dict[str, float]:
    async with await AsyncDiskHashIndex.open(path) as idx:
        sync = idx.sync

        def sync_gets() -> None:
            get = sync.get
            for k in probe:
                get(k)

        async def async_gets() -> None:
            get = idx.get
            for k in probe:
                await get(k)

        def sync_contains() -> None:
            for k in probe:
                k in sync  # noqa: B015

        async def async_contains() -> None:
            contains = idx.contains
            for k in probe:
                await contains(k)

        def sync_overwrites() -> None:
            ins = sync.insert
            for k in probe:
                ins(k, (k, 1, 2, 0, 3))

        async def async_overwrites() -> None:
            ins = idx.insert
            for k in probe:
                await ins(k, (k, 1, 2, 0, 3))

        hops = probe[:2000]

        async def thread_hop_gets() -> None:
            for k in hops:
                await anyio.to_thread.run_sync(sync.get, k)

        n = len(probe)
        return dict(
            sync_get=best_ns_per_call(sync_gets, n),
            async_get=await best_ns_per_call_async(async_gets, n),
            sync_contains=best_ns_per_call(sync_contains, n),
            async_contains=await best_ns_per_call_async(async_contains, n),
            sync_insert=best_ns_per_call(sync_overwrites, n),
            async_insert=await best_ns_per_call_async(async_overwrites, n),
            thread_hop_get=await best_ns_per_call_async(thread_hop_gets, len(hops), repeat=3),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--backend", default="all", choices=["asyncio", "uvloop", "trio", "all"])
    args = parser.parse_args()
    backends = ["asyncio", "uvloop", "trio"] if args.backend == "all" else [args.backend]

    rng = random.Random(5)
    keys = [rng.getrandbits(128) for _ in range(args.entries)]
    probe = [keys[rng.randrange(len(keys))] for _ in range(args.calls)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "edges.idx")
        with DiskHashIndex(path, capacity=len(keys)) as idx:
            for i, k in enumerate(keys):
                idx.insert(k, (k, i, 1, 0, 1))
        print(f"{args.entries:,} entries, {args.calls:,} calls per run, best of 5; ns per call")
        print(f"{'loop':<8} {'get':>6} {'await':>6} {'extra':>6} | {'in':>6} {'await':>6} {'extra':>6} "
              f"| {'insert':>6} {'await':>6} {'extra':>6} | thread hop per get")
        for name in backends:
            chosen = backend_for(name)
            if chosen is None:
                continue
            backend, options = chosen
            r = anyio.run(measure, path, probe, backend=backend, backend_options=options)
            print(f"{name:<8} {r['sync_get']:6.0f} {r['async_get']:6.0f} {r['async_get'] - r['sync_get']:+6.0f} "
                  f"| {r['sync_contains']:6.0f} {r['async_contains']:6.0f} "
                  f"{r['async_contains'] - r['sync_contains']:+6.0f} "
                  f"| {r['sync_insert']:6.0f} {r['async_insert']:6.0f} {r['async_insert'] - r['sync_insert']:+6.0f} "
                  f"| {r['thread_hop_get'] / 1000:6.1f} us")


if __name__ == "__main__":
    main()
