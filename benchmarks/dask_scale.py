"""Build and lookup throughput of a sharded set on a Dask LocalCluster, and the
per-shard / per-task figures docs/guide/dask.md projects to 100 machines from.

    python benchmarks/dask_scale.py [--entries 2000000] [--payload 100] [--shards 8]
                                    [--batch 10000] [--lookup-batches 400] [--clients 4]
    python benchmarks/dask_scale.py --quick          # small sizes: checks that it runs
    python benchmarks/dask_scale.py --repeat 3       # each build 3 times, the fastest counts
    python benchmarks/dask_scale.py --source parquet --build-only \
        --baseline /tmp/old-checkout                  # Parquet build against another checkout's

Targets (issue 13):
  * build throughput with 2 worker processes >= 1.7x that with 1 (2 cores);
  * lookups through the actors with 10k-key batches >= 1,000,000 keys/s.
Target (issue 19):
  * a build from Parquet (``--source parquet``) no slower per record than the
    packed build it replaced: ``--baseline DIR`` runs this script's
    ``--source frame`` build again in a subprocess with ``DIR`` (a checkout of
    the commit before, extensions built) first on ``PYTHONPATH``, and prints
    both 2-worker figures with PASS/MISS.

Sources.  ``frame`` (the default): pandas partitions with ``lo``/``hi``
uint64 columns and an ``object`` column of ``bytes``, generated on the workers.
``parquet``: the same records written first to uncompressed Parquet files
(one per partition, the id as ``fixed_size_binary(16)``, the payload
``binary``) and read with ``dd.read_parquet(..., dtype_backend="pyarrow")``.

Method.  The input DataFrame (random 128-bit ids as two uint64 columns,
random payloads of ``--payload`` bytes) is generated on the workers and
persisted in their memory first, so the timed part is ``build_store``
alone: split by shard, transfer, one ``put_many`` writer task per shard,
manifest.  Timed for 1 and then 2 worker processes (one thread each) on a
fresh cluster each; with ``--repeat N`` each cluster builds N times (into
fresh directories) and the fastest build counts, every time printed (on a
shared machine another process's burst lands in one run, not in all).  Lookups: ``LookupService`` over the 2-worker set;
``--clients`` threads each send ``get_many`` batches of ``--batch`` random
present ids; keys/s is total keys over wall time.  The task stream gives
the mean duration of a split task and of a shard-writer task (the per-shard
figures), and 2000 no-op tasks give Dask's per-task overhead.  Beside each
build's wall time the CPU it took is printed: the workers' (``process_time``
of each worker process, by ``client.run``, before and after) and this
process's (the client and, in a LocalCluster, the scheduler), medians over
the repeats; on a busy machine they compare two builds where the wall
clock cannot.  Timing
numbers depend on an idle machine: run it on a quiet one; the figures
recorded in docs/performance.md come from one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def _part(seed: int, rows: int, payload: int) -> object:
    import pandas as pd

    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 2**64, rows, dtype=np.uint64)
    hi = rng.integers(0, 2**64, rows, dtype=np.uint64)
    blob = rng.bytes(rows * payload)
    payloads = [blob[i:i + payload] for i in range(0, rows * payload, payload)]
    return pd.DataFrame({"lo": lo, "hi": hi, "payload": pd.Series(payloads, dtype=object)})


def write_parquet(root: str, args: argparse.Namespace) -> str:
    """The ``frame`` source's records as uncompressed Parquet files (one per
    partition): id ``fixed_size_binary(16)``, payload ``binary``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = os.path.join(root, "parquet")
    os.makedirs(where, exist_ok=True)
    rows = args.entries // args.partitions
    for i in range(args.partitions):
        df = _part(i, rows, args.payload)
        ids = np.empty((rows, 2), dtype="<u8")
        ids[:, 0] = df["lo"].to_numpy()
        ids[:, 1] = df["hi"].to_numpy()
        key = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, pa.py_buffer(ids)])
        table = pa.table({"edge_id": key, "payload": pa.array(df["payload"], type=pa.binary())})
        pq.write_table(table, os.path.join(where, f"part-{i:05d}.parquet"), compression="none")
    return where


def _noop(x: int) -> int:
    return x


def _task_durations(stream: list, prefix: str) -> list[float]:
    out = []
    for t in stream:
        key = t.get("key")
        name = key if isinstance(key, str) else str(key)
        if prefix in name:
            for s in t.get("startstops", ()):
                if s.get("action") == "compute":
                    out.append(s["stop"] - s["start"])
    return out


def build_once(workers: int, args: argparse.Namespace, root: str) -> dict:
    import dask
    import dask.dataframe as dd
    import distributed

    from diskhash.dask import SPLIT_TASK, WRITE_TASK, build_store

    rows = args.entries // args.partitions
    target = os.path.join(root, f"set-{workers}w")
    with dask.config.set({"dataframe.convert-string": False,
                          "distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False}):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster, direct_to_workers=True) as client:
            if args.source == "parquet":
                ddf = dd.read_parquet(args.parquet, dtype_backend="pyarrow")
                id_columns: object = "edge_id"
            else:
                ddf = dd.from_map(_part, list(range(args.partitions)), rows=rows,
                                  payload=args.payload)
                id_columns = ("lo", "hi")
            ddf = client.persist(ddf)
            distributed.wait(ddf)
            times, splits, writes, cpus, own = [], [], [], [], []
            for attempt in range(args.repeat):
                where = target if attempt == 0 else f"{target}-{attempt}"
                cpu0 = client.run(time.process_time)
                with distributed.get_task_stream(client) as ts:
                    t0, c0 = time.perf_counter(), time.process_time()
                    build_store(ddf, where, shards=args.shards, id_columns=id_columns,
                                client=client)
                    times.append(time.perf_counter() - t0)
                    own.append(time.process_time() - c0)
                cpu1 = client.run(time.process_time)
                cpus.append(sum(cpu1[w] - cpu0[w] for w in cpu0))
                splits += _task_durations(ts.data, SPLIT_TASK)
                writes += _task_durations(ts.data, WRITE_TASK)
                if attempt:
                    shutil.rmtree(where, ignore_errors=True)
            elapsed = min(times)
            overhead = None
            if workers == 2:
                client.gather(client.map(_noop, range(200), pure=False))   # warm
                t0 = time.perf_counter()
                client.gather(client.map(_noop, range(2000), pure=False))
                overhead = (time.perf_counter() - t0) / 2000
    entries = rows * args.partitions
    return {"workers": workers, "seconds": elapsed, "entries": entries,
            "entries_per_s": entries / elapsed,
            "mb_per_s": entries * args.payload / elapsed / 1e6,
            "split_task_s": statistics.mean(splits) if splits else float("nan"),
            "write_task_s": statistics.mean(writes) if writes else float("nan"),
            "task_overhead_s": overhead, "set": target, "times": times,
            "worker_cpu_s": statistics.median(cpus), "client_cpu_s": statistics.median(own),
            "load": os.getloadavg()[0]}


def lookups(set_dir: str, args: argparse.Namespace) -> dict:
    import distributed

    from diskhash import ShardedStore
    from diskhash.dask import LookupService

    with ShardedStore(set_dir, readonly=True) as local:
        ids = np.fromiter(iter(local), dtype=object, count=len(local))
        rng = np.random.default_rng(1)
        pick = rng.choice(len(ids), size=min(len(ids), 200_000), replace=False)
        from diskhash._shards.routing import key_array

        pool = key_array([int(k) for k in ids[pick]])
        sample = pool[: min(len(pool), args.batch)]
        t0 = time.perf_counter()
        expect = local.get_many(sample)
        local_rate = len(sample) / (time.perf_counter() - t0)
    batches = [pool[rng.integers(0, len(pool), args.batch)] for _ in range(16)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, direct_to_workers=True) as client, \
            LookupService(client, set_dir) as svc:
        assert svc.get_many(sample) == expect, "actor lookups differ from local lookups"
        for b in batches[:4]:
            svc.get_many(b)                                      # warm the page cache
        per_client = max(1, args.lookup_batches // args.clients)
        start = threading.Barrier(args.clients + 1)
        errors: list[BaseException] = []

        def run(c: int) -> None:
            start.wait()
            try:
                for i in range(per_client):
                    found = svc.get_many(batches[(c + i) % len(batches)])
                    if found[0] is None:
                        raise AssertionError("a present key was not found")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        t0 = time.perf_counter()
        for b in batches[:8]:
            svc.get_many(b)
        serial = 8 * args.batch / (time.perf_counter() - t0)
    keys = per_client * args.clients * args.batch
    return {"keys_per_s": keys / elapsed, "serial_keys_per_s": serial,
            "local_keys_per_s": local_rate, "batch": args.batch, "clients": args.clients}


def baseline(args: argparse.Namespace, mine: dict) -> None:
    """Run the ``frame`` build of the checkout at ``args.baseline`` in a
    subprocess (same sizes) and print both per-record figures."""
    out = os.path.join(tempfile.mkdtemp(prefix="dask-scale-base-", dir=args.dir), "r.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--source", "frame", "--two-only",
           "--json", out, "--entries", str(args.entries), "--payload", str(args.payload),
           "--shards", str(args.shards), "--partitions", str(args.partitions),
           "--repeat", str(args.repeat)]
    if args.dir:
        cmd += ["--dir", args.dir]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline))
    subprocess.run(cmd, check=True, env=env, cwd=args.baseline, stdout=subprocess.DEVNULL)
    with open(out) as f:
        base = json.load(f)["two"]
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    a, b = mine["entries_per_s"], base["entries_per_s"]
    for who, r, rate in ((f"this checkout --source {args.source}", mine, a),
                         (f"{args.baseline} --source frame", base, b)):
        print(f"2-worker build, {who}: {rate:,.0f} entries/s ({1e9 / rate:,.0f} ns/entry; "
              f"runs {', '.join(f'{t:.2f}' for t in r['times'])} s); mean split task "
              f"{r['split_task_s'] * 1e3:.1f} ms, mean shard-writer task "
              f"{r['write_task_s'] * 1e3:.1f} ms; workers' CPU {r['worker_cpu_s']:.2f} s, "
              f"client+scheduler CPU {r['client_cpu_s']:.2f} s a build (medians)")
    print(f"per record, this / baseline: {a / b:.2f}x (target >= 1.0): "
          f"{'PASS' if a >= b else 'MISS'}; load average {os.getloadavg()[0]:.2f} after",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=2_000_000)
    ap.add_argument("--payload", type=int, default=100, help="payload bytes per entry")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--lookup-batches", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4, help="threads sending lookup batches")
    ap.add_argument("--repeat", type=int, default=1,
                    help="builds per cluster; the fastest counts (all are printed)")
    ap.add_argument("--dir", default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    ap.add_argument("--source", choices=("frame", "parquet"), default="frame",
                    help="the input: pandas partitions with object payloads, or Parquet files")
    ap.add_argument("--build-only", action="store_true", help="no lookups")
    ap.add_argument("--baseline", default=None,
                    help="a checkout (extensions built) whose --source frame build to compare with")
    ap.add_argument("--json", default=None, help="write the build figures to this file")
    ap.add_argument("--two-only", action="store_true",
                    help="only the 2-worker build (what --baseline runs)")
    args = ap.parse_args()
    if args.quick:
        args.entries, args.partitions, args.lookup_batches = 100_000, 4, 40
    root = tempfile.mkdtemp(prefix="dask-scale-", dir=args.dir)
    try:
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; "
              f"{args.entries} entries x {args.payload} B, {args.shards} shards, "
              f"{args.partitions} input partitions, source {args.source}", flush=True)
        if args.source == "parquet":
            args.parquet = write_parquet(root, args)
        one = build_once(1, args, root) if not args.two_only else None
        two = build_once(2, args, root)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"one": one, "two": two}, f)
        for r in (one, two):
            if r is None:
                continue
            print(f"build, {r['workers']} worker(s): {r['seconds']:.2f} s, "
                  f"{r['entries_per_s']:,.0f} entries/s, {r['mb_per_s']:.1f} MB/s payload; "
                  f"mean split task {r['split_task_s'] * 1e3:.1f} ms, "
                  f"mean shard-writer task {r['write_task_s'] * 1e3:.1f} ms; "
                  f"all runs {', '.join(f'{t:.2f}' for t in r['times'])} s; "
                  f"workers' CPU {r['worker_cpu_s']:.2f} s, client+scheduler "
                  f"CPU {r['client_cpu_s']:.2f} s a build (medians); load average {r['load']:.2f} after")
        if one is not None:
            ratio = two["entries_per_s"] / one["entries_per_s"]
            print(f"build speed-up 1 -> 2 workers: {ratio:.2f}x (target >= 1.7x): "
                  f"{'PASS' if ratio >= 1.7 else 'MISS'}")
        if args.baseline:
            baseline(args, two)
        per_shard = args.entries / args.shards
        print(f"per shard: {per_shard:,.0f} entries written in {two['write_task_s']:.3f} s "
              f"= {per_shard / two['write_task_s']:,.0f} entries/s per writer task")
        print(f"Dask per-task overhead (2000 no-op tasks, 2 workers): "
              f"{two['task_overhead_s'] * 1e6:.0f} us/task")
        if args.build_only:
            return
        lk = lookups(two["set"], args)
        print(f"lookups, local ShardedStore.get_many (1 process): {lk['local_keys_per_s']:,.0f} keys/s")
        print(f"lookups through actors, 1 client thread: {lk['serial_keys_per_s']:,.0f} keys/s")
        print(f"lookups through actors, {lk['clients']} client threads, batches of "
              f"{lk['batch']}: {lk['keys_per_s']:,.0f} keys/s (target >= 1,000,000): "
              f"{'PASS' if lk['keys_per_s'] >= 1e6 else 'MISS'}; "
              f"load average {os.getloadavg()[0]:.2f} after")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
