"""An asyncio HTTP server answering payload lookups from a diskhash index.

    python examples/asyncio_server.py [--index PATH --data PATH] [--entries N] [--port 0]

Plain asyncio streams, HTTP/1.1 with keep-alive, bound to 127.0.0.1:

    GET /payload/{id}        200 with the PayloadMeta as JSON, 404 if absent, 400 for a bad id
    GET /payload/{id}/data   200 with the payload bytes read from the data file

Without ``--index``, it builds a small data file and index in a temporary
directory first.  Prints ``listening on 127.0.0.1:PORT`` once it accepts
connections (``--port 0``: any free port); SIGINT or SIGTERM stops it cleanly
(connections closed, index closed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from payload_http import MAX_HEAD, answer, keep_alive, parse_head, response, server_args, store_for

from diskhash import AsyncDiskHashIndex


async def serve(index_path: str, data_path: str, port: int) -> None:
    clients: set[asyncio.StreamWriter] = set()
    data_fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await _serve(index_path, data_fd, port, clients)
    finally:
        os.close(data_fd)


async def _serve(index_path: str, data_fd: int, port: int, clients: set[asyncio.StreamWriter]) -> None:
    async with await AsyncDiskHashIndex.open(index_path, readonly=True) as idx:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            clients.add(writer)
            try:
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                        return
                    try:
                        method, target, headers = parse_head(head[:-4])
                    except ValueError:
                        writer.write(response(400, b'{"error": "malformed request"}', "application/json", False))
                        await writer.drain()
                        return
                    status, body, ctype = await answer(idx, data_fd, method, target)
                    alive = keep_alive(headers) and method == "GET"   # a body we do not read ends the connection
                    writer.write(response(status, body, ctype, alive))
                    await writer.drain()
                    if not alive:
                        return
            except ConnectionError:
                pass
            finally:
                clients.discard(writer)
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=MAX_HEAD)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"index {index_path}: {len(idx):,} entries", flush=True)
        async for edge_id in idx.keys():
            print(f"try: GET /payload/{edge_id}", flush=True)
            break
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()
        print("shutting down", flush=True)
        server.close()
        for writer in list(clients):
            writer.close()
        await server.wait_closed()
    print(f"index closed: {idx.closed}", flush=True)


def main() -> None:
    args = server_args(__doc__.splitlines()[0])
    with store_for(args) as (index_path, data_path):
        asyncio.run(serve(index_path, data_path, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
