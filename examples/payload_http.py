"""Shared by asyncio_server.py and trio_lookup.py: the payload store and a
minimal HTTP/1.1 (GET only, keep-alive) over any anyio-compatible loop.

A payload store is two files: ``payloads.dat`` (payloads appended back to
back) and ``payloads.idx`` (a diskhash index: edge id -> where its payload
sits).  ``GET /payload/{id}`` answers the ``PayloadMeta`` as JSON;
``GET /payload/{id}/data`` answers the payload bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
from typing import Iterator

import anyio.to_thread

from diskhash import AsyncDiskHashIndex, Compression, DiskHashIndex, PayloadMeta

MAX_HEAD = 8192          # bytes of request line + headers we accept


def payload_for(edge_id: int) -> bytes:
    return f"payload of edge {edge_id}\n".encode() * (1 + edge_id % 4)


def build_store(directory: str, entries: int, seed: int = 1) -> tuple[str, str, list[int]]:
    """Write a data file and its index; returns (index path, data path, ids)."""
    os.makedirs(directory, exist_ok=True)
    idx_path = os.path.join(directory, "payloads.idx")
    data_path = os.path.join(directory, "payloads.dat")
    rng = random.Random(seed)
    ids = [rng.getrandbits(64) for _ in range(entries)]
    offset = 0
    with open(data_path, "wb") as data, DiskHashIndex(idx_path, capacity=entries) as idx:
        for edge_id in ids:
            blob = payload_for(edge_id)
            data.write(blob)
            idx.insert(edge_id, PayloadMeta(edge_id, offset, len(blob), Compression.NONE, len(blob)))
            offset += len(blob)
        data.flush()
        os.fsync(data.fileno())
        idx.save()
    return idx_path, data_path, ids


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Request line and headers of one request (``ValueError`` if malformed)."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"unsupported version {version!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def keep_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


def response(status: int, body: bytes, content_type: str, alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if alive else 'close'}\r\n\r\n")
    return head.encode() + body


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"error": message}).encode(), "application/json"


async def answer(idx: AsyncDiskHashIndex, data_fd: int, method: str,
                 target: str) -> tuple[int, bytes, str]:
    """(status, body, content type) for one request."""
    if method != "GET":
        return _error(405, "only GET is served")
    parts = target.split("?", 1)[0].strip("/").split("/")
    if parts[0] != "payload" or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "data"):
        return _error(404, "no such route: try /payload/{id} or /payload/{id}/data")
    try:
        edge_id = int(parts[1], 10)
        meta = await idx.get(edge_id)          # inline: no thread hop
    except (ValueError, TypeError, OverflowError):
        return _error(400, f"bad edge id {parts[1]!r}: expected a decimal integer in [0, 2**128)")
    if meta is None:
        return _error(404, f"edge {edge_id} not found")
    if len(parts) == 3:
        blob = await anyio.to_thread.run_sync(os.pread, data_fd, meta.length, meta.offset)
        return 200, blob, "application/octet-stream"
    body = {"edge_id": meta.edge_id, "offset": meta.offset, "length": meta.length,
            "compression": meta.compression.name, "uncompressed_length": meta.uncompressed_length}
    return 200, json.dumps(body).encode(), "application/json"


def server_args(description: str) -> argparse.Namespace:
    """The servers' shared command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--index", help="payload index (default: build one)")
    parser.add_argument("--data", help="payload data file belonging to --index")
    parser.add_argument("--entries", type=int, default=10_000, help="entries to build without --index")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    args = parser.parse_args()
    if bool(args.index) != bool(args.data):
        parser.error("--index and --data go together")
    return args


@contextlib.contextmanager
def store_for(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(index path, data path): the ones given, or a store built in a temporary directory."""
    if args.index:
        yield args.index, args.data
        return
    with tempfile.TemporaryDirectory() as tmp:
        index_path, data_path, _ = build_store(tmp, args.entries)
        yield index_path, data_path
