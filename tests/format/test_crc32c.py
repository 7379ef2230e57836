"""The PayloadStore's checksum is the standard CRC-32C (Castagnoli).

docs/internals/store-format.md promises that any crc32c library checks our files: the
compiled ``checksum`` (diskhash/_format/crc32c.h) is compared with the google-crc32c
package, and its portable table code with its crc32-instruction code.
"""

from __future__ import annotations

import random
import struct

import google_crc32c

from diskhash import Compression, PayloadStore
from diskhash._format import frame as _frame
from diskhash._format import payload as fmt

KNOWN_VECTOR = (b"123456789", 0xE3069283)      # the CRC-32C check value


def _samples(seed: int) -> "list[memoryview]":
    """Random bytes of every length 0..5000 (and a few big ones), each viewed
    from a start 0..7 bytes into its buffer so unaligned heads are covered."""
    rng = random.Random(seed)
    out = []
    for n in [*range(5001), 65535, 65536, 70001, (1 << 20) + 13]:
        skew = rng.randrange(8)
        buf = rng.randbytes(n + skew)
        out.append(memoryview(buf)[skew:])
    return out


def test_known_vector():
    data, crc = KNOWN_VECTOR
    assert _frame.checksum(data) == crc
    assert _frame._checksum_soft(data) == crc
    assert fmt.checksum(data) == crc
    assert google_crc32c.value(data) == crc


def test_checksum_is_google_crc32c_over_many_lengths_and_starts():
    for view in _samples(1):
        assert _frame.checksum(view) == google_crc32c.value(bytes(view)), len(view)


def test_checksum_of_zeros_and_ones():
    for n in (0, 1, 7, 8, 383, 384, 385, 4096, 100000):
        for byte in (b"\0", b"\xff"):
            data = byte * n
            assert _frame.checksum(data) == google_crc32c.value(data), (n, byte)


def test_software_path_equals_hardware_path():
    """``_checksum_soft`` always takes the slice-by-8 tables; ``checksum`` takes
    the crc32 instruction where the CPU has one (x86-64 with SSE4.2)."""
    for view in _samples(2):
        assert _frame._checksum_soft(view) == _frame.checksum(view), len(view)


def test_checksum_takes_any_contiguous_buffer():
    data = bytes(range(256)) * 5
    expected = google_crc32c.value(data)
    assert _frame.checksum(bytearray(data)) == expected
    assert _frame.checksum(memoryview(data)) == expected


def test_written_files_carry_crc32c(tmp_path):
    """The frames, the data file header and the manifest of a real store check
    with google-crc32c, as docs/internals/store-format.md describes them."""
    with PayloadStore(tmp_path / "s", compression=Compression.NONE) as s:
        for i in range(20):
            s.put(i, b"payload %d " % i * i)
        s.delete(3)
    directory = tmp_path / "s"
    manifest = (directory / fmt.MANIFEST_NAME).read_bytes()
    assert struct.unpack_from("<Q", manifest, 32)[0] == google_crc32c.value(manifest[:32])
    data_gen, _index_gen = fmt.unpack_manifest(manifest, str(directory / fmt.MANIFEST_NAME))
    data = (directory / fmt.data_name(data_gen)).read_bytes()
    assert struct.unpack_from("<Q", data, 56)[0] == google_crc32c.value(data[:56])
    pos, frames = fmt.DATA_HEADER_SIZE, 0
    while pos < len(data):
        ck, _kind, _comp, mark, slen = fmt.FRAME.unpack_from(data, pos)[:5]
        assert mark == fmt.FRAME_MARK
        end = pos + fmt.FRAME_SIZE + slen
        assert ck == google_crc32c.value(data[pos + 4:end]), pos
        pos, frames = end, frames + 1
    assert frames == 21                 # 20 puts and a tombstone
