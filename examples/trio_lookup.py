"""The same payload lookups as asyncio_server.py, served by trio.

    python examples/trio_lookup.py [--index PATH --data PATH] [--entries N] [--port 0]

Same routes, same answers, same AsyncDiskHashIndex calls (anyio runs them on
trio unchanged): a trio TCP server speaking minimal HTTP/1.1 with keep-alive
on 127.0.0.1.  Prints ``listening on 127.0.0.1:PORT``; SIGINT or SIGTERM
cancels the server, and the index is closed on the way out.
"""

from __future__ import annotations

import functools
import os
import signal

import trio
from payload_http import MAX_HEAD, answer, keep_alive, parse_head, response, server_args, store_for

from diskhash import AsyncDiskHashIndex


class _Requests:
    """Splits a byte stream into request heads (GET requests carry no body)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def next_head(self) -> bytes | None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buf[:end])
                del self._buf[: end + 4]
                return head
            if len(self._buf) > MAX_HEAD:
                return None
            data = await self._stream.receive_some(4096)
            if not data:
                return None
            self._buf += data


async def handle(idx: AsyncDiskHashIndex, data_fd: int, stream: trio.SocketStream) -> None:
    requests = _Requests(stream)
    try:
        while (head := await requests.next_head()) is not None:
            try:
                method, target, headers = parse_head(head)
            except ValueError:
                await stream.send_all(response(400, b'{"error": "malformed request"}', "application/json", False))
                return
            status, body, ctype = await answer(idx, data_fd, method, target)
            alive = keep_alive(headers) and method == "GET"   # a body we do not read ends the connection
            await stream.send_all(response(status, body, ctype, alive))
            if not alive:
                return
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def serve(index_path: str, data_path: str, port: int) -> None:
    data_fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        async with await AsyncDiskHashIndex.open(index_path, readonly=True) as idx:
            print(f"index {index_path}: {len(idx):,} entries", flush=True)
            async for edge_id in idx.keys():
                print(f"try: GET /payload/{edge_id}", flush=True)
                break
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(functools.partial(
                        trio.serve_tcp, functools.partial(handle, idx, data_fd), port, host="127.0.0.1"))
                    print(f"listening on 127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
                    async for _ in signals:
                        print("shutting down", flush=True)
                        nursery.cancel_scope.cancel()      # stops the server and every connection
                        break
        print(f"index closed: {idx.closed}", flush=True)
    finally:
        os.close(data_fd)


def main() -> None:
    args = server_args(__doc__.splitlines()[0])
    with store_for(args) as (index_path, data_path):
        trio.run(serve, index_path, data_path, args.port)


if __name__ == "__main__":
    main()
