"""The exceptions diskhash raises: one tree, so ``except DiskHashError`` catches all.

Argument errors stay Python's own (``TypeError``, ``ValueError``,
``OverflowError``, ``KeyError``) and file-system errors stay ``OSError``: those
are the conventions callers already handle.  The one exception is a key out
of range: ``KeyRangeError`` is a ``ValueError`` and an ``OverflowError`` at
once, so either ``except`` catches it.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = [
    "DiskHashError",
    "CorruptIndexError",
    "IndexClosedError",
    "IndexLockedError",
    "ReadOnlyIndexError",
    "WrongEventLoopError",
    "KeyRangeError",
    "CorruptPayloadError",
    "DamagedRecordsError",
    "CodecUnavailableError",
    "ManifestError",
    "ShardMismatchError",
    "ShardBuildError",
    "NetworkFileSystemWarning",
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


#: Keys are ints in this range; every API checks it (``KeyRangeError``).
KEY_RANGE = "[0, 2**128)"


def _shown_key(key: object) -> str:
    # A key of thousands of digits would make a useless message (and
    # str() of a huge int raises on 3.11+): say how big it is instead.
    if isinstance(key, int) and key.bit_length() > 256:
        return f"{'-' if key < 0 else ''}<an int of {key.bit_length()} bits>"
    return str(key)


class KeyRangeError(DiskHashError, OverflowError, ValueError):
    """An edge id that is an int but outside ``[0, 2**128)`` (negative, or too big).

    Both a ``ValueError`` (what the docs promise for a bad value) and an
    ``OverflowError`` (what an int that does not fit a C type raises in
    Python), so ``except ValueError`` and ``except OverflowError`` both
    catch it.  ``key`` is the offending value; ``where`` (e.g. ``"keys[3]"``)
    its position in a batch, or ``""``.
    """

    def __init__(self, key: object, where: str = "") -> None:
        self.key = key
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}edge_id {_shown_key(key)} is outside {KEY_RANGE}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.where))


class CorruptPayloadError(DiskHashError):
    """A PayloadStore file (data file, manifest) is damaged or not what it claims.

    Raised by reads whose checksum or frame header does not match (wrong
    bytes are never returned), by opens of a file with the wrong magic or
    version, and by ``verify()``.  ``path`` names the file, ``edge_id`` and
    ``offset`` (either may be None) say where, ``defects`` lists every
    problem found.
    """

    def __init__(self, path: str, defects: "list[str] | str", *,
                 edge_id: "int | None" = None, offset: "int | None" = None) -> None:
        if isinstance(defects, str):
            defects = [defects]
        self.path = path
        self.defects = list(defects)
        self.edge_id = edge_id
        self.offset = offset
        where = []
        if edge_id is not None:
            where.append(f"edge id {edge_id:#x}")
        if offset is not None:
            where.append(f"offset {offset}")
        shown = "; ".join(self.defects[:20])
        if len(self.defects) > 20:
            shown += f"; ... and {len(self.defects) - 20} more"
        suffix = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{path}: {shown}{suffix}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_corrupt_payload, (self.path, self.defects, self.edge_id, self.offset))


def _rebuild_corrupt_payload(path: str, defects: "list[str]", edge_id: "int | None",
                             offset: "int | None") -> "CorruptPayloadError":
    return CorruptPayloadError(path, defects, edge_id=edge_id, offset=offset)


class DamagedRecordsError(CorruptPayloadError):
    """Maintenance (``compact()``, ``rebuild_index()``) found live records whose
    frames are damaged, and refused rather than lose them silently.

    ``keys`` lists the edge ids whose newest record cannot be read back.
    Nothing was changed.  Calling again with ``salvage=True`` (CLI:
    ``--salvage``) proceeds, drops exactly these keys and reports them in
    ``PayloadStore.last_salvage``.
    """

    def __init__(self, path: str, defects: "list[str] | str", keys: "Sequence[int]", *,
                 offset: "int | None" = None) -> None:
        self.keys = tuple(keys)
        super().__init__(path, defects, offset=offset)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_damaged, (self.path, self.defects, self.keys, self.offset))


def _rebuild_damaged(path: str, defects: "list[str]", keys: "Sequence[int]",
                     offset: "int | None") -> "DamagedRecordsError":
    return DamagedRecordsError(path, defects, keys, offset=offset)


class CodecUnavailableError(DiskHashError, ImportError):
    """A compression codec's package is not installed; the message names the extra."""


class ManifestError(DiskHashError):
    """A sharded set cannot be opened: its manifest is missing, unreadable or
    malformed, or the set was never finished (shard directories, no manifest).

    ``path`` names the manifest (or the set's directory) and ``defects`` lists
    every problem found, one string each.
    """

    def __init__(self, path: str, defects: "list[str] | str") -> None:
        if isinstance(defects, str):
            defects = [defects]
        self.path = path
        self.defects = list(defects)
        super().__init__(f"{path}: {'; '.join(self.defects)}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep both fields across pickling (Dask, multiprocessing)
        return (type(self), (self.path, self.defects))


class ShardMismatchError(ManifestError):
    """The manifest of a sharded set and its shard directories disagree
    (a shard missing, from another set, in the wrong place, or one too many)."""


class ShardBuildError(DiskHashError):
    """Building a sharded set failed; no manifest was written, so the
    incomplete set never opens.  ``shard`` is the failing shard (or None)."""

    def __init__(self, directory: str, shard: "int | None", message: str) -> None:
        self.directory = directory
        self.shard = shard
        where = "" if shard is None else f"shard {shard}: "
        super().__init__(f"{directory}: {where}{message}; no manifest was written")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_shard_build_error, (self.directory, self.shard, str(self)))


def _rebuild_shard_build_error(directory: str, shard: "int | None", text: str) -> "ShardBuildError":
    exc = ShardBuildError.__new__(ShardBuildError)
    exc.directory, exc.shard = directory, shard
    Exception.__init__(exc, text)
    return exc


class NetworkFileSystemWarning(UserWarning):
    """A store or index opened on a network file system (NFS, SMB, a FUSE
    mount): processes of one machine share it, but processes on two machines
    do not see each other's maps or locks coherently (docs/guide/processes.md)."""
