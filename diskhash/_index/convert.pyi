"""Stubs for diskhash/_index/convert.pyx (internal: PayloadMeta's constructor)."""

from typing import Any, TypeVar

_T = TypeVar("_T", bound=tuple[Any, ...])

def new_payload_meta(
    cls: type[_T], edge_id: Any, offset: Any, length: Any, compression: Any, uncompressed_length: Any
) -> _T: ...
