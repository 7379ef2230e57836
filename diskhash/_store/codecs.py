"""Compression codecs for the PayloadStore: LZ4 raw blocks and standard zstd frames.

Both packages are optional (the ``store`` extra, ``pip install ".[store]"``): without them
the store works with ``Compression.NONE``, and asking for (or reading) a
compressed payload raises ``CodecUnavailableError`` naming the extra.

* LZ4 is a raw block (``lz4.block.compress(store_size=False)``): the
  uncompressed size lives in the record, so any LZ4 block decoder reads it.
* ZSTD is a standard zstd frame (with the content size), as ``zstd -d`` reads.

zstd compressor and decompressor objects are not thread-safe: one of each per
thread, kept in a ``threading.local``.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Callable

from diskhash._types import Compression
from diskhash.errors import CodecUnavailableError

__all__ = ["compress", "decompress", "check_decodes", "available", "require", "EXTRA",
           "lz4_block_decompress"]

# The distribution is diskhash-sochidx: PyPI's "diskhash" is another project.
EXTRA = 'the "store" extra of diskhash-sochidx (pip install ".[store]" in its checkout)'
ZSTD_LEVEL = 3

# Imported by name (no static import): lz4 ships no type information, and
# either package may be missing.
_lz4: Any
_zstd: Any
try:
    _lz4 = importlib.import_module("lz4.block")
except ImportError:  # pragma: no cover - exercised in a subprocess without the extra
    _lz4 = None
try:
    _zstd = importlib.import_module("zstandard")
except ImportError:  # pragma: no cover
    _zstd = None

#: ``lz4.block.decompress`` (None without the package): the compiled get
#: decodes LZ4 records with it directly, its errors reported through
#: ``decompress()``.
lz4_block_decompress: Any = getattr(_lz4, "decompress", None)

_local = threading.local()
_PACKAGES = {Compression.LZ4: "lz4", Compression.ZSTD: "zstandard"}


def available(compression: Compression) -> bool:
    """Whether ``compression`` can be written and read here."""
    if compression == Compression.LZ4:
        return _lz4 is not None
    if compression == Compression.ZSTD:
        return _zstd is not None
    return True


def require(compression: Any) -> Compression:
    """``compression`` as a ``Compression``; ``CodecUnavailableError`` if its package is missing."""
    try:
        comp = Compression(compression)
    except ValueError:
        raise ValueError(f"compression must be a diskhash.Compression (NONE, LZ4, ZSTD), "
                         f"not {compression!r}") from None
    if isinstance(compression, bool):
        raise TypeError(f"compression must be a diskhash.Compression, not bool ({compression!r})")
    if not available(comp):
        name = _PACKAGES[comp]
        raise CodecUnavailableError(f"Compression.{comp.name} needs the {name!r} package: {EXTRA}")
    return comp


def _zc() -> Any:
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = _zstd.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _zd() -> Any:
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = _zstd.ZstdDecompressor()
    return d


def _lz4_compress(data: Any) -> bytes:
    out: bytes = _lz4.compress(data, store_size=False)
    return out


def _zstd_compress(data: Any) -> bytes:
    out: bytes = _zc().compress(data)
    return out


_COMPRESS: dict[int, Callable[[Any], bytes]] = {1: _lz4_compress, 2: _zstd_compress}


def compress(compression: int, data: Any) -> "bytes | None":
    """``data`` compressed with ``compression`` (LZ4 or ZSTD), or None if that
    is not smaller than ``data`` (the caller then stores it as NONE)."""
    out = _COMPRESS[compression](data)
    if len(out) >= len(data):
        return None
    return out


def decompress(compression: int, data: Any, uncompressed_length: int) -> bytes:
    """The original bytes of a stored LZ4/ZSTD payload (exactly ``uncompressed_length`` long).

    Raises ``CodecUnavailableError`` if the package is missing and
    ``ValueError`` if the bytes do not decode to that length.
    """
    if compression == 1:
        if _lz4 is None:
            require(Compression.LZ4)
        try:
            out: bytes = _lz4.decompress(data, uncompressed_size=uncompressed_length)
        except Exception as exc:
            raise ValueError(f"LZ4 block does not decode: {exc}") from None
    elif compression == 2:
        if _zstd is None:
            require(Compression.ZSTD)
        try:
            out = _zd().decompress(data, max_output_size=uncompressed_length)
        except Exception as exc:
            raise ValueError(f"zstd frame does not decode: {exc}") from None
    else:
        raise ValueError(f"unknown compression {compression}")
    if len(out) != uncompressed_length:
        raise ValueError(f"decoded {len(out)} bytes, the record says {uncompressed_length}")
    return out


#: check_decodes streams zstd in pieces of this many bytes (input and output).
CHECK_PIECE = 1 << 20


class _PayloadReader:
    """``read(n)`` over the stored bytes [offset, offset + length) of a file (pread)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + length

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._end - self._pos:
            size = self._end - self._pos
        got = os.pread(self._fd, size, self._pos) if size > 0 else b""
        self._pos += len(got)
        return got


def check_decodes(compression: int, fd: int, offset: int, length: int,
                  uncompressed_length: int) -> None:
    """Check that the ``length`` stored bytes at ``offset`` of ``fd`` decode, as
    ``decompress`` would, to exactly ``uncompressed_length`` bytes; ``ValueError``
    saying what is wrong if not (``CodecUnavailableError`` without the package).

    For ``verify()``: one record at a time.  zstd is streamed in
    ``CHECK_PIECE`` pieces, so the memory used does not grow with the record;
    an LZ4 raw block can only be decoded whole (its bytes and its output).
    """
    if compression != 2:
        data = os.pread(fd, length, offset) if length else b""
        while len(data) < length:       # (a short read: more than 2 GiB at once)
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        decompress(compression, data, uncompressed_length)
        return
    if _zstd is None:
        require(Compression.ZSTD)
    total = 0
    try:
        for piece in _zd().read_to_iter(_PayloadReader(fd, offset, length),
                                        read_size=CHECK_PIECE, write_size=CHECK_PIECE):
            total += len(piece)
            if total > uncompressed_length:
                break
    except Exception as exc:
        raise ValueError(f"zstd frame does not decode: {exc}") from None
    if total != uncompressed_length:
        got = "more than" if total > uncompressed_length else f"{total} bytes, not"
        raise ValueError(f"zstd frame decodes to {got} the {uncompressed_length} bytes the record says")
