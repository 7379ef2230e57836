"""The store's compiled objects refuse a foreign ``self`` or a foreign
record with ``TypeError``: never a crash."""

from __future__ import annotations

import pytest

from diskhash import (
    PayloadStore,
)


def test_foreign_self():
    """A hostile pass over PayloadStore found this."""
    with pytest.raises(AttributeError):
        PayloadStore.get(object(), 1)
    with pytest.raises(AttributeError):
        PayloadStore.put(object(), 1, b"x")


def test_compiled_reader_refuses_foreign_records(tmp_path):
    """A hostile pass over PayloadStore found this."""
    _store_read = pytest.importorskip("diskhash._store.read")
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"x")
        s.get(1)
        reader = s._writer.gen.reader
        for bad in ("str", 5, (1, 2), [1, 2, 3, 4, 5]):
            with pytest.raises(TypeError):
                reader.read(bad, True)
        assert reader.read((1, 10**12, 5, 0, 5), True) == _store_read.BEYOND
        assert reader.read((2, 96, 1, 0, 1), True) == _store_read.MISMATCH     # another key
