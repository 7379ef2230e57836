"""A payload server on Starlette (served by uvicorn) whose storage is a diskhash AsyncPayloadStore.

    pip install ".[examples]"
    cd examples && DISKHASH_STORE=../payload-store uvicorn starlette_app:app --port 8080
    python examples/starlette_app.py --store ./payload-store --port 8080

    GET    /payload/{id}   the payload bytes (Content-Length, ETag); 404 absent, 400 bad id
    GET    /meta/{id}      the record (PayloadMeta) as JSON
    PUT    /payload/{id}   store the request body; answers the new record as JSON
    DELETE /payload/{id}   204; 404 absent (PUT, DELETE: 405 when served read-only)
    GET    /stats          the store's stats as JSON

Ids are decimal integers below 2**128 or hyphenated UUIDs (``payload_web.py``).
The lifespan opens the store before the first request and closes it after
the last; handlers find it in ``request.state.store``.  Starlette runs on
anyio, so the same app also runs on trio (``hypercorn -k trio``).

Several worker processes, each with its own open store:

    cd examples && DISKHASH_STORE=../payload-store uvicorn starlette_app:app --workers 2
    cd examples && DISKHASH_STORE=../payload-store gunicorn -k uvicorn_worker.UvicornWorker -w 2 starlette_app:app

Each worker opens the store in its lifespan, after the fork (or spawn): never
at import, which gunicorn ``--preload`` runs once in the parent before it
forks (a store opened there would be unusable in the children).  Every
answer names its worker in ``X-Worker-Pid``.  ``DISKHASH_READONLY=1`` (or
``--readonly``) opens the store read-only: PUT and DELETE answer 405.

SIGINT or SIGTERM stops uvicorn gracefully: requests in flight finish (within
``--shutdown-timeout``), the lifespan closes the store.  Run as a script, the
server ignores further signals meanwhile, so the store is always closed.
Under the ``uvicorn`` command, a second Ctrl-C makes uvicorn skip the
lifespan's shutdown; the store is then closed as the lifespan task is
cancelled on the way out, except after SIGTERM then SIGINT, where uvicorn
re-raises the SIGTERM and the process dies first (the store then recovers on
its next open, as after a crash).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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


def edge_id_of(request: Request) -> int:
    try:
        return parse_edge_id(request.path_params["id"])
    except BadId as exc:
        raise HTTPException(400, str(exc)) from None


def writable_store(request: Request) -> AsyncPayloadStore:
    """The store, for a PUT or a DELETE: 405 when it is served read-only."""
    store: AsyncPayloadStore = request.state.store
    if store.readonly:
        raise HTTPException(405, read_only_message(), headers={"Allow": "GET, HEAD"})
    return store


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) beyond MAX_BODY: at once when its
    Content-Length says so, else before it is all read."""
    if body_too_large(request.headers.get("content-length")):
        raise HTTPException(413, f"a payload is at most {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"a payload is at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Payload(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        edge_id = edge_id_of(request)
        found = await read_payload(request.state.store, edge_id)
        if found is None:
            raise HTTPException(404, f"edge {edge_id} not found")
        meta, data = found
        return Response(data, media_type="application/octet-stream", headers={"ETag": etag(meta)})

    async def put(self, request: Request) -> Response:
        edge_id = edge_id_of(request)
        store = writable_store(request)
        try:
            meta = await store.put(edge_id, await read_body(request))
        except OSError as exc:
            if not out_of_space(exc):
                raise
            raise HTTPException(507, f"no space left for the payload: {exc.strerror}") from None
        return JSONResponse(meta_json(meta))

    async def delete(self, request: Request) -> Response:
        edge_id = edge_id_of(request)
        if not await writable_store(request).delete(edge_id):
            raise HTTPException(404, f"edge {edge_id} not found")
        return Response(status_code=204)


async def get_meta(request: Request) -> Response:
    edge_id = edge_id_of(request)
    meta = await request.state.store.meta(edge_id)
    if meta is None:
        raise HTTPException(404, f"edge {edge_id} not found")
    return JSONResponse(meta_json(meta))


async def get_stats(request: Request) -> Response:
    return JSONResponse(stats_json(await request.state.store.stats()))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class NameTheWorker:
    """ASGI middleware adding ``X-Worker-Pid`` to every answer: which worker
    process served it, when several share the port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pid = str(os.getpid()).encode()        # read per request: a forked worker has its own

        async def send_named(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (WORKER_HEADER.lower().encode(), pid)]}
            await send(message)

        await self.app(scope, receive, send_named)


def create_app(directory: str, *, readonly: bool = False) -> Starlette:
    """The application serving the store in ``directory`` (opened in the
    lifespan, so in each worker process after the fork; ``readonly``: PUT and
    DELETE answer 405)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AsyncPayloadStore]]:
        store = await AsyncPayloadStore.open(directory, readonly=readonly)
        try:
            yield {"store": store}
        finally:
            await store.close()
            print(f"store closed: {store.closed}", flush=True)

    return Starlette(
        routes=[
            Route("/payload/{id}", Payload),
            Route("/meta/{id}", get_meta, methods=["GET"]),
            Route("/stats", get_stats, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(NameTheWorker)],
        lifespan=lifespan,
    )


#: For ``uvicorn starlette_app:app`` (and gunicorn, hypercorn): the store named
#: by $DISKHASH_STORE.  Only the application is made here; the store is opened
#: by the lifespan in each worker.
app = create_app(store_dir(), readonly=store_readonly())


def main() -> None:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a signal during the shutdown is ignored:
        uvicorn would skip the lifespan's shutdown (a second Ctrl-C) or, after a
        SIGTERM, re-raise it and die before the store is closed."""

        def handle_exit(self, sig: int, frame: object) -> None:
            if not self.should_exit:
                super().handle_exit(sig, frame)  # type: ignore[arg-type]

    args = server_args(__doc__.splitlines()[0])
    sock = socket.create_server((args.host, args.port))     # bound and listening: port 0 is known now
    config = uvicorn.Config(create_app(store_dir(args), readonly=store_readonly(args)), log_level="warning",
                            access_log=False, timeout_graceful_shutdown=args.shutdown_timeout)
    listening(args.host, sock.getsockname()[1])
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:     # uvicorn re-raises the Ctrl-C that stopped it, after its shutdown
        pass


if __name__ == "__main__":
    main()
