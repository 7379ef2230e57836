"""The errors' contract: each pickles with every field it carries."""

from __future__ import annotations

import pickle

import pytest

from diskhash import (
    CorruptIndexError,
    IndexClosedError,
    IndexLockedError,
    ReadOnlyIndexError,
    WrongEventLoopError,
)


@pytest.mark.parametrize("error", [
    IndexLockedError("/tmp/odd: name: here.idx", "locked by another writer: try later"),
    IndexLockedError("plain.idx", "locked"),
    CorruptIndexError("/a: b.idx", ["slot 1: bad tag 0x07", "x: y"]),
    CorruptIndexError("c.idx", "one defect"),
    IndexClosedError("/a: b.idx: index is closed"),
    ReadOnlyIndexError("/a: b.idx: index is open read-only"),
    WrongEventLoopError("/a: b.idx: in use by another event loop"),
])
def test_errors_pickle_with_every_field(error):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    for attr in ("path", "defects", "message"):
        assert getattr(back, attr, None) == getattr(error, attr, None)


def test_index_locked_error_keeps_a_path_with_colon_space():
    """A hostile pass found this: the API keeps its contracts at its edges."""
    e = IndexLockedError("/data/a: b.idx", "held by a writer")
    back = pickle.loads(pickle.dumps(e))
    assert back.path == "/data/a: b.idx" and back.message == "held by a writer"
    assert str(back) == "/data/a: b.idx: held by a writer"
