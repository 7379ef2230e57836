"""Stubs for diskhash/_store/arrow_fill.pyx (internal: the Arrow batch read)."""

from typing import Any, Callable

from diskhash._index.table import DiskHashIndex

def c_codecs() -> tuple[bool, bool]: ...
def use_c_codecs(lz4: bool, zstd: bool) -> None: ...
def fill_many(index: DiskHashIndex, mapping: Any, keys: Any, verify: bool, raw: bool,
              alloc: Callable[[int], Any]) -> tuple[Any, Any, Any, int,
                                                    list[tuple[int, int | None, int, int, int]],
                                                    Any, Any]: ...
