"""Hostile pass over the read-ahead commits and compact()'s early-end refusal.

``compact()`` must never refuse or lose a healthy store's records, whatever
writers do meanwhile.  Crash and hang cases run in a child process with a
timeout (as in ``test_attack_fused.py``).
"""

from __future__ import annotations

import threading

import pytest

from diskhash import PayloadStore
from diskhash._store import compact as _compact

pytest.importorskip("numpy")


class _TryInsertRefuses:
    """An index whose ``_try_insert`` declines (as when a reader holds the map
    lock or a grow is due): ``_try_put`` then writes its frame and backs it out."""

    def __init__(self, real):
        self._real = real

    def _try_insert(self, key, meta):
        return False

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_compact_catch_up_never_reads_an_end_a_backed_out_put_moves_back(tmp_path, monkeypatch):
    """An inline put (the async store's ``_try_put``) whose insert declines
    writes its frame, moves the log's end past it, then zeroes it and moves the
    end back -- all under the writer lock.  compact()'s unlocked catch-up
    rounds read ``store._end`` without that lock: one read in between took the
    backed-out end as done, so the next put written at the old end (another
    size) was skipped by the last round -- the record vanished from the store
    after the switch (or, with more frames after it, compact() refused the
    healthy log as damaged in the middle)."""
    s = PayloadStore(tmp_path / "s")
    for k in range(100):
        s.put(k, b"old %d" % k * 20)
    for k in range(0, 100, 2):
        s.delete(k)
    in_undo, resume = threading.Event(), threading.Event()
    real_undo = s._undo_append

    def slow_undo(g, start, end):
        in_undo.set()
        assert resume.wait(30)
        real_undo(g, start, end)

    def backed_out_put():
        g = s._gen
        g.index = _TryInsertRefuses(g.index)
        s._undo_append = slow_undo
        try:
            assert s._try_put(777, memoryview(b"z" * 100), None) is None
        finally:
            g.index = g.index._real
            del s._undo_append

    real_copy, real_catch_up = _compact._copy_live_indexed, _compact._catch_up
    state = {"t": None, "rounds": 0}

    def copy_then_write(*args):
        built = real_copy(*args)
        # after e0: more than CATCH_UP_SMALL to catch up, and a put that backs out
        s.put_many(list(range(1000, 1040)), [b"m" * 40_000] * 40)
        state["t"] = threading.Thread(target=backed_out_put)
        state["t"].start()
        assert in_undo.wait(30)
        # Let the put finish shortly: compact() now reads the end (unlocked, it
        # read the one the put is about to take back; under the lock, it waits)
        state["timer"] = threading.Timer(0.5, resume.set)
        state["timer"].start()
        return built

    def catch_up(*args):
        got = real_catch_up(*args)
        if state["rounds"] == 0:            # the first round, without the lock
            state["t"].join(30)
            s.put(888, b"y" * 5000)         # at the end the backed-out put had reached
        state["rounds"] += 1
        return got

    monkeypatch.setattr(_compact, "_copy_live_indexed", copy_then_write)
    monkeypatch.setattr(_compact, "_catch_up", catch_up)
    try:
        s.compact()
        assert s.get(888) == b"y" * 5000
        assert s.get(777) is None
        assert s.get(1039) == b"m" * 40_000
        assert [s.get(k) for k in range(100)] == [None if k % 2 == 0 else b"old %d" % k * 20
                                                  for k in range(100)]
    finally:
        resume.set()
        if state.get("timer") is not None:
            state["timer"].cancel()
        if state["t"] is not None:
            state["t"].join(30)
        s.close()
    monkeypatch.undo()
    with PayloadStore(tmp_path / "s") as s:
        assert s.get(888) == b"y" * 5000
        s.compact()
        assert s.get(888) == b"y" * 5000


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("rounds", ["locked", "unlocked"])
def test_compact_refuses_a_record_damaged_after_its_start(tmp_path, monkeypatch, compiled, rounds):
    """The early-end refusal covers the catch-up too: a record written after
    compact() noted the log's end ``e0`` (an overwrite), then damaged, is the
    log's last record.  The catch-up's scan stopped short of it and the switch
    went on, so the key silently got its older value back (before, its get
    raised ``CorruptPayloadError``).  Now compact() refuses, as for a damaged
    record before ``e0``, leaving the store on its generation."""
    import os

    from diskhash import CorruptPayloadError

    if not compiled:
        monkeypatch.setattr(_compact, "_copy_live_into", None)
        monkeypatch.setattr(_compact, "_copy_live_c", None)
    s = PayloadStore(tmp_path / "s")
    s.put_many(list(range(100)), [b"old %d" % k * 20 for k in range(100)])
    s.save()
    gens = (s._gen.data_gen, s._gen.index_gen)
    real_copy = _compact._copy_live_indexed

    def copy_then_damage(*args):
        built = real_copy(*args)
        if rounds == "unlocked":            # more than CATCH_UP_SMALL behind
            s.put_many(list(range(1000, 1040)), [b"m" * 40_000] * 40)
        meta = s.put(7, b"new value " * 30)
        os.pwrite(s._gen.fd, b"\xff", meta.offset + 5)
        return built

    monkeypatch.setattr(_compact, "_copy_live_indexed", copy_then_damage)
    try:
        files = sorted(os.listdir(tmp_path / "s"))
        with pytest.raises(CorruptPayloadError, match="ends early"):
            s.compact()
        assert (s._gen.data_gen, s._gen.index_gen) == gens
        assert sorted(os.listdir(tmp_path / "s")) == files
        with pytest.raises(CorruptPayloadError):
            s.get(7)                        # the damage is reported, not hidden
        assert s.get(8) == b"old 8" * 20
        s.put(9, b"still writable")
        assert s.get(9) == b"still writable"
    finally:
        s.close()
