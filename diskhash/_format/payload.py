"""The PayloadStore's files, defined once: data file header, record frames, manifest.

Byte-for-byte description: docs/internals/store-format.md.  Everything here is
little-endian.  A data file is a 64-byte header followed by frames; a frame
is a 32-byte header followed by ``stored_length`` payload bytes.  The
checksum is CRC-32C (Castagnoli) over the frame from byte 4 (everything
after the checksum field) to the end of its payload, so one contiguous read
checks header and payload together.  The data file header and the manifest
end in a u64 holding the CRC-32C of the bytes before it, zero-extended.
``checksum`` is the compiled one (``frame.pyx`` over ``crc32c.h``, beside
this module): the Python paths call it too.

``PayloadMeta.offset`` of an indexed record is the offset of its payload
bytes (frame offset + ``FRAME_SIZE``) and ``.length`` its stored size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from typing import Any, Callable, Iterator, NamedTuple

from diskhash._format.frame import checksum
from diskhash._format.frame import scan_into as _scan_into
from diskhash.errors import CorruptPayloadError

__all__ = [
    "BOOT_ID", "DATA_MAGIC", "DATA_VERSION", "DATA_HEADER", "DATA_HEADER_SIZE", "FLAG_DIRTY",
    "FRAME", "FRAME_SIZE", "FRAME_MARK", "KIND_PUT", "KIND_TOMBSTONE", "MAX_LENGTH",
    "MANIFEST", "MANIFEST_MAGIC", "MANIFEST_VERSION", "MANIFEST_NAME",
    "DataHeader", "Frame", "ScanResult",
    "checksum", "frame_matches", "frame_at", "claimed_end",
    "pack_frame_body", "pread_exact", "FRAME_BODY", "pack_data_header", "unpack_data_header",
    "pack_manifest", "unpack_manifest", "data_name", "index_name", "generation_file",
    "is_store_temporary", "whole_frame_end", "scan", "tombstone", "replay", "next_frame", "Damage",
    "WALK_MODES", "scan_resync",
]

# -- data file header (64 bytes) ---------------------------------------------
#  0  8s  magic "SOCHDATA"
#  8  u32 version (1)
# 12  u32 header size (64)
# 16  u64 checkpoint: every frame before this offset is in the index file as
#         of its last save() (the log is replayed from here on a writable open)
# 24  u32 flags: bit 0 = a writer has the file open (unclean if set at open)
# 28  u32 reserved (0)
# 32  16s boot id of the system that last set the flags (Linux's
#         /proc/sys/kernel/random/boot_id; zeros where unknown): a dirty
#         file stamped by another boot was open when the machine went down
# 48  8x  reserved (0)
# 56  u64 CRC-32C of bytes 0..56, zero-extended
DATA_MAGIC = b"SOCHDATA"
DATA_VERSION = 1
DATA_HEADER = struct.Struct("<8sIIQII16s8xQ")
DATA_HEADER_SIZE = 64
FLAG_DIRTY = 1
assert DATA_HEADER.size == DATA_HEADER_SIZE

# -- frame header (32 bytes) ---------------------------------------------------
#  0  u32 checksum: CRC-32C over bytes [4, 32 + stored_length)
#  4  u8  kind: 1 put, 2 tombstone
#  5  u8  compression (diskhash.Compression; 0 for a tombstone)
#  6  u16 mark 0xD5A7 (a frame starts here; helps tell garbage from a frame)
#  8  u32 stored_length (0 for a tombstone)
# 12  u32 uncompressed_length (0 for a tombstone)
# 16  u64 edge id, low 64 bits
# 24  u64 edge id, high 64 bits
FRAME = struct.Struct("<IBBHIIQQ")
FRAME_BODY = struct.Struct("<BBHIIQQ")      # the frame header without its checksum
FRAME_SIZE = 32
FRAME_MARK = 0xD5A7
KIND_PUT = 1
KIND_TOMBSTONE = 2
MAX_LENGTH = 0xFFFFFFFF
MAX_COMPRESSION = 2
assert FRAME.size == FRAME_SIZE and FRAME_BODY.size == FRAME_SIZE - 4
_MARK_BYTES = struct.pack("<H", FRAME_MARK)
_MASK64 = (1 << 64) - 1


def frame_matches(header: "tuple[int, ...]", meta: Any) -> bool:
    """Whether a frame header (``FRAME.unpack`` of its 32 bytes) is the record an
    index entry (``PayloadMeta``) points at: a put of that key, lengths and
    codec.  The compiled twin is ``frame_matches`` in frame.pxd."""
    _, kind, comp, mark, slen, ulen, lo, hi = header
    key = meta[0]
    return (kind == KIND_PUT and mark == FRAME_MARK and slen == meta[2]
            and lo == key & _MASK64 and hi == key >> 64
            and comp == meta[3] and comp <= MAX_COMPRESSION and ulen == meta[4])

# -- manifest (40 bytes, file "MANIFEST") ----------------------------------------
#  0  8s  magic "SOCHSTOR"
#  8  u32 version (1)
# 12  u32 reserved (0)
# 16  u64 data generation  -> data file  "data-<gen:06d>.dat"
# 24  u64 index generation -> index file "index-<gen:06d>.idx" (SOCHIDX2)
# 32  u64 CRC-32C of bytes 0..32, zero-extended
MANIFEST_NAME = "MANIFEST"
MANIFEST_MAGIC = b"SOCHSTOR"
MANIFEST_VERSION = 1
MANIFEST = struct.Struct("<8sIIQQQ")
assert MANIFEST.size == 40


def data_name(gen: int) -> str:
    return f"data-{gen:06d}.dat"


def index_name(gen: int) -> str:
    return f"index-{gen:06d}.idx"


_GENERATION_FILE = re.compile(r"(data|index)-([0-9]{6,})(\.dat|\.idx|\.idx\.lock)\Z")
_STORE_TEMPORARY = re.compile(
    r"\.(?:MANIFEST\.[0-9]+|index-[0-9]{6,}\.idx\.(?:grow|create|repair)-[0-9]+-[0-9a-f]{8})\.tmp\Z")


def generation_file(name: str) -> "tuple[str, int] | None":
    """``("data" | "index", generation)`` when ``name`` is exactly the name of a
    generation's file (``data_name``, ``index_name``, or ``index_name`` + ".lock"),
    else None.  The one check of what a writable open may delete as another
    generation's leftover: ``data-export.dat`` or ``index-users.idx`` are the
    user's files, not ours."""
    m = _GENERATION_FILE.match(name)
    if m is None:
        return None
    kind, digits, ext = m.groups()
    gen = int(digits)
    if kind == "data":
        return (kind, gen) if ext == ".dat" and data_name(gen) == name else None
    return (kind, gen) if ext != ".dat" and index_name(gen) + ext[4:] == name else None


def is_store_temporary(name: str) -> bool:
    """True for exactly the temporary names a store makes in its directory (a
    MANIFEST being written, an index grow/create/repair): a crash may leave them."""
    return _STORE_TEMPORARY.match(name) is not None


def pack_frame_body(kind: int, compression: int, stored_length: int,
                    uncompressed_length: int, key: int) -> bytes:
    """Bytes 4..32 of a frame header (what the checksum covers, before the payload)."""
    return FRAME_BODY.pack(kind, compression, FRAME_MARK, stored_length, uncompressed_length,
                           key & _MASK64, key >> 64)


def _read_boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().decode("ascii").strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError, UnicodeDecodeError):
        return bytes(16)


#: This boot's id (zeros where the system has none): stamped into every data
#: file header a writer writes.
BOOT_ID = _read_boot_id()
NO_BOOT_ID = bytes(16)


class DataHeader(NamedTuple):
    version: int
    checkpoint: int
    flags: int
    boot_id: bytes = NO_BOOT_ID

    def open_across_reboot(self) -> bool:
        """A writer had the file open (dirty) when the system last went down:
        index pages written after the checkpoint cannot be trusted (any of
        them may or may not have reached the disk), unlike after a process
        crash, where every page written is in the page cache."""
        return bool(self.flags & FLAG_DIRTY) and self.boot_id not in (NO_BOOT_ID, BOOT_ID) \
            and BOOT_ID != NO_BOOT_ID


def pack_data_header(checkpoint: int, flags: int, boot_id: bytes = BOOT_ID) -> bytes:
    head = DATA_HEADER.pack(DATA_MAGIC, DATA_VERSION, DATA_HEADER_SIZE, checkpoint, flags, 0, boot_id, 0)
    return head[:56] + struct.pack("<Q", checksum(head[:56]))


def unpack_data_header(buf: bytes, path: str) -> DataHeader:
    """Check and decode a data file header; ``CorruptPayloadError`` naming ``path`` if bad."""
    if len(buf) < DATA_HEADER_SIZE:
        raise CorruptPayloadError(path, f"data file is {len(buf)} bytes, shorter than its "
                                        f"{DATA_HEADER_SIZE}-byte header")
    magic, version, hsize, checkpoint, flags, _res, boot_id, check = DATA_HEADER.unpack_from(buf)
    if magic != DATA_MAGIC:
        raise CorruptPayloadError(path, f"not a diskhash data file (magic {magic!r}, "
                                        f"expected {DATA_MAGIC!r})")
    if version != DATA_VERSION:
        raise CorruptPayloadError(path, f"data file version {version} is not supported "
                                        f"(this diskhash reads version {DATA_VERSION})")
    if hsize != DATA_HEADER_SIZE or check != checksum(buf[:56]):
        raise CorruptPayloadError(path, "data file header checksum mismatch", offset=0)
    return DataHeader(version, checkpoint, flags, boot_id)


def pack_manifest(data_gen: int, index_gen: int) -> bytes:
    head = MANIFEST.pack(MANIFEST_MAGIC, MANIFEST_VERSION, 0, data_gen, index_gen, 0)[:32]
    return head + struct.pack("<Q", checksum(head))


def unpack_manifest(buf: bytes, path: str) -> tuple[int, int]:
    """(data generation, index generation); ``CorruptPayloadError`` naming ``path`` if bad."""
    if len(buf) != MANIFEST.size:
        raise CorruptPayloadError(path, f"store manifest is {len(buf)} bytes, expected {MANIFEST.size}")
    magic, version, _res, data_gen, index_gen, check = MANIFEST.unpack(buf)
    if magic != MANIFEST_MAGIC:
        raise CorruptPayloadError(path, f"not a diskhash store manifest (magic {magic!r})")
    if version != MANIFEST_VERSION:
        raise CorruptPayloadError(path, f"store manifest version {version} is not supported "
                                        f"(this diskhash reads version {MANIFEST_VERSION})")
    if check != checksum(buf[:32]):
        raise CorruptPayloadError(path, "store manifest checksum mismatch")
    return data_gen, index_gen


# -- scanning the log ------------------------------------------------------------

class Frame(NamedTuple):
    """One valid frame found by ``scan``: ``offset`` is where its header starts;
    ``raw`` the whole frame's bytes when the scan was asked for them."""

    offset: int
    kind: int
    compression: int
    stored_length: int
    uncompressed_length: int
    key: int
    raw: "memoryview | bytes | None" = None


def tombstone(key: int) -> bytes:
    """The whole frame that deletes ``key``."""
    body = pack_frame_body(KIND_TOMBSTONE, 0, 0, 0, key)
    return checksum(body).to_bytes(4, "little") + body


class ScanResult(NamedTuple):
    """Where a scan stopped: ``end`` is the end of the last valid frame.

    ``torn`` is True when bytes after ``end`` hold no valid frame (a record a
    crash cut short, or zeros): cutting the file at ``end`` loses nothing.
    """

    end: int
    file_size: int
    torn: bool


SCAN_CHUNK = 8 << 20
#: A frame longer than a chunk is checksummed in pieces of this size (bounded memory).
CHECK_PIECE = 8 << 20
#: What a walk does at an invalid frame: raise if a valid frame follows (a
#: torn tail otherwise), stop there, or pass over it to the next valid frame.
WALK_MODES = ("raise", "stop", "resync")


class Damage(NamedTuple):
    """A stretch a walk in ``"resync"`` mode passed over: the invalid frame at
    ``start`` up to the next valid frame (or the file's end) at ``end``.
    ``key`` is the edge id its header names when the header itself is
    plausible (mark, kind, lengths), else None (the header is damaged too)."""

    start: int
    end: int
    key: "int | None"


def frame_at(buf: "bytes | memoryview", pos: int, avail: int) -> "tuple[int, int, int, int, int, int] | None":
    """Decode and check the frame at ``buf[pos:]``; None if it is not a whole valid frame."""
    if avail - pos < FRAME_SIZE:
        return None
    ck, kind, comp, mark, slen, ulen, lo, hi = FRAME.unpack_from(buf, pos)
    if mark != FRAME_MARK or comp > MAX_COMPRESSION:
        return None
    if kind == KIND_PUT:
        if (comp == 0 and ulen != slen) or (comp and (slen == 0 or ulen == 0)):
            return None
    elif kind != KIND_TOMBSTONE or slen or ulen or comp:
        return None
    end = pos + FRAME_SIZE + slen
    if end > avail:
        return None
    if checksum(memoryview(buf)[pos + 4:end]) != ck:
        return None
    return kind, comp, slen, ulen, lo | (hi << 64), end


def claimed_end(buf: "bytes | memoryview", at: int) -> int:
    """How many bytes the frame header at ``buf[at:]`` claims (header + payload) if
    the header is plausible (mark, kind, compression, lengths that fit the kind),
    else -1.  Looks at the header only: nothing of the body is read."""
    if len(buf) - at < FRAME_SIZE:
        return -1
    _ck, kind, comp, mark, slen, ulen, _lo, _hi = FRAME.unpack_from(buf, at)
    if mark != FRAME_MARK or comp > MAX_COMPRESSION:
        return -1
    if kind == KIND_PUT:
        if (comp == 0 and ulen != slen) or (comp and (slen == 0 or ulen == 0)):
            return -1
    elif kind != KIND_TOMBSTONE or slen or ulen or comp:
        return -1
    return FRAME_SIZE + int(slen)


def _header_key(head: "bytes | memoryview") -> "int | None":
    if claimed_end(head, 0) < 0:
        return None
    lo, hi = struct.unpack_from("<QQ", head, 16)
    return int(lo | (hi << 64))


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        got = os.pread(fd, min(size, 1 << 30), offset)
        if not got:
            break
        parts.append(got)
        size -= len(got)
        offset += len(got)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def whole_frame_end(fd: int, pos: int, file_size: int,
                     read: "Callable[[int, int, int], Any]" = pread_exact) -> int:
    """End of the frame at ``pos`` if it is whole and valid, else -1.

    The header is checked first (mark, kind, lengths, the frame inside the
    file), and the checksum is then computed in ``CHECK_PIECE`` pieces: a
    garbage length never makes a read of the bytes it claims."""
    head = read(fd, FRAME_SIZE, pos)
    need = claimed_end(head, 0)
    if need < 0 or pos + need > file_size:
        return -1
    want: int = FRAME.unpack_from(head)[0]
    crc = checksum(head[4:])
    off, end = pos + FRAME_SIZE, pos + need
    while off < end:
        piece = read(fd, min(CHECK_PIECE, end - off), off)
        if not len(piece):
            return -1
        crc = checksum(piece, crc)
        off += len(piece)
    return end if crc == want else -1


def _find_frame(fd: int, pos: int, file_size: int) -> int:
    """Offset of the first whole valid frame at or after ``pos``, or -1.

    Looks for the frame mark; a candidate is checked by its header first
    (``claimed_end``), then by its checksum in bounded pieces.  A candidate
    whose header is plausible but whose checksum fails claims its bytes: the
    search goes on past them (a frame is passed over whole, never byte by
    byte), and one that claims bytes past the end of the file ends it.  So
    each byte is read a bounded number of times: linear in the file.
    """
    while pos + FRAME_SIZE <= file_size:
        buf = pread_exact(fd, min(SCAN_CHUNK, file_size - pos), pos)
        if len(buf) < FRAME_SIZE:
            break
        nxt = pos + len(buf) - FRAME_SIZE + 1        # overlap: a header cut by the chunk edge
        find = 6
        while True:
            at = buf.find(_MARK_BYTES, find)
            if at < 0:
                break
            cand = at - 6
            if cand + FRAME_SIZE > len(buf):
                nxt = pos + cand
                break
            need = claimed_end(buf, cand)
            if need < 0:
                find = at + 1
                continue
            if pos + cand + need > file_size:
                return -1                           # claims past the end: a torn record
            if cand + need <= len(buf):
                if frame_at(buf, cand, cand + need) is not None:
                    return pos + cand
            elif whole_frame_end(fd, pos + cand, file_size) >= 0:
                return pos + cand
            nxt = pos + cand + need                 # passed over whole
            break
        pos = nxt
    return -1


def next_frame(fd: int, bad: int, file_size: int) -> int:
    """Offset of the first valid frame after the invalid frame at ``bad``, or -1.

    A header that is itself plausible claims its bytes: the search starts
    past them, so a torn record whose payload holds frames (another store's
    data file, say) is not taken for damage in the middle of the log.
    Otherwise (zeros, garbage) the search starts at the next byte.
    """
    need = claimed_end(pread_exact(fd, FRAME_SIZE, bad), 0)
    start = bad + need if need > 0 else bad + 1
    return _find_frame(fd, start, file_size) if start < file_size else -1


def _walk(fd: int, start: int, file_size: int, path: str,
          parse: "Callable[[bytes, int, int], int]",
          progress: "Callable[[int, int], Any] | None" = None,
          read: "Callable[[int, int, int], Any]" = pread_exact,
          mode: str = "raise") -> "Iterator[ScanResult | None]":
    """``_walk_modes`` in ``"raise"`` or ``"stop"`` mode: no ``Damage`` items."""
    if mode == "resync":
        raise ValueError("_walk does not resync: use _walk_modes")
    for item in _walk_modes(fd, start, file_size, path, parse, progress, read, mode):
        assert not isinstance(item, Damage)
        yield item


def _walk_modes(fd: int, start: int, file_size: int, path: str,
                parse: "Callable[[bytes, int, int], int]",
                progress: "Callable[[int, int], Any] | None" = None,
                read: "Callable[[int, int, int], Any]" = pread_exact,
                mode: str = "raise") -> "Iterator[ScanResult | Damage | None]":
    """Read the log from ``start`` in chunks; ``parse(buf, p, file_offset_of_buf)``
    consumes the valid frames from ``buf[p:]`` and returns where it stopped.
    ``read(fd, size, offset)`` gets a chunk (``pread_exact``, or a slice of a map).

    Yields None after each parsed piece, then one ``ScanResult``.  At an
    invalid frame, by ``mode``:

    * ``"raise"``: a valid frame after it (``next_frame``) is corruption in
      the middle of the log: ``CorruptPayloadError`` naming the file and
      offset, never a cut.  With nothing valid after it, a torn tail.
    * ``"stop"``: the walk ends there (a ``ScanResult`` with ``torn`` set),
      whatever follows: the open's point-in-time cut after the checkpoint.
    * ``"resync"``: yields a ``Damage`` and goes on at the next valid frame.

    A frame is checked by its header before any of its body is read, and a
    frame longer than a chunk is checksummed in bounded pieces.
    """
    if mode not in WALK_MODES:
        raise ValueError(f"mode must be one of {WALK_MODES}, not {mode!r}")
    pos = start
    while pos < file_size:
        size = min(SCAN_CHUNK, file_size - pos)
        buf = read(fd, size, pos)
        avail = len(buf)
        if not avail:               # the file shrank under us: it ends here
            yield ScanResult(pos, pos, False)
            return
        p = parse(buf, 0, pos)
        yield None
        if p == avail or (p and pos + avail < file_size):
            # Whole frames (the last one maybe cut by the chunk's edge: read on from it).
            pos += p
            if progress is not None:
                progress(pos, file_size)
            continue
        pos += p
        # The frame at pos is not whole in this chunk: longer than a chunk, or invalid.
        end = whole_frame_end(fd, pos, file_size, read) if pos + FRAME_SIZE <= file_size else -1
        if end > 0:
            whole = read(fd, end - pos, pos)
            parse(whole, 0, pos)
            del whole
            yield None
            pos = end
            if progress is not None:
                progress(pos, file_size)
            continue
        bad = pos
        if mode == "stop":
            yield ScanResult(bad, file_size, True)
            return
        later = next_frame(fd, bad, file_size)
        if mode == "raise":
            if later >= 0:
                raise CorruptPayloadError(
                    path, f"damaged record in the middle of the log (a valid record "
                          f"follows at offset {later})", offset=bad)
            yield ScanResult(bad, file_size, True)
            return
        yield Damage(bad, later if later >= 0 else file_size,
                     _header_key(pread_exact(fd, FRAME_SIZE, bad)))
        if later < 0:
            yield ScanResult(bad, file_size, True)
            return
        pos = later
        if progress is not None:
            progress(pos, file_size)
    yield ScanResult(pos, file_size, False)


def scan(fd: int, start: int, file_size: int, path: str,
         progress: "Callable[[int, int], Any] | None" = None,
         raw: bool = False, mode: str = "raise") -> "Iterator[Frame | ScanResult]":
    """Yield every valid frame from ``start``, then a ``ScanResult`` (see
    ``_walk_modes``; ``mode`` "raise" or "stop": ``scan_resync`` passes over damage).

    ``raw``: each ``Frame`` carries its bytes.  ``progress(done_bytes,
    total_bytes)`` is called every chunk if given.
    """
    if mode == "resync":
        raise ValueError("scan does not resync: use scan_resync")
    for item in _scan(fd, start, file_size, path, progress, raw, mode):
        assert not isinstance(item, Damage)
        yield item


def scan_resync(fd: int, start: int, file_size: int, path: str,
                progress: "Callable[[int, int], Any] | None" = None,
                raw: bool = False) -> "Iterator[Frame | Damage | ScanResult]":
    """``scan`` that passes over each invalid stretch to the next valid frame,
    yielding a ``Damage`` for it in log order."""
    return _scan(fd, start, file_size, path, progress, raw, "resync")


def _scan(fd: int, start: int, file_size: int, path: str,
          progress: "Callable[[int, int], Any] | None", raw: bool,
          mode: str) -> "Iterator[Frame | Damage | ScanResult]":
    frames: list[Frame] = []

    def parse(buf: bytes, p: int, base: int) -> int:
        view = memoryview(buf)
        avail = len(buf)
        while True:
            got = frame_at(buf, p, avail)
            if got is None:
                return p
            kind, comp, slen, ulen, key, end = got
            frames.append(Frame(base + p, kind, comp, slen, ulen, key, view[p:end] if raw else None))
            p = end

    for item in _walk_modes(fd, start, file_size, path, parse, progress, mode=mode):
        if item is None:
            yield from frames
            frames.clear()
        else:
            yield item


def replay(fd: int, start: int, file_size: int, path: str,
           progress: "Callable[[int, int], Any] | None" = None, mode: str = "raise",
           damages: "list[Damage] | None" = None,
           ) -> "tuple[dict[int, tuple[int, int, int, int] | None], ScanResult]":
    """The log from ``start`` folded into its final state, and where it ended.

    The state maps each key the log touches to ``(payload offset, stored
    length, compression, uncompressed length)`` of its last put, or None if
    its last frame is a tombstone.  The compiled ``scan_into`` does the work
    where it is built (the same checks as ``frame_at``).  ``mode``: see
    ``_walk``; the ``Damage`` of ``"resync"`` are appended to ``damages``.
    """
    final: "dict[int, tuple[int, int, int, int] | None]" = {}
    if _scan_into is not None:
        def parse(buf: bytes, p: int, base: int) -> int:
            return int(_scan_into(buf, p, base, final))
    else:  # pragma: no cover - a build without the compiled module
        def parse(buf: bytes, p: int, base: int) -> int:
            avail = len(buf)
            while True:
                got = frame_at(buf, p, avail)
                if got is None:
                    return p
                kind, comp, slen, ulen, key, end = got
                final[key] = (base + p + FRAME_SIZE, slen, comp, ulen) if kind == KIND_PUT else None
                p = end
    result = None
    for item in _walk_modes(fd, start, file_size, path, parse, progress, mode=mode):
        if isinstance(item, Damage):
            if damages is not None:
                damages.append(item)
        elif item is not None:
            result = item
    assert result is not None
    return final, result


@contextlib.contextmanager
def mapped_reader(fd: int, start: int, file_size: int) -> "Iterator[Callable[[int, int, int], Any]]":
    """A ``read`` for ``_walk`` that returns slices of a read-only map of the
    file (no copy) instead of ``pread`` copies.  The map ends at the file's
    end, so a slice past it comes back short, as ``pread`` would.  For the
    whole-log passes (``fold``, compaction's copy); the file must not shrink
    meanwhile (the store's lock: only the writable open cuts a torn tail).
    A whole-log pass reads every byte once: slices of a map save the copy
    and the system call of each chunk (docs/performance.md, "Measurements
    behind the design")."""
    length = min(file_size, os.fstat(fd).st_size)
    mm = mmap.mmap(fd, length, access=mmap.ACCESS_READ) if length > start else None
    view = memoryview(mm) if mm is not None else memoryview(b"")
    try:
        if mm is not None:
            try:
                mm.madvise(mmap.MADV_SEQUENTIAL)
            except (AttributeError, OSError):  # pragma: no cover
                pass

        def read(_fd: int, size: int, offset: int) -> Any:
            return view[offset:offset + size]

        yield read
    finally:
        view.release()
        if mm is not None:
            try:
                mm.close()
            except BufferError:     # a slice held by a raised error's traceback: freed with it
                pass


def fold(fd: int, start: int, file_size: int, path: str, table: Any,
         progress: "Callable[[int, int], Any] | None" = None, mode: str = "raise",
         damages: "list[Damage] | None" = None) -> ScanResult:
    """``replay`` into a compiled ``LogFold`` (``table``) instead of a dict: the
    log's final state stays in C until ``table.rows()``.  Same walk, checks,
    modes and errors as ``replay``; the chunks are slices of a map
    (``mapped_reader``)."""
    def parse(buf: bytes, p: int, base: int) -> int:
        return int(table.fold(buf, p, base))

    result = None
    with mapped_reader(fd, start, file_size) as read:
        for item in _walk_modes(fd, start, file_size, path, parse, progress, read, mode):
            if isinstance(item, Damage):
                if damages is not None:
                    damages.append(item)
            elif item is not None:
                result = item
    assert result is not None
    return result

