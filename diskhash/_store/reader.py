"""Reads of one generation: a record by its index entry (the compiled map read,
or Python for big records, a remap and every error), decompression, and
``read_inline``, the one call the async twin makes on the event loop.

The store's ``get`` keeps its compiled fast path inline (one call: probe,
check, copy); everything else it reads comes through here.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, TypeVar

from diskhash._format import payload as fmt
from diskhash._store import codecs as _codecs
from diskhash._store.generation import Generation
from diskhash._store.keys import key_halves, key_list
from diskhash._store.read import BEYOND
from diskhash._types import PayloadMeta
from diskhash.errors import CorruptPayloadError, IndexClosedError

__all__ = ["BIG_READ", "ReadLater", "StoreReader", "iter_keys", "replaced_message"]

#: Payloads of more stored bytes than this are read with pread (GIL released), not the map.
BIG_READ = 64 * 1024
#: No file is larger (off_t): an offset past it is a damaged index entry.
_MAX_FILE = (1 << 63) - 1


class ReadLater(NamedTuple):
    """What ``read_inline`` returns for a record over its limit: read it
    elsewhere (a worker thread) as ``StoreReader.read(gen, meta)``."""
    gen: Generation
    meta: PayloadMeta


class StoreReader:
    """Reads records of a store's generations, each checked against its index
    entry (``fmt.frame_matches``) and, when ``verify``, its checksum.  The
    store passes the generation to read (its own, current one), so a
    generation switched by ``compact()`` is seen at the next call."""

    __slots__ = ("directory", "verify")

    def __init__(self, directory: str, verify: bool) -> None:
        self.directory = directory
        self.verify = verify

    def read(self, g: Generation, meta: PayloadMeta) -> bytes:
        """The payload of ``meta``, checked; ``CorruptPayloadError`` if it does not check out."""
        reader = g.reader
        if reader is not None and meta[2] <= BIG_READ:
            got = reader.read(meta, self.verify)
            if type(got) is not bytes:
                if got == BEYOND:
                    g.remap()
                    got = g.reader.read(meta, self.verify)
                if type(got) is not bytes:
                    if g.closed:
                        raise IndexClosedError(f"{self.directory}: store is closed")
                    return self.read_py(g, meta)       # raises the right error
            if meta[3]:
                return self.decompress(g, meta, got)
            return got
        return self.read_py(g, meta)

    def get_slow(self, g: Generation, edge_id: Any, default: Any) -> Any:
        """``get`` through the index's PayloadMeta: no map yet, a remap, big
        records, and every error."""
        meta = g.index.get(edge_id)
        if meta is None:
            return default
        return self.read(g, meta)

    def get_many(self, live: "Callable[[], Generation]", edge_ids: Any) -> "list[bytes | None]":
        """``PayloadStore.get_many``: one compiled loop over the generation
        ``live()`` gives probes, checks and copies; only the unusual records
        (big, remapped, damaged) go through ``get_slow``."""
        g = live()
        reader = g.reader
        if reader is None:
            return [self.get_slow(live(), k, None) for k in key_list(edge_ids)]
        halves = key_halves(edge_ids)
        keys: "list[Any]"
        if halves is not None:
            out, fixups = reader.get_many_u128(halves[0], halves[1], self.verify, BIG_READ)
            lo, hi = halves
            for i in fixups:
                out[i] = self.get_slow(live(), int(lo[i]) | (int(hi[i]) << 64), None)
            return out  # type: ignore[no-any-return]
        keys = edge_ids if type(edge_ids) is list else key_list(edge_ids)
        out, fixups = reader.get_many(keys, self.verify, BIG_READ)
        for i in fixups:
            out[i] = self.get_slow(live(), keys[i], None)
        return out  # type: ignore[no-any-return]

    def read_inline(self, live: "Callable[[], Generation]", edge_id: Any, default: Any,
                    limit: int) -> Any:
        """The rest of ``get`` for a caller that must not block long (the async
        twin on its event loop), after the compiled call gave up: the payload,
        ``default``, or a ``ReadLater``.  ``live()``: the store's generation,
        or its closed error."""
        g = live()
        meta = g.index.get(edge_id)
        if meta is None:
            return default
        if meta.length <= limit:
            return self.read(g, meta)
        return ReadLater(g, meta)

    def read_py(self, g: Generation, meta: PayloadMeta) -> bytes:
        """``read`` in Python: big records (pread), no compiled module, and errors."""
        off = meta.offset
        n = meta.length
        start = off - fmt.FRAME_SIZE
        end = off + n
        if n > BIG_READ:
            return self.read_big(g, meta)
        if start < fmt.DATA_HEADER_SIZE:        # (a damaged index: not a negative slice)
            raise _short(g, meta)
        view = g.view
        if view is None or end > len(view):
            view = g.remap()
            if end > len(view):
                raise _short(g, meta)
        header = fmt.FRAME.unpack_from(view, start)
        if not fmt.frame_matches(header, meta):
            raise CorruptPayloadError(g.data_path, "record header does not match the index",
                                      edge_id=meta.edge_id, offset=start)
        if self.verify and fmt.checksum(view[start + 4:end]) != header[0]:
            raise CorruptPayloadError(g.data_path, "payload checksum mismatch",
                                      edge_id=meta.edge_id, offset=start)
        if header[2]:
            return self.decompress(g, meta, view[off:end])
        return view[off:end].tobytes()

    @staticmethod
    def decompress(g: Generation, meta: PayloadMeta, data: Any) -> bytes:
        try:
            return _codecs.decompress(int(meta.compression), data, meta.uncompressed_length)
        except ValueError as exc:
            raise CorruptPayloadError(g.data_path, str(exc), edge_id=meta.edge_id,
                                      offset=meta.offset - fmt.FRAME_SIZE) from None

    def read_big(self, g: Generation, meta: PayloadMeta) -> bytes:
        """A large record: one pread (the GIL released while it copies)."""
        start = meta.offset - fmt.FRAME_SIZE
        n = meta.length
        if start < fmt.DATA_HEADER_SIZE or start + fmt.FRAME_SIZE + n > _MAX_FILE:
            raise _short(g, meta)          # (a damaged index: not pread's OverflowError)
        buf = fmt.pread_exact(g.fd, fmt.FRAME_SIZE + n, start)
        if len(buf) != fmt.FRAME_SIZE + n:
            if g.closed:
                raise IndexClosedError(f"{self.directory}: store is closed")
            raise _short(g, meta)
        header = fmt.FRAME.unpack_from(buf)
        if not fmt.frame_matches(header, meta):
            raise CorruptPayloadError(g.data_path, "record header does not match the index",
                                      edge_id=meta.edge_id, offset=start)
        mv = memoryview(buf)
        if self.verify and fmt.checksum(mv[4:]) != header[0]:
            raise CorruptPayloadError(g.data_path, "payload checksum mismatch",
                                      edge_id=meta.edge_id, offset=start)
        if header[2]:
            return self.decompress(g, meta, mv[fmt.FRAME_SIZE:])
        return buf[fmt.FRAME_SIZE:]


def _short(g: Generation, meta: PayloadMeta) -> CorruptPayloadError:
    return CorruptPayloadError(
        g.data_path, f"data file is shorter than the indexed offset + length "
                     f"({meta.offset} + {meta.length})", edge_id=meta.edge_id,
        offset=meta.offset - fmt.FRAME_SIZE)


_T = TypeVar("_T")


def iter_keys(it: Iterator[_T], gen_of: Callable[[], "Generation | None"], directory: str) -> Iterator[_T]:
    """The keys of the index iterator ``it``; a generation replaced meanwhile
    (``gen_of()`` names the store's current one, None once it is closed) is
    ``RuntimeError``.

    Holds the index iterator only (not the generation), so a replaced
    generation is let go and its index closed: that is a RuntimeError here,
    as for any change during iteration, not ``IndexClosedError`` on an open
    store."""
    while True:
        try:
            key = next(it)
        except StopIteration:
            return
        except IndexClosedError:
            if gen_of() is None:
                raise
            raise RuntimeError(replaced_message(directory)) from None
        yield key


def replaced_message(directory: str) -> str:
    return f"{directory}: compact() or rebuild_index() replaced the index during iteration"
