"""A payload server on aiohttp.web whose storage is a diskhash AsyncPayloadStore.

    pip install ".[examples]"
    python examples/aiohttp_app.py --store ./payload-store --port 8080
    cd examples && DISKHASH_STORE=../payload-store gunicorn -k aiohttp.GunicornWebWorker -w 2 aiohttp_app:app

    GET    /payload/{id}   the payload bytes (Content-Length, ETag); 404 absent, 400 bad id
    GET    /meta/{id}      the record (PayloadMeta) as JSON
    PUT    /payload/{id}   store the request body; answers the new record as JSON
    DELETE /payload/{id}   204; 404 absent (PUT, DELETE: 405 when served read-only)
    GET    /stats          the store's stats as JSON

Ids are decimal integers below 2**128 or hyphenated UUIDs (``payload_web.py``).
The store is opened in a ``cleanup_ctx`` (so it is open before the first
request and closed after the last one) and shared through ``app[STORE]``.
Under gunicorn each worker process runs that context after the fork, so
each opens the store itself (``--preload`` included: only the application
object is made at import).  Every answer names its worker in
``X-Worker-Pid``; ``DISKHASH_READONLY=1`` (or ``--readonly``) opens the
store read-only: PUT and DELETE answer 405.

Uncompressed payloads of at least ``--sendfile-min`` bytes (64 KiB) are sent
with ``loop.sendfile``: the kernel copies them from the store's data file to
the socket, never through Python (``store.payload_range``).  uvloop
(``--uvloop``) and TLS have no native sendfile; the app then sends the bytes
from ``store.get``.

SIGINT or SIGTERM stops it: no new connections, requests in flight finish
(within ``--shutdown-timeout``), the store closes, then the process exits 0.  A second signal meanwhile is
ignored, so the store is always closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web
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

from diskhash import AsyncPayloadStore, Compression

STORE = web.AppKey("store", AsyncPayloadStore)
SENDFILE_MIN = web.AppKey("sendfile_min", int)
DEFAULT_SENDFILE_MIN = 64 << 10

routes = web.RouteTableDef()


def _error(status: type[web.HTTPError], message: str) -> web.HTTPError:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def edge_id_of(request: web.Request) -> int:
    try:
        return parse_edge_id(request.match_info["id"])
    except BadId as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None


def writable_store(request: web.Request) -> AsyncPayloadStore:
    """The store, for a PUT or a DELETE: 405 when it is served read-only."""
    store = request.app[STORE]
    if store.readonly:
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], content_type="application/json",
                                       text=json.dumps({"error": read_only_message()}))
    return store


def not_found(edge_id: int) -> web.HTTPError:
    return _error(web.HTTPNotFound, f"edge {edge_id} not found")


@routes.get("/payload/{id:[^/]+}")
async def get_payload(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    edge_id = edge_id_of(request)
    sent = await _try_sendfile(request, store, edge_id)
    if sent is not None:
        return sent
    found = await read_payload(store, edge_id)
    if found is None:
        raise not_found(edge_id)
    meta, data = found
    return web.Response(body=data, content_type="application/octet-stream", headers={"ETag": etag(meta)})


class _StoreFile:
    """A descriptor of the store's data file, as the file object ``loop.sendfile``
    takes.  ``os.sendfile`` reads at explicit offsets; the position the loop
    sets afterwards is ignored, so the (shared) file position never moves."""

    mode = "rb"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def seek(self, offset: int, whence: int = 0) -> int:
        return offset


async def _try_sendfile(request: web.Request, store: AsyncPayloadStore,
                        edge_id: int) -> web.StreamResponse | None:
    """Send a large uncompressed payload straight from the data file; None if
    the payload is absent, small, compressed, or sendfile is unavailable."""
    threshold = request.app[SENDFILE_MIN]
    if (threshold <= 0 or request.method != "GET"          # HEAD: headers only, no bytes to send
            or request.transport is None or request.transport.get_extra_info("sslcontext")):
        return None
    meta = await store.meta(edge_id)
    while meta is not None and meta.compression == Compression.NONE and meta.length >= threshold:
        where = store.payload_range(edge_id)
        again = await store.meta(edge_id)
        if again != meta:                 # a PUT or DELETE came in between: look again
            meta = again
            continue
        if where is None:
            return None
        # Our own reference to the data file: a compact() while the bytes go out
        # closes the store's descriptor, not this one (the old file stays readable).
        fd = os.dup(where[0])
        try:
            offset, length = where[1], where[2]
            response = web.StreamResponse(headers={"ETag": etag(meta),
                                                   "Content-Type": "application/octet-stream"})
            response.content_length = length
            await response.prepare(request)
            try:
                await asyncio.get_running_loop().sendfile(request.transport, _StoreFile(fd), offset, length,
                                                          fallback=False)
            except (NotImplementedError, asyncio.SendfileNotAvailableError):   # uvloop: nothing sent yet
                data = await store.get(edge_id)
                if data is None or len(data) != length:    # deleted or replaced meanwhile
                    raise ConnectionResetError("payload changed while it was being sent") from None
                await response.write(data)
        finally:
            os.close(fd)
        await response.write_eof()
        return response
    return None


@routes.get("/meta/{id:[^/]+}")
async def get_meta(request: web.Request) -> web.Response:
    edge_id = edge_id_of(request)
    meta = await request.app[STORE].meta(edge_id)
    if meta is None:
        raise not_found(edge_id)
    return web.json_response(meta_json(meta))


@routes.put("/payload/{id:[^/]+}")
async def put_payload(request: web.Request) -> web.Response:
    edge_id = edge_id_of(request)
    store = writable_store(request)
    if body_too_large(request.headers.get("Content-Length")):     # 413 from the headers alone
        raise web.HTTPRequestEntityTooLarge(
            MAX_BODY, request.content_length or 0, content_type="application/json",
            text=json.dumps({"error": f"a payload is at most {MAX_BODY} bytes"}))
    body = await request.read()           # at most client_max_size (MAX_BODY), else 413
    try:
        meta = await store.put(edge_id, body)
    except OSError as exc:
        if not out_of_space(exc):
            raise
        raise _error(web.HTTPInsufficientStorage, f"no space left for the payload: {exc.strerror}") from None
    return web.json_response(meta_json(meta))


@routes.delete("/payload/{id:[^/]+}")
async def delete_payload(request: web.Request) -> web.Response:
    edge_id = edge_id_of(request)
    if not await writable_store(request).delete(edge_id):
        raise not_found(edge_id)
    return web.Response(status=204)


@routes.get("/stats")
async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(stats_json(await request.app[STORE].stats()))


async def name_the_worker(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Worker-Pid`` on every answer: which worker process served it."""
    response.headers[WORKER_HEADER] = str(os.getpid())


def create_app(directory: str, *, sendfile_min: int = DEFAULT_SENDFILE_MIN,
               readonly: bool = False) -> web.Application:
    """The application serving the store in ``directory`` (opened on startup,
    so in each worker process after the fork).

    ``sendfile_min``: uncompressed payloads this large or larger go out through
    sendfile; 0 turns it off.  ``readonly``: PUT and DELETE answer 405."""

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = await AsyncPayloadStore.open(directory, readonly=readonly)
        try:
            yield
        finally:
            await app[STORE].close()
            print(f"store closed: {app[STORE].closed}", flush=True)

    app = web.Application(client_max_size=MAX_BODY)
    app[SENDFILE_MIN] = sendfile_min
    app.cleanup_ctx.append(store_ctx)
    app.on_response_prepare.append(name_the_worker)
    app.add_routes(routes)
    return app


#: For ``gunicorn -k aiohttp.GunicornWebWorker aiohttp_app:app``: the store named
#: by $DISKHASH_STORE.  Only the application is made here; each worker opens the store.
app = create_app(store_dir(), readonly=store_readonly())


async def serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    """Run ``app`` until SIGINT or SIGTERM, then shut down in order.

    ``web.run_app`` would do, but it turns a second signal into an exception
    that can cut the cleanup short; here a second signal changes nothing.
    Requests in flight get ``shutdown_timeout`` seconds; note that aiohttp
    stops reading request bodies once it shuts down, so an upload still
    arriving then waits out the timeout and is cancelled."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()                                   # opens the store
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listening(host, runner.addresses[0][1])
        await stop.wait()
        print("shutting down", flush=True)
    finally:
        await runner.cleanup()                             # waits for requests, closes the store


def main() -> None:
    args = server_args(__doc__.splitlines()[0], extra=_options)
    app = create_app(store_dir(args), sendfile_min=args.sendfile_min, readonly=store_readonly(args))
    if args.uvloop:
        import uvloop

        uvloop.run(serve(app, args.host, args.port, args.shutdown_timeout))
    else:
        asyncio.run(serve(app, args.host, args.port, args.shutdown_timeout))


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sendfile-min", type=int, default=DEFAULT_SENDFILE_MIN,
                        help="send uncompressed payloads of at least this many bytes with sendfile (0: never)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (which has no sendfile)")


if __name__ == "__main__":
    main()
