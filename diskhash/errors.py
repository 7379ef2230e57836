"""The exceptions diskhash raises: one tree, so ``except DiskHashError`` catches all.

Argument errors stay Python's own (``TypeError``, ``ValueError``,
``OverflowError``, ``KeyError``) and file-system errors stay ``OSError``: those
are the conventions callers already handle.
"""

from __future__ import annotations

__all__ = [
    "DiskHashError",
    "CorruptIndexError",
    "IndexClosedError",
    "IndexLockedError",
    "ReadOnlyIndexError",
    "WrongEventLoopError",
]


class DiskHashError(Exception):
    """Base class of every diskhash-specific error."""


class CorruptIndexError(DiskHashError):
    """The index file breaks the SOCHIDX2 format.

    ``path`` names the file and ``defects`` lists every problem found (one
    string each), so a caller can log them all or decide to ``repair()``.
    """

    def __init__(self, path: str, defects: "list[str] | str") -> None:
        if isinstance(defects, str):
            defects = [defects]
        self.path = path
        self.defects = list(defects)
        shown = "; ".join(self.defects[:20])
        if len(self.defects) > 20:
            shown += f"; ... and {len(self.defects) - 20} more"
        super().__init__(f"{path}: corrupt index: {shown}")

    def __reduce__(self) -> "tuple[type[CorruptIndexError], tuple[str, list[str]]]":
        # keep both fields across pickling (multiprocessing)
        return (type(self), (self.path, self.defects))


class IndexClosedError(DiskHashError, ValueError):
    """The index was closed (or inherited across ``fork()``) and cannot be used.

    A ``ValueError`` too, like I/O on a closed Python file.
    """


class IndexLockedError(DiskHashError):
    """Another process (or another open index object) holds a conflicting lock.

    Across processes the rule is many readers or one writer.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self) -> "tuple[type[IndexLockedError], tuple[str, str]]":
        # Both fields as given: the path may itself contain ": ".
        return (type(self), (self.path, self.message))


class ReadOnlyIndexError(DiskHashError, PermissionError):
    """A write was attempted on an index opened with ``readonly=True``."""


class WrongEventLoopError(DiskHashError, RuntimeError):
    """An ``AsyncDiskHashIndex`` was called from a second event loop while
    calls from the first were still in flight.

    anyio's locks belong to one event loop, so two loops (two threads, or
    asyncio and trio) cannot wait on one facade at the same time; waiting
    would hang both.  Give each loop its own facade over the one thread-safe
    index instead: ``AsyncDiskHashIndex(shared.sync)``.  One loop after the
    other (``asyncio.run`` twice) is fine: the facade moves to a new loop
    whenever the old one has no call in flight.
    """
