"""Stubs for diskhash/_store/write.pyx (internal: the PayloadStore's bulk write path)."""

from typing import Any

from diskhash._index.table import DiskHashIndex
from diskhash._types import PayloadMeta

def encode_frames(keys: list[Any], payloads: list[Any], start: int, max_bytes: int,
                  blob: bytearray) -> tuple[int, int, bytes, bytearray]: ...
def encode_frames_u128(pairs: Any, payloads: list[Any], start: int, max_bytes: int,
                       blob: bytearray) -> tuple[int, int, bytes, bytearray]: ...
def encode_frames_packed(pairs: Any, ends: Any, data: Any, start: int, max_bytes: int,
                         blob: bytearray) -> tuple[int, int, bytes, bytearray]: ...
def put_frame(index: DiskHashIndex, view: Any, start: int, key: Any, payload: bytes) -> PayloadMeta: ...
