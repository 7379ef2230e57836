"""A payload server on trio: a plain ASGI app served by hypercorn's trio worker,
its storage a diskhash AsyncPayloadStore.

    pip install ".[examples]"
    python examples/trio_app.py --store ./payload-store --port 8080
    cd examples && DISKHASH_STORE=../payload-store hypercorn -k trio trio_app:app --bind 127.0.0.1:8080

    GET    /payload/{id}   the payload bytes (Content-Length, ETag); 404 absent, 400 bad id
    GET    /meta/{id}      the record (PayloadMeta) as JSON
    PUT    /payload/{id}   store the request body; answers the new record as JSON
    DELETE /payload/{id}   204; 404 absent (PUT, DELETE: 405 when served read-only)
    GET    /stats          the store's stats as JSON

Ids are decimal integers below 2**128 or hyphenated UUIDs (``payload_web.py``).
No framework: the ASGI protocol itself, so every step is visible.  The
store is opened by the lifespan's startup and closed by its shutdown, or,
should the server cancel the lifespan instead, in a shielded ``finally``.

Several worker processes, each opening the store in its own lifespan (never
at import, so after the fork or spawn):

    cd examples && DISKHASH_STORE=../payload-store hypercorn -k trio -w 2 trio_app:app --bind 127.0.0.1:8080

Every answer names its worker in ``X-Worker-Pid``.  ``DISKHASH_READONLY=1``
(or ``--readonly``) opens the store read-only: PUT and DELETE answer 405.

SIGINT or SIGTERM stops it: hypercorn stops accepting, finishes the requests
in flight (within ``--shutdown-timeout``), the lifespan closes the store, the process exits 0.  Signals that
arrive meanwhile are received and ignored.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # payload_web.py sits beside this file
from payload_web import (
    MAX_BODY,
    WORKER_HEADER,
    BadId,
    body_too_large,
    etag,
    listening,
    meta_json,
    out_of_space,
    parse_edge_id,
    read_only_message,
    read_payload,
    server_args,
    stats_json,
    store_dir,
    store_readonly,
)

from diskhash import AsyncPayloadStore

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON = [(b"content-type", b"application/json")]
WORKER = WORKER_HEADER.lower().encode()
READ_ONLY = [(b"allow", b"GET, HEAD")]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


def json_answer(value: Any, status: int = 200) -> Answer:
    return status, JSON, json.dumps(value).encode()


def edge_id_of(text: str) -> int:
    try:
        return parse_edge_id(text)
    except BadId as exc:
        raise HTTPError(400, str(exc)) from None


class PayloadApp:
    """The ASGI application serving the store in ``directory`` (``readonly``:
    PUT and DELETE answer 405)."""

    def __init__(self, directory: str, *, readonly: bool = False) -> None:
        self.directory = directory
        self.readonly = readonly
        self.store: AsyncPayloadStore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        self.store = await AsyncPayloadStore.open(self.directory, readonly=self.readonly)
                    except Exception as exc:  # noqa: BLE001 - any failure to open is reported to the server
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close_store()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        finally:
            with trio.CancelScope(shield=True):    # cancelled before the shutdown message: close anyway
                await self.close_store()

    async def close_store(self) -> None:
        if self.store is not None and not self.store.closed:
            await self.store.close()
            print(f"store closed: {self.store.closed}", flush=True)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, headers, body = await self.answer(scope, receive)
        except HTTPError as exc:
            status, headers, body = exc.status, JSON + exc.headers, json.dumps({"error": str(exc)}).encode()
        headers = headers + [(b"content-length", str(len(body)).encode()), (WORKER, str(os.getpid()).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        store = self.store
        assert store is not None, "the server did not run the lifespan startup"
        method = scope["method"]
        parts = scope["path"].split("/")
        if len(parts) == 3 and parts[1] == "payload":
            if method == "PUT":       # the body first: hypercorn keeps a connection only once it is read
                body = await read_body(scope, receive)
                if store.readonly:
                    raise HTTPError(405, read_only_message(), READ_ONLY)
                edge_id = edge_id_of(parts[2])
                try:
                    return json_answer(meta_json(await store.put(edge_id, body)))
                except OSError as exc:
                    if not out_of_space(exc):
                        raise
                    raise HTTPError(507, f"no space left for the payload: {exc.strerror}") from None
            edge_id = edge_id_of(parts[2])
            if method in ("GET", "HEAD"):
                found = await read_payload(store, edge_id)
                if found is None:
                    raise HTTPError(404, f"edge {edge_id} not found")
                meta, data = found
                return 200, [(b"content-type", b"application/octet-stream"),
                             (b"etag", etag(meta).encode())], data
            if method == "DELETE":
                if store.readonly:
                    raise HTTPError(405, read_only_message(), READ_ONLY)
                if not await store.delete(edge_id):
                    raise HTTPError(404, f"edge {edge_id} not found")
                return 204, [], b""
            raise HTTPError(405, f"{method} not allowed", [(b"allow", b"GET, HEAD, PUT, DELETE")])
        if len(parts) == 3 and parts[1] == "meta":
            edge_id = edge_id_of(parts[2])
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"{method} not allowed", [(b"allow", b"GET, HEAD")])
            meta = await store.meta(edge_id)
            if meta is None:
                raise HTTPError(404, f"edge {edge_id} not found")
            return json_answer(meta_json(meta))
        if scope["path"] == "/stats":
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"{method} not allowed", [(b"allow", b"GET, HEAD")])
            return json_answer(stats_json(await store.stats()))
        raise HTTPError(404, f"no route {scope['path'][:80]!r}")


async def read_body(scope: Scope, receive: Receive) -> bytes:
    """The request body, refused (413) beyond MAX_BODY: at once when its
    Content-Length says so, else before it is all read."""
    if body_too_large(dict(scope["headers"]).get(b"content-length")):
        raise HTTPError(413, f"a payload is at most {MAX_BODY} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"a payload is at most {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


#: For ``hypercorn -k trio trio_app:app``: the store named by $DISKHASH_STORE
#: (opened by the lifespan, in each worker).
app = PayloadApp(store_dir(), readonly=store_readonly())


async def serve(application: PayloadApp, host: str, port: int, shutdown_timeout: float) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = shutdown_timeout
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def watch_signals() -> None:
            async for _ in signals:               # the first stops the server; later ones are ignored
                if not stop.is_set():
                    print("shutting down", flush=True)
                    stop.set()

        async with trio.open_nursery() as watcher:
            watcher.start_soon(watch_signals)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(functools.partial(
                    hypercorn_serve, application, config, shutdown_trigger=stop.wait))
                listening(host, int(binds[0].rsplit(":", 1)[1]))
            watcher.cancel_scope.cancel()          # served, store closed: stop watching


def main() -> None:
    args = server_args(__doc__.splitlines()[0])
    application = PayloadApp(store_dir(args), readonly=store_readonly(args))
    trio.run(serve, application, args.host, args.port, args.shutdown_timeout)


if __name__ == "__main__":
    main()
