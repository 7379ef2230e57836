"""diskhash: a memory-mapped, crash-safe hash index of 128-bit ids (SOCHIDX2)."""

from diskhash._records import Compression, IndexStats, PayloadMeta, RepairReport
from diskhash._index import DiskHashIndex, repair
from diskhash.aio import AsyncDiskHashIndex
from diskhash.errors import (
    CorruptIndexError,
    DiskHashError,
    IndexClosedError,
    IndexLockedError,
    ReadOnlyIndexError,
)

__all__ = [
    "AsyncDiskHashIndex",
    "Compression",
    "CorruptIndexError",
    "DiskHashError",
    "DiskHashIndex",
    "IndexClosedError",
    "IndexLockedError",
    "IndexStats",
    "PayloadMeta",
    "ReadOnlyIndexError",
    "RepairReport",
    "repair",
]

__version__ = "0.1.0"
