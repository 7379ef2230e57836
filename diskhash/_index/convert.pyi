"""Stubs for diskhash/_index/convert.pyx (internal: used by diskhash._types)."""

from typing import Any, Sequence, TypeVar

_T = TypeVar("_T", bound=tuple[Any, ...])

def bind_types(record_type: type, compression_members: Sequence[Any]) -> None: ...
def new_payload_meta(
    cls: type[_T], edge_id: Any, offset: Any, length: Any, compression: Any, uncompressed_length: Any
) -> _T: ...
