"""Requests per second and tail latency of one aiohttp app over three storage backends.

    python benchmarks/http_load.py [--entries 100000] [--clients 32] [--duration 10] [--quick]
    python benchmarks/http_load.py --workers 1,2 [--quick]

The app (``serve()`` below) answers ``GET /payload/{id}`` with the payload's
bytes, one lookup per request, and is the same for every backend; only the
lookup differs:

* ``diskhash``: ``await store.get(id)`` on a diskhash ``AsyncPayloadStore``;
* ``lmdb``: ``txn.get`` in the event-loop thread, as py-lmdb users do;
* ``lmdb-executor``: the same read through ``loop.run_in_executor``;
* ``aiosqlite``: ``SELECT payload FROM payloads WHERE id = ?`` on aiosqlite.

Each backend holds the same ``--entries`` payloads of ``--payload-bytes``.
For each one, a fresh server process is started on 127.0.0.1 and a load
generator process (benchmarks/_loadgen.py: its own process, so it never
shares the server's GIL) keeps ``--clients`` keep-alive connections busy for
``--warmup`` + ``--duration`` seconds; req/s and p50/p99/p99.9 are those of
the measured window.  Then the same again while a bulk loader in the server
process adds ``--grow-entries`` more entries (diskhash: ``put_many`` in the
store's writer lane, so its index grows; lmdb: write transactions in an
executor thread; aiosqlite: a second connection in WAL mode).

``--workers 1,2`` measures something else: diskhash and py-lmdb each behind
``uvicorn --workers N`` (a plain ASGI app, ``worker_app`` below, every worker
opening the backend in its lifespan), 90% GET / 10% PUT overwrites, the
load generator connecting only once every worker answers.  Targets:
diskhash with 2 workers >= py-lmdb with 2 workers, and >= 1.3x diskhash
with 1 worker.  diskhash with 2 writable workers needs the shared store
(docs/guide/processes.md); until a store can be shared, that server does
not start and the line says so.

Targets (PASS/MISS lines): diskhash >= 1.3x aiosqlite's req/s; diskhash's p99
no worse than py-lmdb's (in the loop thread); diskhash's p99 during the bulk
load <= 2x its p99 without.  On a shared 2-core machine these figures are
noise: the lead measures them on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ["diskhash", "lmdb", "lmdb-executor", "aiosqlite"]
LMDB_MAP_SIZE = 8 << 30
LOAD_CHUNK = 5000
TARGET_VS_SQLITE = 1.3
TARGET_GROW_P99 = 2.0


def dataset(seed: int, entries: int, payload_bytes: int) -> tuple[list[int], list[bytes]]:
    """Ids below 2**63 (sqlite's INTEGER) and payloads, the same in every process."""
    rng = random.Random(seed)
    ids = [rng.getrandbits(63) for _ in range(entries)]
    payloads = [rng.randbytes(payload_bytes) for _ in range(entries)]
    return ids, payloads


# -- the backends ---------------------------------------------------------------------


class Diskhash:
    @staticmethod
    def build(directory: str, ids: list[int], payloads: list[bytes]) -> None:
        from diskhash import PayloadStore

        with PayloadStore(directory) as store:
            store.put_many(ids, payloads)
            store.save()

    async def open(self, directory: str) -> None:
        from diskhash import AsyncPayloadStore

        self.store = await AsyncPayloadStore.open(directory)

    async def get(self, edge_id: int) -> bytes | None:
        return await self.store.get(edge_id)

    async def load(self, ids: list[int], payloads: list[bytes]) -> None:
        await self.store.put_many(ids, payloads)

    async def put(self, edge_id: int, payload: bytes) -> None:
        await self.store.put(edge_id, payload)

    async def close(self) -> None:
        await self.store.close()


class Lmdb:
    executor = False
    #: fsync at every commit (py-lmdb's default); the multi-worker benchmark turns
    #: it off, so that a PUT is as durable as diskhash's (the page cache, not the disk).
    sync = True

    @staticmethod
    def build(directory: str, ids: list[int], payloads: list[bytes]) -> None:
        import lmdb

        env = lmdb.open(directory, map_size=LMDB_MAP_SIZE)
        with env.begin(write=True) as txn:
            for edge_id, payload in zip(ids, payloads):
                txn.put(edge_id.to_bytes(8, "big"), payload)
        env.sync(True)
        env.close()

    async def open(self, directory: str) -> None:
        import lmdb

        self.env = lmdb.open(directory, map_size=LMDB_MAP_SIZE, max_readers=256, sync=self.sync)

    def _get(self, edge_id: int) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(edge_id.to_bytes(8, "big"))

    async def get(self, edge_id: int) -> bytes | None:
        if self.executor:
            return await asyncio.get_running_loop().run_in_executor(None, self._get, edge_id)
        return self._get(edge_id)

    def _load(self, ids: list[int], payloads: list[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            for edge_id, payload in zip(ids, payloads):
                txn.put(edge_id.to_bytes(8, "big"), payload)

    async def load(self, ids: list[int], payloads: list[bytes]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._load, ids, payloads)

    def _put(self, edge_id: int, payload: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(edge_id.to_bytes(8, "big"), payload)

    async def put(self, edge_id: int, payload: bytes) -> None:
        """One write transaction per PUT, in the event loop's thread as for a
        GET (LMDB takes turns across processes on its own write mutex)."""
        if self.executor:
            await asyncio.get_running_loop().run_in_executor(None, self._put, edge_id, payload)
        else:
            self._put(edge_id, payload)

    async def close(self) -> None:
        self.env.close()


class LmdbExecutor(Lmdb):
    executor = True


class LmdbNoSync(Lmdb):
    sync = False


class Aiosqlite:
    @staticmethod
    def build(directory: str, ids: list[int], payloads: list[bytes]) -> None:
        os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(os.path.join(directory, "payloads.sqlite"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE payloads (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        db.executemany("INSERT INTO payloads VALUES (?, ?)", zip(ids, payloads))
        db.commit()
        db.close()

    async def open(self, directory: str) -> None:
        import aiosqlite

        self.path = os.path.join(directory, "payloads.sqlite")
        self.db = await aiosqlite.connect(self.path)
        self.writer: Any = None

    async def get(self, edge_id: int) -> bytes | None:
        rows = await self.db.execute_fetchall("SELECT payload FROM payloads WHERE id = ?", (edge_id,))
        return rows[0][0] if rows else None

    async def load(self, ids: list[int], payloads: list[bytes]) -> None:
        import aiosqlite

        if self.writer is None:
            self.writer = await aiosqlite.connect(self.path)
        await self.writer.executemany("INSERT OR REPLACE INTO payloads VALUES (?, ?)", zip(ids, payloads))
        await self.writer.commit()

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        await self.db.close()


BACKEND_CLASSES = {"diskhash": Diskhash, "lmdb": Lmdb, "lmdb-executor": LmdbExecutor, "aiosqlite": Aiosqlite}


# -- the server process -----------------------------------------------------------------


async def serve(backend_name: str, directory: str, grow: list[tuple[list[int], list[bytes]]],
                grow_after: float) -> None:
    from aiohttp import web

    backend = BACKEND_CLASSES[backend_name]()
    await backend.open(directory)

    async def get_payload(request: web.Request) -> web.Response:
        try:
            edge_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPBadRequest() from None
        data = await backend.get(edge_id)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/payload/{id}", get_payload)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    report: dict[str, Any] = {"loaded": 0}

    async def bulk_load() -> None:
        await asyncio.sleep(grow_after)
        began = time.perf_counter()
        report["load_began_s"] = grow_after
        for ids, payloads in grow:
            if stop.is_set():
                break
            await backend.load(ids, payloads)
            report["loaded"] += len(ids)
        report["load_s"] = time.perf_counter() - began

    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    loader = asyncio.ensure_future(bulk_load()) if grow else None
    await stop.wait()
    if loader is not None:
        loader.cancel()
        try:
            await loader
        except asyncio.CancelledError:
            pass
    await runner.cleanup()
    await backend.close()
    print(json.dumps(report), flush=True)


def serve_main(args: argparse.Namespace) -> None:
    grow: list[tuple[list[int], list[bytes]]] = []
    if args.grow_entries:
        ids, payloads = dataset(args.seed + 1, args.grow_entries, args.payload_bytes)
        grow = [(ids[i:i + LOAD_CHUNK], payloads[i:i + LOAD_CHUNK]) for i in range(0, len(ids), LOAD_CHUNK)]
    asyncio.run(serve(args.serve, args.dir, grow, args.warmup))


# -- the multi-worker server: uvicorn --workers N, GET and PUT -----------------------------

WORKER_BACKENDS = {"diskhash": Diskhash, "lmdb": LmdbNoSync}
WORKERS_ENV = ("HTTP_LOAD_BACKEND", "HTTP_LOAD_DIR")
TARGET_WORKERS_VS_LMDB = 1.0
TARGET_WORKERS_SCALING = 1.3


class WorkerApp:
    """The ASGI app every uvicorn worker serves (``http_load:worker_app``): the
    backend named by $HTTP_LOAD_BACKEND on the directory $HTTP_LOAD_DIR,
    opened by the lifespan, so by each worker process for itself.

    ``GET /payload/{id}``: the payload; ``PUT /payload/{id}``: store the body
    (an empty 200); ``GET /worker``: the worker's pid.  Every answer carries
    ``X-Worker-Pid``.  Plain ASGI, so that only the storage differs."""

    def __init__(self) -> None:
        self.backend: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        backend = WORKER_BACKENDS[os.environ[WORKERS_ENV[0]]]()
                        await backend.open(os.environ[WORKERS_ENV[1]])
                    except Exception as exc:  # noqa: BLE001 - reported to uvicorn, which stops
                        await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                        return
                    self.backend = backend
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.backend is not None:
                        await self.backend.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        status, body = await self.answer(scope, receive)
        pid = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"x-worker-pid", pid)]})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes]:
        path = scope["path"]
        if path == "/worker":
            return 200, str(os.getpid()).encode()
        if not path.startswith("/payload/"):
            return 404, b""
        try:
            edge_id = int(path[9:])
        except ValueError:
            return 400, b""
        if scope["method"] == "PUT":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            await self.backend.put(edge_id, b"".join(chunks))
            return 200, b""
        data = await self.backend.get(edge_id)
        return (404, b"") if data is None else (200, data)


#: For ``uvicorn http_load:worker_app --app-dir benchmarks --workers N``.
worker_app = WorkerApp()


def wait_for_workers(server: subprocess.Popen, port: int, workers: int, timeout: float = 120.0) -> None:
    """Return once ``workers`` distinct workers have answered ``/worker`` (each
    request a new connection), so that the load starts on all of them."""
    import http.client

    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-1500:] if server.stderr else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered within {timeout:g} s")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/worker")
            seen.add(conn.getresponse().read())
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()


def run_workers_phase(args: argparse.Namespace, backend: str, directory: str, paths_file: str,
                      workers: int) -> "dict[str, Any] | str":
    """One uvicorn server with ``workers`` workers under the GET/PUT load: the
    load generator's result, or why the server did not serve."""
    # A free port, not a socket passed with --fd: uvicorn takes an inherited
    # socket for a Unix one, so asyncio never sets TCP_NODELAY on its
    # connections and every answer written in two pieces waits out the
    # client's delayed ACK (40 ms).
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    env = dict(os.environ, **dict(zip(WORKERS_ENV, (backend, directory))))
    cmd = [sys.executable, "-m", "uvicorn", "http_load:worker_app", "--app-dir", HERE, "--workers", str(workers),
           "--host", "127.0.0.1", "--port", str(port), "--backlog", "1024", "--log-level", "warning",
           "--no-access-log"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_for_workers(server, port, workers)
        except RuntimeError as exc:
            last = [line for line in str(exc).splitlines() if "Error" in line]
            return last[-1].strip() if last else str(exc)
        cpu_before = tree_cpu_seconds(server.pid)
        load = subprocess.run(
            [sys.executable, os.path.join(HERE, "_loadgen.py"), "--port", str(port), "--paths", paths_file,
             "--clients", str(args.clients), "--warmup", str(args.warmup), "--duration", str(args.duration),
             "--put-fraction", str(PUT_FRACTION), "--put-bytes", str(args.payload_bytes),
             "--connect-spacing", "0.005"],
            capture_output=True, text=True, timeout=args.warmup + args.duration + 120, check=True)
        result: "dict[str, Any]" = json.loads(load.stdout)
        # The workers' CPU per request (the warm-up is counted at the measured rate):
        # the model behind the projection to a machine with a core per worker.
        served = result["req_per_s"] * (args.warmup + args.duration)
        result["worker_cpu_us"] = (tree_cpu_seconds(server.pid) - cpu_before) / max(served, 1) * 1e6
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


PUT_FRACTION = 0.1


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children
    (uvicorn's worker processes), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def workers_main(args: argparse.Namespace, counts: list[int]) -> None:
    """diskhash and py-lmdb behind ``uvicorn --workers N`` for each N of ``counts``."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ids, payloads = dataset(args.seed, args.entries, args.payload_bytes)
        paths_file = os.path.join(tmp, "paths.txt")
        with open(paths_file, "w") as f:
            f.writelines(f"/payload/{i}\n" for i in ids)
        print(f"uvicorn --workers {'|'.join(map(str, counts))}: {args.entries:,} payloads of {args.payload_bytes} B; "
              f"{args.clients} keep-alive clients, {100 - PUT_FRACTION * 100:g}% GET / {PUT_FRACTION * 100:g}% PUT "
              f"(overwrites), {args.warmup:g} s warm-up + {args.duration:g} s measured.\n"
              f"diskhash: AsyncPayloadStore per worker; lmdb: an environment per worker, a read transaction per "
              f"GET and a write transaction per PUT in the loop thread, sync=False (as durable as diskhash's "
              f"default: the page cache).\n"
              f"The load generator is one process on this same machine ({cores} cores): it competes with the "
              f"workers for the CPU, so N workers on {cores} cores cannot reach N times one worker's figure.")
        results: dict[tuple[str, int], "dict[str, Any] | str"] = {}
        for name, cls in WORKER_BACKENDS.items():
            base = os.path.join(tmp, f"{name}-base")
            cls.build(base, ids, payloads)
            for workers in counts:
                run_dir = os.path.join(tmp, f"{name}-{workers}")
                shutil.copytree(base, run_dir)
                results[name, workers] = run_workers_phase(args, name, run_dir, paths_file, workers)
                shutil.rmtree(run_dir)
            shutil.rmtree(base)

    print(f"\n{'backend':<10} {'workers':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'cpu us/req':>10} {'model req/s':>11}  connections")
    for (name, workers), r in results.items():
        if isinstance(r, str):
            print(f"{name:<10} {workers:>7}  did not serve: {r}")
            continue
        errors = f"  {r['errors']} ERRORS {r['first_errors']}" if r["errors"] else ""
        print(f"{name:<10} {workers:>7} {r['req_per_s']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['max_ms']:>8.1f} {r['worker_cpu_us']:>10.0f} {workers * 1e6 / r['worker_cpu_us']:>11,.0f}  "
              f"{'/'.join(map(str, r['connections_per_worker']))}{errors}")
    print("(cpu us/req: the workers' CPU time per request; model req/s: what the workers would serve "
          "with a core each and the load generator elsewhere, workers / (cpu per request) -- a "
          "projection, not a measurement)")
    print()

    def rate(name: str, workers: int) -> "float | None":
        r = results.get((name, workers))
        return None if r is None or isinstance(r, str) else r["req_per_s"]

    if 2 in counts:
        mine, lmdb = rate("diskhash", 2), rate("lmdb", 2)
        if mine is None or lmdb is None:
            print("MISS: diskhash 2 workers vs py-lmdb 2 workers: not measured (a server did not serve)")
        else:
            verdict(mine >= TARGET_WORKERS_VS_LMDB * lmdb,
                    f"diskhash with 2 workers {mine:,.0f} req/s vs py-lmdb with 2 workers {lmdb:,.0f} "
                    f"({mine / lmdb:.2f}x; target >= {TARGET_WORKERS_VS_LMDB:g}x)")
    if 1 in counts and 2 in counts:
        one, two = rate("diskhash", 1), rate("diskhash", 2)
        if one is None or two is None:
            print("MISS: diskhash 2 workers vs 1 worker: not measured (a server did not serve)")
        else:
            verdict(two >= TARGET_WORKERS_SCALING * one,
                    f"diskhash with 2 workers {two:,.0f} req/s vs 1 worker {one:,.0f} "
                    f"({two / one:.2f}x; target >= {TARGET_WORKERS_SCALING:g}x)")
            r1, r2 = results["diskhash", 1], results["diskhash", 2]
            assert not isinstance(r1, str) and not isinstance(r2, str)
            model = (2e6 / r2["worker_cpu_us"]) / (1e6 / r1["worker_cpu_us"])
            print(f"model: diskhash with 2 workers on a core each {model:.2f}x one worker (projected "
                  f"from the CPU per request, target >= {TARGET_WORKERS_SCALING:g}x; this machine "
                  f"cannot show it: the load generator needs a core of its own)")
    if any(not isinstance(r, str) and r["errors"] for r in results.values()):
        print("MISS: some requests failed (see ERRORS above)")


# -- the orchestrator -------------------------------------------------------------------


def run_phase(args: argparse.Namespace, backend: str, directory: str, paths_file: str,
              grow: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--serve", backend, "--dir", directory, "--seed", str(args.seed),
           "--payload-bytes", str(args.payload_bytes), "--warmup", str(args.warmup),
           "--grow-entries", str(args.grow_entries if grow else 0)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"{backend} server did not start: {line}{server.stderr.read() if server.stderr else ''}")
        port = int(line.rsplit(":", 1)[1])
        load = subprocess.run(
            [sys.executable, os.path.join(HERE, "_loadgen.py"), "--port", str(port), "--paths", paths_file,
             "--clients", str(args.clients), "--warmup", str(args.warmup), "--duration", str(args.duration)],
            capture_output=True, text=True, timeout=args.warmup + args.duration + 120, check=True)
        result = json.loads(load.stdout)
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=120)
    if server.returncode != 0:
        raise RuntimeError(f"{backend} server failed: {err}")
    result["server"] = json.loads(out.strip().splitlines()[-1])
    return result


def row(name: str, r: dict[str, Any]) -> str:
    extra = ""
    server = r["server"]
    if "load_s" in server:
        extra = f"  (loaded {server['loaded']:,} entries in {server['load_s']:.1f} s)"
    elif "load_began_s" in server:
        extra = f"  (loaded {server['loaded']:,} entries, still loading when the run ended)"
    errors = f"  {r['errors']} ERRORS {r['first_errors']}" if r["errors"] else ""
    return (f"{name:<14} {r['req_per_s']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['p999_ms']:>8.2f} {r['max_ms']:>8.1f}{extra}{errors}")


def verdict(ok: bool, text: str) -> None:
    print(f"{'PASS' if ok else 'MISS'}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--grow-entries", type=int, default=None, help="added by the bulk loader (default 2x entries)")
    parser.add_argument("--payload-bytes", type=int, default=512)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="small and short: checks that it runs")
    parser.add_argument("--workers", default=None, metavar="N[,N...]",
                        help="instead: diskhash and py-lmdb behind uvicorn --workers N, 90%% GET / 10%% PUT "
                             "(e.g. 1,2)")
    parser.add_argument("--serve", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args)
        return
    if args.quick:
        args.entries, args.clients, args.warmup, args.duration = 3000, 8, 0.3, 1.0
    if args.workers is not None:
        try:
            counts = [int(n) for n in args.workers.split(",")]
        except ValueError:
            parser.error(f"--workers takes worker counts like 1,2, not {args.workers!r}")
        if not counts or min(counts) < 1:
            parser.error(f"--workers takes counts >= 1, not {args.workers!r}")
        workers_main(args, counts)
        return
    if args.grow_entries is None:
        args.grow_entries = 2 * args.entries
    backends = args.backends.split(",")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ids, payloads = dataset(args.seed, args.entries, args.payload_bytes)
        paths_file = os.path.join(tmp, "paths.txt")
        with open(paths_file, "w") as f:
            f.writelines(f"/payload/{i}\n" for i in ids)
        print(f"{args.entries:,} payloads of {args.payload_bytes} B per backend; {args.clients} keep-alive "
              f"clients, {args.warmup:g} s warm-up + {args.duration:g} s measured; bulk load: "
              f"{args.grow_entries:,} more entries")
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name in backends:
            base = os.path.join(tmp, f"{name}-base")
            BACKEND_CLASSES[name].build(base, ids, payloads)
            results[name] = {}
            for phase in ("steady", "grow"):
                run_dir = os.path.join(tmp, f"{name}-{phase}")
                shutil.copytree(base, run_dir)
                results[name][phase] = run_phase(args, name, run_dir, paths_file, phase == "grow")
                shutil.rmtree(run_dir)
            shutil.rmtree(base)

    header = f"{'backend':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8}"
    for phase, title in (("steady", "reads only"), ("grow", "reads while a bulk loader grows the store")):
        print(f"\n{title}\n{header}")
        for name in backends:
            print(row(name, results[name][phase]))
    print()
    dh = results.get("diskhash")
    if dh is None:
        return
    if "aiosqlite" in results:
        ratio = dh["steady"]["req_per_s"] / results["aiosqlite"]["steady"]["req_per_s"]
        verdict(ratio >= TARGET_VS_SQLITE, f"diskhash serves {ratio:.2f}x aiosqlite's req/s "
                f"(target >= {TARGET_VS_SQLITE}x)")
    for lmdb_name in ("lmdb", "lmdb-executor"):
        if lmdb_name in results:
            mine, theirs = dh["steady"]["p99_ms"], results[lmdb_name]["steady"]["p99_ms"]
            verdict(mine <= theirs, f"diskhash p99 {mine:.2f} ms vs {lmdb_name} {theirs:.2f} ms (target: no worse)")
    grown = dh["grow"]["p99_ms"] / dh["steady"]["p99_ms"]
    verdict(grown <= TARGET_GROW_P99, f"diskhash p99 during the bulk load is {grown:.2f}x its p99 without "
            f"({dh['grow']['p99_ms']:.2f} vs {dh['steady']['p99_ms']:.2f} ms; target <= {TARGET_GROW_P99}x)")
    if any(r[p]["errors"] for r in results.values() for p in r):
        print("MISS: some requests failed (see ERRORS above)")


if __name__ == "__main__":
    main()
