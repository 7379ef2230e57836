"""Stubs for diskhash/_store_write.pyx (internal: the PayloadStore's bulk write path)."""

from typing import Any

def encode_frames(keys: list[Any], payloads: list[Any], start: int, max_bytes: int,
                  blob: bytearray) -> tuple[int, int, bytes, bytearray]: ...
