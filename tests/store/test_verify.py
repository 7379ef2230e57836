"""verify() decodes compressed records (issue 20, item 11).

A record whose LZ4/ZSTD bytes pass their checksum but do not decode to the
recorded length is refused by get(); verify() passed it, because it checked
only frames and checksums.  Now it decodes each live compressed record, one
at a time (zstd streamed in pieces), and reports the ones that do not decode.
"""

from __future__ import annotations

import pytest

from diskhash import Compression, CorruptPayloadError, PayloadStore
from diskhash._store import codecs as _codecs

pytest.importorskip("lz4")
pytest.importorskip("zstandard")

GOOD = b"a healthy payload " * 200


def _write_bad(s: PayloadStore, monkeypatch, comp: Compression, how: str) -> None:
    """Put key 7 whose stored bytes are checksummed but do not decode to its length."""
    real = _codecs._COMPRESS[int(comp)]

    def bad(data):
        if how == "short":
            return real(bytes(data)[:-10])      # decodes, to 10 bytes fewer
        if how == "long":
            return real(bytes(data) + b"tail")  # decodes to more than recorded
        return b"\x00\xffnot a block" * 5       # garbage

    monkeypatch.setitem(_codecs._COMPRESS, int(comp), bad)
    s.put(7, GOOD, compression=comp)
    monkeypatch.setitem(_codecs._COMPRESS, int(comp), real)


@pytest.mark.parametrize("comp", [Compression.LZ4, Compression.ZSTD])
@pytest.mark.parametrize("how", ["short", "long", "garbage"])
def test_verify_reports_a_record_that_does_not_decode(tmp_path, monkeypatch, comp, how):
    with PayloadStore(tmp_path / "s") as s:
        for k in range(20):
            s.put(k, GOOD + b"%d" % k, compression=comp)
        s.verify()                          # healthy compressed records pass
        _write_bad(s, monkeypatch, comp, how)
        with pytest.raises(CorruptPayloadError):
            s.get(7)
        with pytest.raises(CorruptPayloadError) as err:
            s.verify()
        assert len(err.value.defects) == 1 and "0x7" in err.value.defects[0], err.value.defects
        s.put(7, GOOD, compression=comp)    # overwritten: the bad record is dead
        s.verify()


def test_zstd_is_checked_in_pieces(tmp_path, monkeypatch):
    """A record bigger than the piece size streams through the check."""
    monkeypatch.setattr(_codecs, "CHECK_PIECE", 4096)
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, bytes(range(256)) * 4000, compression=Compression.ZSTD)
        s.verify()
        real = _codecs._COMPRESS[2]
        monkeypatch.setitem(_codecs._COMPRESS, 2, lambda d: real(bytes(d)[:-1]))
        s.put(2, bytes(range(256)) * 4000, compression=Compression.ZSTD)
        with pytest.raises(CorruptPayloadError, match="0x2"):
            s.verify()
