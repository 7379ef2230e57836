"""DiskHashIndex shared by processes: what the default (shared) mode costs.

    python benchmarks/processes.py [--entries 200000] [--dir DIR]

1. One process, ``insert`` then ``get`` of ``--entries`` keys, in the default
   shared mode (each write takes the robust cross-process mutex and bumps the
   seqlock; each read checks the seqlock) and with ``exclusive=True`` (no
   cross-process lock): the shared mode should stay within 10%.
2. A reader process's ``get`` rate alone, then while another process
   overwrites (and grows) the index as fast as it can.

The machine's other load shows in every figure: run it twice.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import tempfile
import time

from diskhash import DiskHashIndex, PayloadMeta


def single(path: str, n: int, exclusive: bool) -> tuple[float, float]:
    if os.path.exists(path):
        os.unlink(path)
    metas = [PayloadMeta(k, k, 1024, 0, 1024) for k in range(n)]
    with DiskHashIndex(path, exclusive=exclusive, capacity=n) as idx:
        insert = idx.insert
        t = time.perf_counter()
        for m in metas:
            insert(m.edge_id, m)
        put = n / (time.perf_counter() - t)
        get = idx.get
        keys = list(range(n))
        random.shuffle(keys)
        t = time.perf_counter()
        for k in keys:
            get(k)
        got = n / (time.perf_counter() - t)
    return put, got


def _reader(path: str, n: int, seconds: float, out) -> None:
    keys = [random.randrange(n) for _ in range(100_000)]
    with DiskHashIndex(path, readonly=True) as idx:
        get = idx.get
        done = 0
        end = time.perf_counter() + seconds
        t = time.perf_counter()
        while time.perf_counter() < end:
            for k in keys[:10_000]:
                get(k)
            done += 10_000
        out.put(done / (time.perf_counter() - t))


def _writer(path: str, n: int, stop) -> None:
    with DiskHashIndex(path) as idx:
        v = 0
        while not stop.is_set():
            for k in range(0, n, 7):
                idx.insert(k, PayloadMeta(k, v, 1024, 0, 1024))
                if stop.is_set():
                    break
            v += 1


def reader_rate(path: str, n: int, with_writer: bool, seconds: float = 2.0) -> float:
    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    writer = ctx.Process(target=_writer, args=(path, n, stop)) if with_writer else None
    if writer:
        writer.start()
        time.sleep(0.5)
    reader = ctx.Process(target=_reader, args=(path, n, seconds, out))
    reader.start()
    rate = out.get(timeout=120)
    reader.join()
    if writer:
        stop.set()
        writer.join()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    d = tempfile.mkdtemp(dir=args.dir)
    try:
        path = os.path.join(d, "bench.idx")
        n = args.entries
        print(f"{n} entries, best of {args.rounds}")
        best = {}
        for _ in range(args.rounds):
            for exclusive in (True, False):
                put, got = single(path, n, exclusive)
                b = best.setdefault(exclusive, [0.0, 0.0])
                b[0], b[1] = max(b[0], put), max(b[1], got)
        for what, col in (("insert", 0), ("get", 1)):
            ex, sh = best[True][col], best[False][col]
            verdict = "PASS" if sh >= 0.9 * ex else "MISS"
            print(f"single process {what:6s}: exclusive {ex / 1e6:.2f} M/s, shared {sh / 1e6:.2f} M/s "
                  f"({sh / ex:.0%}) {verdict} (within 10%)")
        alone = reader_rate(path, n, False)
        busy = reader_rate(path, n, True)
        print(f"reader process get: alone {alone / 1e6:.2f} M/s, while another process writes "
              f"{busy / 1e6:.2f} M/s ({busy / alone:.0%})")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
