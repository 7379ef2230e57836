"""diskhash: a memory-mapped, crash-safe hash index of 128-bit ids (SOCHIDX2)."""

try:
    from diskhash._types import Compression, IndexStats, PayloadMeta, RepairReport, SalvageReport, StoreRecovery
    from diskhash._index.table import DiskHashIndex, repair
except ImportError:
    from diskhash._checkout import missing_extensions as _missing_extensions

    _error = _missing_extensions()
    if _error is None:
        raise
    raise _error from None
else:
    from diskhash._checkout import FOREIGN_MESSAGE as _FOREIGN_MESSAGE
    from diskhash._checkout import foreign_files as _foreign_files

    if _foreign := _foreign_files():
        import os as _os
        import warnings as _warnings

        _warnings.warn(_FOREIGN_MESSAGE.format(here=_os.path.dirname(__file__), files=", ".join(_foreign)),
                       RuntimeWarning, stacklevel=2)

from diskhash.aio import AsyncDiskHashIndex
from diskhash._store.maintenance import StoreStats
from diskhash._store.store import PayloadStore
from diskhash._store.aio import AsyncPayloadStore
from diskhash._store.parquet import export_parquet, import_parquet
from diskhash._shards.sharded import ShardedStats, ShardedStore
from diskhash._shards.aio import AsyncShardedStore
from diskhash.errors import (
    CodecUnavailableError,
    CorruptIndexError,
    CorruptPayloadError,
    DamagedRecordsError,
    DiskHashError,
    IndexClosedError,
    IndexLockedError,
    KeyRangeError,
    ManifestError,
    NetworkFileSystemWarning,
    ReadOnlyIndexError,
    ShardBuildError,
    ShardMismatchError,
    WrongEventLoopError,
)

__all__ = [
    "AsyncDiskHashIndex",
    "AsyncPayloadStore",
    "AsyncShardedStore",
    "CodecUnavailableError",
    "Compression",
    "CorruptIndexError",
    "CorruptPayloadError",
    "DamagedRecordsError",
    "DiskHashError",
    "DiskHashIndex",
    "IndexClosedError",
    "IndexLockedError",
    "IndexStats",
    "KeyRangeError",
    "ManifestError",
    "NetworkFileSystemWarning",
    "PayloadMeta",
    "PayloadStore",
    "ReadOnlyIndexError",
    "RepairReport",
    "SalvageReport",
    "ShardBuildError",
    "ShardMismatchError",
    "ShardedStats",
    "ShardedStore",
    "StoreRecovery",
    "StoreStats",
    "WrongEventLoopError",
    "export_parquet",
    "import_parquet",
    "repair",
]

__version__ = "0.1.0"

# The batch dtypes need numpy, an optional extra: resolved on first use, so
# ``import diskhash`` works without numpy (not in __all__ for the same reason).
_DTYPES = ("KEY_DTYPE", "RESULT_DTYPE", "META_DTYPE")


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in _DTYPES:
        from diskhash._index import dtypes as _dtypes

        return getattr(_dtypes, name)
    raise AttributeError(f"module 'diskhash' has no attribute {name!r}")
