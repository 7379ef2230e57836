"""The record types the index stores and returns.

``PayloadMeta`` is a ``NamedTuple`` so it compares equal to (and unpacks like)
the plain tuple of its five fields.  Its constructor is compiled: the index
layer's ``diskhash._index.convert`` imports these classes and installs its
validator as the one ``PayloadMeta.__new__`` calls when it is imported (``import diskhash``
does), so a bad record fails where it is built, not at insert.  This module
sits at the bottom of the package and imports nothing of it.
"""

from __future__ import annotations

import enum
import uuid
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, NamedTuple, SupportsIndex

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Compression",
    "PayloadMeta",
    "IndexStats",
    "RepairReport",
    "SalvageReport",
    "StoreRecovery",
]


class Compression(enum.IntEnum):
    """How the payload is stored in the data file (slot byte 1)."""

    NONE = 0
    LZ4 = 1
    ZSTD = 2


class _PayloadMetaFields(NamedTuple):
    edge_id: int
    offset: int
    length: int
    compression: Compression
    uncompressed_length: int


class PayloadMeta(_PayloadMetaFields):
    """Where one edge's payload lives in the append-only data file.

    ``PayloadMeta(edge_id, offset, length, compression, uncompressed_length)``:
    edge_id in [0, 2**128) (an ``int`` or ``uuid.UUID``), offset a u64, the
    lengths u32, compression a ``Compression`` (or its int value).
    Construction validates every field and raises ``TypeError``,
    ``ValueError`` or ``OverflowError`` naming the field.
    """

    __slots__ = ()

    #: The validator, ``diskhash._index.convert.new_payload_meta``: that module
    #: sets it when it is imported (``import diskhash`` does).
    _validate: ClassVar[Callable[..., Any]]

    def __new__(cls, edge_id: int | uuid.UUID | SupportsIndex, offset: SupportsIndex,
                length: SupportsIndex, compression: Compression | SupportsIndex,
                uncompressed_length: SupportsIndex) -> Self:
        # The compiled validator (see the module's docstring): checks every
        # field, normalises the key to an int.  This frame stays in Python so
        # that a wrong number or name of arguments is reported as by any
        # NamedTuple; five positional arguments skip it (the class's vectorcall).
        return PayloadMeta._validate(cls, edge_id, offset, length, compression,  # type: ignore[no-any-return]
                                     uncompressed_length)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> "PayloadMeta":  # type: ignore[override]
        # NamedTuple's _make is generic in cls; this one always builds a
        # validated PayloadMeta.
        return cls(*iterable)

    def _replace(self, **changes: Any) -> "PayloadMeta":
        fields = self._asdict()
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"PayloadMeta has no field(s) {sorted(unknown)}")
        fields.update(changes)
        return PayloadMeta(**fields)


class IndexStats(NamedTuple):
    """A snapshot of the table's shape (``DiskHashIndex.stats()``)."""

    entries: int
    slots: int
    load_factor: float
    file_bytes: int
    longest_probe: int
    mean_probe: float


class RepairReport(NamedTuple):
    """What ``repair()`` kept and what it had to drop (slot, reason)."""

    kept: int
    dropped: list[tuple[int, str]]
    slots: int


class SalvageReport(NamedTuple):
    """What ``compact(salvage=True)`` or ``rebuild_index(salvage=True)`` dropped.

    ``keys``: the edge ids whose newest record was damaged and is gone from
    the store; ``frames`` and ``bytes``: the damaged frames (live and dead)
    passed over.
    """

    keys: tuple[int, ...]
    frames: int
    bytes: int


class StoreRecovery(NamedTuple):
    """What a writable ``PayloadStore`` open recovered after an unclean close
    (``PayloadStore.recovery``; None after a clean close).

    ``replayed``: keys brought into the index from the log after the last
    ``save()``.  ``cut_bytes``: bytes cut from the end of the data file (a
    torn record, blocks allocated ahead, and after a power loss everything
    from the first invalid frame after the checkpoint on).  ``cut_frames``:
    whole valid frames that lay after that first invalid frame and were cut
    with it (point-in-time recovery: the log is kept up to the hole).
    ``cut_keys``: the edge ids those cut frames (and index entries pointing
    past the cut) named; each is back at its value from before the cut, or
    absent if it had none.  ``rebuilt``: why the index was rebuilt from the
    log, or None.  ``removed``: leftover files of other generations or
    temporaries a crash left, deleted.
    """

    replayed: int = 0
    cut_bytes: int = 0
    cut_frames: int = 0
    cut_keys: tuple[int, ...] = ()
    rebuilt: "str | None" = None
    removed: tuple[str, ...] = ()
