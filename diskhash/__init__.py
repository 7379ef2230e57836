"""diskhash: a memory-mapped, crash-safe hash index of 128-bit ids (SOCHIDX2)."""

import importlib.machinery as _machinery
import os as _os


def _missing_extensions() -> "ImportError | None":
    """An ImportError saying what to do, if this folder lacks its compiled modules.

    That is the case when Python runs in the repository root: the source
    folder ``diskhash/`` comes first on ``sys.path`` and shadows the installed
    package, and importing it would otherwise end in a confusing
    "partially initialized module" (circular import) error.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    missing = [name for name in ("_convert", "_format", "_index")
               if not any(_os.path.exists(_os.path.join(here, name + suffix))
                          for suffix in _machinery.EXTENSION_SUFFIXES)]
    if not missing:
        return None
    return ImportError(
        f"diskhash was imported from {here}, a source folder whose compiled extensions "
        f"({', '.join(missing)}) are not built. This happens when Python runs in the "
        "repository root, where the source folder shadows the installed package. "
        "Run from another directory (the installed package is used there), or build "
        "the extensions in place: pip install -e . (or python setup.py build_ext --inplace).",
        name="diskhash", path=here)


try:
    from diskhash._records import Compression, IndexStats, PayloadMeta, RepairReport
    from diskhash._index import DiskHashIndex, repair
except ImportError as _exc:
    _error = _missing_extensions()
    if _error is None:
        raise
    raise _error from None
from diskhash.aio import AsyncDiskHashIndex
from diskhash.errors import (
    CorruptIndexError,
    DiskHashError,
    IndexClosedError,
    IndexLockedError,
    ReadOnlyIndexError,
    WrongEventLoopError,
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
    "WrongEventLoopError",
    "repair",
]

__version__ = "0.1.0"

# The batch dtypes need numpy, an optional extra: resolved on first use, so
# ``import diskhash`` works without numpy (not in __all__ for the same reason).
_DTYPES = ("KEY_DTYPE", "RESULT_DTYPE", "META_DTYPE")


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in _DTYPES:
        from diskhash import _dtypes

        return getattr(_dtypes, name)
    raise AttributeError(f"module 'diskhash' has no attribute {name!r}")
