"""The memory and speed of ``export_parquet`` over a store bigger than a batch by far.

    python benchmarks/export_memory.py [--entries 10000000] [--size 1024] [--dir DIR] [--cold] [--keep]

Builds ``--entries`` random ``--size``-byte payloads under random keys in a
PayloadStore under ``--dir`` (kept between runs with ``--keep``; the
default, 10M x 1 KiB, is a 10 GB store), then exports it to an uncompressed
Parquet file beside it from a fresh child process, which reports its peak
resident set (``VmHWM`` of ``/proc/self/status``: the store's mapped pages
count in it) and the payload bytes per second.  ``--cold`` first drops the
page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``, as root), so the
export reads from the device.  The target of the issue: a 10 GB store
exports with < 500 MB resident.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _backends import machine_info

CHILD = r"""
import json, sys, threading, time
from diskhash import PayloadStore, export_parquet

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) // 1024
    return out

def sample(peaks, stop):
    while not stop.wait(0.05):
        for key, value in status().items():
            peaks[key] = max(peaks.get(key, 0), value)

store_dir, out = sys.argv[1], sys.argv[2]
before = status()
peaks, stop = {}, threading.Event()
sampler = threading.Thread(target=sample, args=(peaks, stop))
sampler.start()
with PayloadStore(store_dir, readonly=True) as store:
    t0 = time.perf_counter()
    n = export_parquet(store, out)
    seconds = time.perf_counter() - t0
stop.set()
sampler.join()
print(json.dumps({"rows": n, "seconds": seconds, "before": before, "after": status(), "peaks": peaks}))
"""


def build(path: str, entries: int, size: int) -> None:
    import numpy as np
    import pyarrow as pa

    from diskhash import KEY_DTYPE, PayloadStore
    rng = np.random.default_rng(19)
    step = max(1, (64 << 20) // size)
    t0 = time.perf_counter()
    with PayloadStore(path) as store:
        for at in range(0, entries, step):
            m = min(step, entries - at)
            keys = np.frombuffer(rng.bytes(16 * m), dtype=KEY_DTYPE)
            offsets = np.arange(0, m * size + 1, size, dtype=np.int64)
            payloads = pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), m, [None, pa.py_buffer(offsets), pa.py_buffer(rng.bytes(m * size))])
            store.put_many(keys, payloads)
    print(f"built {entries:,} x {size} B in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="where the store and the file go (default: a temp dir)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the store")
    args = ap.parse_args()
    m = machine_info(["pyarrow", "numpy", "diskhash-sochidx"])
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    print(f"{m['cpu']}, {m['cores']} cores, load {m['load']}; {versions} ({m['commit']})")
    base = args.dir or tempfile.mkdtemp(prefix="diskhash-export-")
    store_dir = os.path.join(base, f"store-{args.entries}x{args.size}")
    out = os.path.join(base, "export.parquet")
    try:
        if not os.path.exists(store_dir):
            build(store_dir, args.entries, args.size)
        if os.path.exists(out):
            os.unlink(out)
        if args.cold:
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (os.path.dirname(here), os.environ.get("PYTHONPATH")) if p))
        res = subprocess.run([sys.executable, "-c", CHILD, store_dir, out], env=env,
                             capture_output=True, text=True, check=True)
        import json
        r = json.loads(res.stdout.strip().splitlines()[-1])
        payload = r["rows"] * args.size
        peak = r["after"]["VmHWM"]
        index_mib = sum(os.path.getsize(os.path.join(store_dir, name)) for name in os.listdir(store_dir)
                        if name.startswith("index-") and name.endswith(".idx")) >> 20
        print(f"store {payload / 1e9:.2f} GB of payload, index {index_mib} MiB "
              f"({'cold' if args.cold else 'warm'}): export {r['rows']:,} rows in {r['seconds']:.1f} s = "
              f"{payload / r['seconds'] / 1e6:.0f} MB/s with its fsync")
        print(f"peak resident {peak} MiB (at start {r['before']['VmRSS']} MiB); sampled every 50 ms: "
              f"anonymous {r['peaks'].get('RssAnon', '?')} MiB, mapped files {r['peaks'].get('RssFile', '?')} "
              f"MiB (the store's index and data maps: clean page cache, shared)")
        verdict = "PASS" if peak < 500 else "MISS"
        print(f"{verdict}: peak resident {peak} MiB (target < 500 MiB for a 10 GB store)")
    finally:
        if os.path.exists(out):
            os.unlink(out)
        if not args.keep:
            shutil.rmtree(store_dir, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
