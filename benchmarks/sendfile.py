"""Large payloads from examples/aiohttp_app.py with and without sendfile: MB/s and server CPU per request.

    python benchmarks/sendfile.py [--payloads 64] [--payload-mib 1] [--clients 4] [--duration 10] [--quick]

Builds a store of ``--payloads`` uncompressed payloads of ``--payload-mib``
MiB, then serves it twice with the example app, as a separate process:
``--sendfile-min 65536`` (payloads go from the data file to the socket with
``loop.sendfile``, never through Python) and ``--sendfile-min 0`` (``await
store.get`` copies them into a bytes object, aiohttp writes that).  A load
generator process (benchmarks/_loadgen.py) keeps ``--clients`` keep-alive
connections asking for random payloads.  Reported per mode: requests/s, MB/s
received, p50/p99 latency, and the server process's CPU time (user + system,
from /proc) per request over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(os.path.dirname(HERE), "examples", "aiohttp_app.py")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_mode(args: argparse.Namespace, store: str, paths_file: str, sendfile_min: int) -> dict:
    server = subprocess.Popen([sys.executable, APP, "--store", store, "--port", "0",
                               "--sendfile-min", str(sendfile_min)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"server did not start: {line}{server.stderr.read() if server.stderr else ''}")
        port = int(line.rsplit(":", 1)[1])
        cpu0 = cpu_seconds(server.pid)
        load = subprocess.run(
            [sys.executable, os.path.join(HERE, "_loadgen.py"), "--port", str(port), "--paths", paths_file,
             "--clients", str(args.clients), "--warmup", str(args.warmup), "--duration", str(args.duration)],
            capture_output=True, text=True, timeout=args.warmup + args.duration + 120, check=True)
        cpu = cpu_seconds(server.pid) - cpu0
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=120)
    result = json.loads(load.stdout)
    result["cpu_ms_per_request"] = cpu * 1e3 / max(1, result["total_requests"])
    result["mb_per_s"] = result["requests"] * args.payload_mib * (1 << 20) / args.duration / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=64)
    parser.add_argument("--payload-mib", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="small and short: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.payloads, args.clients, args.warmup, args.duration = 8, 2, 0.3, 1.0

    from diskhash import Compression, PayloadStore

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = os.path.join(tmp, "store")
        rng = random.Random(3)
        ids = [rng.getrandbits(64) for _ in range(args.payloads)]
        with PayloadStore(store, compression=Compression.NONE) as s:
            for edge_id in ids:
                s.put(edge_id, rng.randbytes(args.payload_mib << 20))
            s.save()
        paths_file = os.path.join(tmp, "paths.txt")
        with open(paths_file, "w") as f:
            f.writelines(f"/payload/{i}\n" for i in ids)
        print(f"{args.payloads} payloads of {args.payload_mib} MiB; {args.clients} keep-alive clients, "
              f"{args.warmup:g} s warm-up + {args.duration:g} s measured")
        print(f"{'mode':<22} {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18}")
        results = {}
        for mode, threshold in (("sendfile", 65536), ("store.get + write", 0)):
            r = results[mode] = run_mode(args, store, paths_file, threshold)
            errors = f"  {r['errors']} ERRORS {r['first_errors']}" if r["errors"] else ""
            print(f"{mode:<22} {r['req_per_s']:>8,.0f} {r['mb_per_s']:>8,.0f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['cpu_ms_per_request']:>18.3f}{errors}")
        a, b = results["sendfile"], results["store.get + write"]
        print(f"sendfile: {a['mb_per_s'] / b['mb_per_s']:.2f}x the MB/s, "
              f"{a['cpu_ms_per_request'] / b['cpu_ms_per_request']:.2f}x the server CPU per request")


if __name__ == "__main__":
    main()
