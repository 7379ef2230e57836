"""What the three HTTP examples share: the URL id format, the JSON of a record,
the ETag, a consistent (record, bytes) read, and the command line.

Copy this file next to the app you copy.  Nothing here is framework-specific.

Ids in URLs are either a decimal integer in [0, 2**128) (digits only, at most
39 of them) or a UUID in its canonical hyphenated form
(``12345678-1234-5678-1234-567812345678``, either case); anything else is a
malformed id (HTTP 400).  JSON carries ids as decimal *strings*: they exceed
the integers JSON parsers keep exactly (2**53).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import uuid
from collections.abc import Callable
from typing import Any

MAX_ID = 1 << 128
_DECIMAL = re.compile(r"[0-9]{1,39}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: The largest PUT body the apps accept (HTTP 413 above it).
MAX_BODY = 64 << 20
#: An environment variable naming the store directory (for ``uvicorn app:app``
#: and ``hypercorn app:app``, whose command lines are the server's, not ours).
STORE_ENV = "DISKHASH_STORE"
#: Set to 1, an environment variable that serves the store read-only (the
#: command-line equivalent is ``--readonly``): PUT and DELETE answer 405.
READONLY_ENV = "DISKHASH_READONLY"
#: The header every answer carries: the pid of the worker process that served
#: it, so that under ``--workers N`` a client (and the tests) can tell them apart.
WORKER_HEADER = "X-Worker-Pid"
DEFAULT_STORE = "payload-store"
#: Seconds the requests in flight get to finish when the server is asked to stop.
SHUTDOWN_TIMEOUT = 10.0


class BadId(ValueError):
    """The id in a URL is neither a decimal id nor a UUID."""


def parse_edge_id(text: str) -> int:
    """The edge id a URL path segment names; ``BadId`` saying why if malformed."""
    if _DECIMAL.fullmatch(text):
        value = int(text)
        if value >= MAX_ID:
            raise BadId(f"bad edge id {text!r}: must be below 2**128")
        return value
    if _UUID.fullmatch(text):
        return uuid.UUID(text).int
    raise BadId(f"bad edge id {text[:80]!r}: expected a decimal integer or a hyphenated UUID")


def body_too_large(content_length: "str | bytes | None") -> bool:
    """Whether a request's Content-Length header already says its body is over
    MAX_BODY: then the app answers 413 at once, from the headers alone, rather
    than waiting for (and reading) a body it will refuse.  A missing or
    malformed header is left to the server and the body reader."""
    if content_length is None:
        return False
    text = content_length.decode("latin-1") if isinstance(content_length, bytes) else content_length
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return False
    return len(text.lstrip("0")) > 20 or int(text) > MAX_BODY


def read_only_message() -> str:
    """What a PUT or DELETE on a read-only server answers (405)."""
    return f"the store is served read-only (${READONLY_ENV} or --readonly): only GET and HEAD"


def out_of_space(exc: OSError) -> bool:
    """Whether a failed put failed for want of disk space (answer 507, not 500).

    The store stays consistent and keeps serving reads; a later put fits once
    space is freed."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def etag(meta: Any) -> str:
    """A strong ETag for one stored version of a payload.

    The store appends every put at a new offset of its data file, so
    (offset, length) names the version; a compaction moves payloads and
    changes their ETags, which costs a client one full download, never a
    stale answer."""
    return f'"{meta.offset:x}-{meta.length:x}"'


def meta_json(meta: Any) -> dict[str, Any]:
    """A ``PayloadMeta`` as a JSON-ready dict (ids as decimal strings)."""
    return {
        "edge_id": str(meta.edge_id),
        "offset": meta.offset,
        "length": meta.length,
        "compression": meta.compression.name,
        "uncompressed_length": meta.uncompressed_length,
        "etag": etag(meta),
    }


def stats_json(stats: Any) -> dict[str, Any]:
    """A ``StoreStats`` named tuple as a JSON-ready dict."""
    return {name: _jsonable(value) for name, value in stats._asdict().items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "name"):               # an enum
        return value.name
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


async def read_payload(store: Any, edge_id: int) -> tuple[Any, bytes] | None:
    """The record and the bytes of one payload, from the same version.

    ``meta`` then ``get`` are two calls; a PUT of the same id between them
    would pair the new bytes with the old ETag, so read the record again and
    retry if it changed.  None if absent (or deleted meanwhile)."""
    meta = await store.meta(edge_id)
    while meta is not None:
        data = await store.get(edge_id)
        again = await store.meta(edge_id)
        if data is not None and again == meta:
            return meta, data
        meta = again
    return None


def server_args(description: str,
                extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--store DIR --host HOST --port PORT`` (and what ``extra`` adds): the apps' command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", default=None,
                        help=f"store directory (default: ${STORE_ENV} or ./{DEFAULT_STORE}); created if absent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    parser.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT,
                        help="seconds requests in flight get to finish once a signal asks the server to stop")
    parser.add_argument("--readonly", action="store_true",
                        help=f"open the store read-only: PUT and DELETE answer 405 (also ${READONLY_ENV}=1)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def store_dir(args: argparse.Namespace | None = None) -> str:
    """The store directory: ``--store``, else ``$DISKHASH_STORE``, else ./payload-store."""
    if args is not None and args.store:
        return str(args.store)
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def store_readonly(args: argparse.Namespace | None = None) -> bool:
    """Whether to open the store read-only: ``--readonly``, else ``$DISKHASH_READONLY`` set to 1."""
    if args is not None and args.readonly:
        return True
    value = os.environ.get(READONLY_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"${READONLY_ENV} must be 1 (read-only) or 0, not {value!r}")
    return value == "1"


def listening(host: str, port: int) -> None:
    """The one line scripts (and the tests) wait for before sending requests."""
    print(f"listening on http://{host}:{port}", flush=True)
