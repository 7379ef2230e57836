"""An HTTP/1.1 keep-alive load generator, run as its own process so that it
does not share the server's GIL (benchmarks/http_load.py, benchmarks/sendfile.py).

    python benchmarks/_loadgen.py --port PORT --paths FILE --clients 32 --warmup 1 --duration 10

``FILE`` holds request paths, one a line; each of ``--clients`` connections
sends GETs for paths drawn at random, one at a time (send, read the whole
answer, send the next), for ``--warmup`` + ``--duration`` seconds; with
``--put-fraction F``, that fraction of the requests are PUTs of
``--put-bytes`` to a path drawn the same way.  Connections are opened
``--connect-spacing`` seconds apart, so that several server workers sharing
one listening socket each get some (a burst is often all accepted by one).
Each connection notes the ``X-Worker-Pid`` of its first answer, if any: the
result says how many connections each worker served.  Prints
one JSON line: requests and latency percentiles of the measured window (the
warm-up is not counted), bytes received, errors, and the totals over the
whole run (for CPU-per-request figures taken from outside).

A raw asyncio client, not httpx or aiohttp's client: on a 2-core machine a
client library's own cost per request would cap what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

try:
    import uvloop
except ImportError:       # pragma: no cover - plain asyncio then
    uvloop = None


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending list, nearest-rank."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_client(port: int, paths: list[bytes], seed: int, measure_from: float, stop_at: float,
                     latencies: list[float], totals: list[int], errors: list[str],
                     put_fraction: float = 0.0, put_body: bytes = b"",
                     workers: "dict[str, int] | None" = None) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    requests = [b"GET " + p + b" HTTP/1.1\r\nHost: bench\r\n\r\n" for p in paths]
    put_head = b" HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % len(put_body)
    first = True
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            if put_fraction and rng.random() < put_fraction:
                writer.write(b"PUT " + paths[rng.randrange(len(paths))] + put_head + put_body)
            else:
                writer.write(requests[rng.randrange(len(requests))])
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            if first and workers is not None:
                first = False
                at = lower.find(b"\r\nx-worker-pid:")
                pid = lower[at + 15:lower.index(b"\r\n", at + 2)].strip().decode() if at >= 0 else "?"
                workers[pid] = workers.get(pid, 0) + 1
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                errors.append(f"no Content-Length in {head[:200]!r}")
                return
            length = int(lower[at + 17:lower.index(b"\r\n", at + 2)])
            await reader.readexactly(length)
            end = time.perf_counter()
            if head[9:12] != b"200":
                errors.append(head[:12].decode("latin-1"))
            totals[0] += 1
            totals[1] += length
            if start >= measure_from:
                latencies.append(end - start)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def run(port: int, paths: list[bytes], clients: int, warmup: float, duration: float,
              put_fraction: float = 0.0, put_bytes: int = 0, connect_spacing: float = 0.0) -> dict:
    latencies: list[float] = []
    totals = [0, 0]
    errors: list[str] = []
    workers: dict[str, int] = {}
    put_body = random.Random(0).randbytes(put_bytes)
    began = time.perf_counter()
    measure_from = began + warmup
    stop_at = measure_from + duration

    async def client(i: int) -> None:
        await asyncio.sleep(i * connect_spacing)
        await one_client(port, paths, i, measure_from, stop_at, latencies, totals, errors,
                         put_fraction, put_body, workers)

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "p999_ms": percentile(latencies, 0.999) * 1e3,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
        "total_requests": totals[0],
        "total_bytes": totals[1],
        "elapsed_s": elapsed,
        "errors": len(errors),
        "first_errors": errors[:3],
        "connections_per_worker": sorted(workers.values(), reverse=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", required=True, help="a file of request paths, one a line")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--put-fraction", type=float, default=0.0, help="this fraction of requests are PUTs")
    parser.add_argument("--put-bytes", type=int, default=512, help="the body of each PUT")
    parser.add_argument("--connect-spacing", type=float, default=0.0, help="seconds between two connects")
    args = parser.parse_args()
    if not 0.0 <= args.put_fraction <= 1.0:
        parser.error(f"--put-fraction must be in [0, 1], not {args.put_fraction}")
    with open(args.paths, "rb") as f:
        paths = [line.strip() for line in f if line.strip()]
    runner = uvloop.run if uvloop is not None else asyncio.run
    result = runner(run(args.port, paths, args.clients, args.warmup, args.duration,
                        args.put_fraction, args.put_bytes, args.connect_spacing))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
