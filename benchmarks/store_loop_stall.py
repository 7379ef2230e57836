"""How long inline ``await store.get`` blocks the event loop when the data file is cold.

    python benchmarks/store_loop_stall.py [--entries 100000] [--size 4096] [--gets 2000]
                                          [--backend asyncio|uvloop|trio] [--dir DIR]

Builds a store of ``--entries`` random payloads of ``--size`` bytes, saves
and closes it, then for each case runs, on the event loop, a heartbeat task
(sleeps 1 ms, records the gap) beside a reader task doing ``--gets``
``await store.get(k)`` of random keys, with a checkpoint (``anyio.sleep(0)``)
after each, as a server running one task per request would have:

* ``warm``: the data file in the page cache, reads inline (the default lane);
* ``cold inline``: the data file evicted first (``posix_fadvise(DONTNEED)``),
  reads inline: each miss is a disk read on the loop thread;
* ``cold thread``: evicted again, every read sent to a worker thread
  (``inline_read=0``): the loop never waits for the disk, each get pays a
  thread hop.

Reports per case the longest heartbeat gap beyond 1 ms (the stall), the
99th-percentile gap, and gets per second.  The numbers decide the default
documented in docs/guide/store.md (figures: docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

import anyio
from _backends import backend_for

from diskhash import AsyncPayloadStore, PayloadStore
from diskhash._store import aio as _aio_store


def build(directory: str, entries: int, size: int) -> None:
    with PayloadStore(directory) as s:
        chunk = 2000
        for start in range(0, entries, chunk):
            n = min(chunk, entries - start)
            s.put_many(range(start, start + n), [os.urandom(size) for _ in range(n)])


def evict(directory: str) -> None:
    for name in os.listdir(directory):
        if name.startswith("data-"):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def run_case(directory: str, gets: int, keys: list[int], inline_read: int) -> dict:
    store = await AsyncPayloadStore.open(directory, readonly=True, inline_read=inline_read)
    gaps: list[float] = []
    done = anyio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last - 0.001)
            last = now

    async def reader() -> float:
        t = time.perf_counter()
        for k in keys[:gets]:
            await store.get(k)
            await anyio.sleep(0)        # as a server's tasks would: let the loop run
        dt = time.perf_counter() - t
        done.set()
        return dt

    result: dict = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)

        async def timed() -> None:
            result["seconds"] = await reader()

        tg.start_soon(timed)
    await store.close()
    gaps.sort()
    return {
        "max_ms": max(gaps) * 1000 if gaps else 0.0,
        "p99_ms": gaps[int(len(gaps) * 0.99)] * 1000 if gaps else 0.0,
        "median_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
        "gets_per_s": gets / result["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--gets", type=int, default=2000)
    ap.add_argument("--backend", default="asyncio", choices=("asyncio", "uvloop", "trio"))
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    be = backend_for(args.backend)
    if be is None:
        return
    backend, options = be
    base = tempfile.mkdtemp(prefix="store_stall-", dir=args.dir)
    try:
        d = os.path.join(base, "s")
        build(d, args.entries, args.size)
        rng = random.Random(3)
        keys = [rng.randrange(args.entries) for _ in range(args.gets)]
        print(f"{args.entries} payloads of {args.size} B, {args.gets} random gets, {args.backend}")
        inline = _aio_store.INLINE_READ
        cases = []
        # warm: read everything once so the case measures the page cache
        with PayloadStore(d, readonly=True) as s:
            for k in keys:
                s.get(k)
        cases.append(("warm inline", inline, False))
        cases.append(("cold inline", inline, True))
        cases.append(("cold thread", 0, True))
        for name, limit, cold in cases:
            if cold:
                evict(d)
            r = anyio.run(run_case, d, args.gets, keys, limit, backend=backend, backend_options=options)
            print(f"  {name:<12} longest stall {r['max_ms']:8.2f} ms   p99 gap {r['p99_ms']:6.2f} ms   "
                  f"median gap {r['median_ms']:5.2f} ms   {r['gets_per_s']:>9.0f} gets/s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
