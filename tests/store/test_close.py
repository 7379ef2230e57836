"""PayloadStore.close(): Ctrl-C inside it, and close() against a compact() loop.

Carried from earlier notes in issue 20: Ctrl-C (KeyboardInterrupt) during
``close()`` could leave ``store.lock`` held by a store that says it is
closed, until the object was collected; and a thread running ``compact()``
in a tight loop could keep a ``close()`` from another thread waiting for as
long as the loop ran (the maintenance lock was not fair).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers.processes import subprocess_env

from diskhash import (
    IndexClosedError,
    PayloadStore,
)


def _race_close(path, delay: float) -> None:
    s = PayloadStore(path)
    s.put_many(range(500), [b"v%d" % i * 20 for i in range(500)])
    errors: list = []
    start = threading.Barrier(5)

    def hammer(kind: int) -> None:
        start.wait()
        i = 0
        while True:
            i += 1
            k = i % 500
            try:
                if kind == 0:
                    got = s.get(k)
                    if got is not None and got != b"v%d" % k * 20:
                        errors.append((k, got[:20]))
                elif kind == 1:
                    s.put(k, b"v%d" % k * 20)
                elif kind == 2:
                    s.get_many([k, k + 1])
                    if i % 50 == 0:
                        s.stats()
                else:
                    if i % 20 == 0:
                        s.compact()
                    s.save()
            except IndexClosedError:
                return
            except Exception as exc:        # pragma: no cover - reported below
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    start.wait()
    threading.Event().wait(delay)
    s.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not errors, errors[:3]
    with PayloadStore(path) as s2:
        s2.verify()
        assert all(s2.get(k) == b"v%d" % k * 20 for k in range(500))


SCRIPT = r'''
import gc, os, signal, sys, threading
from diskhash import PayloadStore, IndexLockedError
from diskhash._store import store as _store
from diskhash._fs import files as _files

gc.disable()                 # the release must not wait for a collection
# A child inherits an ignored SIGINT (a CI job started in the background by a
# shell without job control ignores it, and Python then leaves it ignored):
# Ctrl-C's handler is what this test needs, so install it.
signal.signal(signal.SIGINT, signal.default_int_handler)


def ctrl_c():
    signal.raise_signal(signal.SIGINT)      # the default handler: KeyboardInterrupt


def interrupting(real, before=False):
    state = {"done": False}

    def step(*args, **kwargs):
        if state["done"]:
            return real(*args, **kwargs)
        state["done"] = True
        if before:
            ctrl_c()
        got = real(*args, **kwargs)
        ctrl_c()
        return got
    return step


class IndexProxy:
    def __init__(self, real):
        self._real = real

    def close(self):
        self._real.close()
        ctrl_c()

    def _close_unsynced(self):
        self._real._close_unsynced()
        ctrl_c()

    def __getattr__(self, name):
        return getattr(self._real, name)


def check(d, point, sync):
    # (each point its own store; the module-level patches undone after it)
    s = PayloadStore(d, sync=sync)
    s.put_many(list(range(50)), [b"v%d" % k * 20 for k in range(50)])
    s.put(50, b"unsaved")
    patched = []

    def patch(owner, name, before=False):
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, interrupting(getattr(owner, name), before))

    if point == "save":
        patch(s._writer, "save_locked", before=True)
    elif point == "truncate":
        patch(os, "ftruncate")
    elif point == "header":
        patch(s._writer, "write_header")
    elif point == "index_close":
        s._writer.gen.index = IndexProxy(s._writer.gen.index)
    elif point == "release":
        patch(_store.Generation, "release")
    elif point == "unlock_before":
        patch(s._life.lock, "close", before=True)
    elif point == "unlock_after":
        patch(s._life.lock, "close")
    elif point == "index_unlock":
        patch(_files.IndexLock, "close", before=True)
    elif point == "join":
        patch(s._life.syncer, "join")
    out = []
    try:
        try:
            s.close()
            out.append("no interrupt")
        except KeyboardInterrupt:
            out.append("interrupted")
    finally:
        for owner, name, real in reversed(patched):
            setattr(owner, name, real)
    out.append("closed" if s.closed else "open")
    try:
        other = PayloadStore(d, timeout=0)          # s is still referenced, gc off
    except IndexLockedError:
        out.append("lock held")
        s.close()                                   # a second close() finishes the release
        other = PayloadStore(d, timeout=0)
        out.append("released by a second close")
    else:
        out.append("lock free")
    assert other.get(50) == b"unsaved" and other.get(49) == b"v49" * 20
    other.close()
    s.close()
    return out


sync = int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2]
for point in sys.argv[3:]:
    print(point + ":" + ",".join(check(os.path.join(sys.argv[1], point), point, sync)), flush=True)
'''

POINTS = ["save", "truncate", "header", "index_close", "release", "unlock_before", "unlock_after",
          "index_unlock"]


def _run(tmp_path, points: "list[str]", sync="save") -> "dict[str, list[str]]":
    # One child for every point: a Python start-up each was most of the time.
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), sync, *points],
                       capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    found = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert list(found) == points, r.stdout
    return {point: found[point].split(",") for point in points}


def test_ctrl_c_inside_close_still_lets_go_of_the_lock(tmp_path):
    """Ctrl-C at each step of close() (``POINTS``, in turn in one child
    Python, a store each): the store ends closed and store.lock free (another
    open succeeds at once, the first object still alive and the garbage
    collector off), with every record kept.  Ctrl-C as the unlock of
    store.lock or of the index's lock begins is retried before close()
    returns."""
    out = _run(tmp_path, POINTS)
    wrong = {point: got for point, got in out.items() if got != ["interrupted", "closed", "lock free"]}
    assert not wrong, wrong


def test_ctrl_c_while_close_joins_the_sync_thread(tmp_path):
    """With a sync interval, close() stops its thread; Ctrl-C while it waits
    for that thread comes after the store is closed and its lock let go."""
    out = _run(tmp_path, ["join"], "20")
    assert out["join"] == ["interrupted", "closed", "lock free"], out


def test_ctrl_c_while_close_waits_for_maintenance_leaves_the_store_open(tmp_path):
    """Interrupted before it began (waiting for a compaction), close() changes
    nothing: the store stays open and usable; the given-up turn at the
    (fair) maintenance lock does not block the next caller."""
    s = PayloadStore(tmp_path / "s")
    s.put(1, b"one")
    held, release = threading.Event(), threading.Event()

    def hold():
        with s._life.maintenance:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(30)
    # a real SIGINT to this thread: the blocked wait returns EINTR, Python raises
    # (Ctrl-C's own handler: a CI job started in the background inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.get_ident()
    timer = threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            s.close()
        assert not s.closed
        s.put(2, b"two")
    finally:
        release.set()
        t.join(30)
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (s.close(), done.set()))
    closer.start()
    closer.join(30)
    assert done.is_set() and s.closed
    with PayloadStore(tmp_path / "s", timeout=0) as again:
        assert again.get(1) == b"one" and again.get(2) == b"two"


def test_close_waiting_for_a_compaction_goes_before_the_next_one(tmp_path, monkeypatch):
    """A thread compacting in a loop: a close() that started waiting during
    one compaction gets the store before the loop's next compaction (it asked
    first), instead of whenever the loop happens to lose a race for the lock;
    the loop's next compact() then finds the store closed."""
    from diskhash import IndexClosedError
    from diskhash._store import compact as _compact

    s = PayloadStore(tmp_path / "s")
    s.put_many(list(range(200)), [b"x" * 50] * 200)
    copying, go = threading.Event(), threading.Event()
    real_copy = _compact._copy_live_indexed

    def held_copy(*args):
        copying.set()
        assert go.wait(30)
        return real_copy(*args)

    monkeypatch.setattr(_compact, "_copy_live_indexed", held_copy)
    outcome = []

    def loop():
        for _ in range(1000):
            try:
                s.compact()
            except IndexClosedError:
                outcome.append("closed")
                return
            outcome.append("compacted")

    t = threading.Thread(target=loop)
    t.start()
    assert copying.wait(30)
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (s.close(), closed.set()))
    closer.start()
    deadline = time.monotonic() + 30
    while s._life.maintenance._next < 2 and time.monotonic() < deadline:    # close() is waiting
        time.sleep(0.001)
    go.set()
    closer.join(30)
    t.join(30)
    assert closed.is_set() and s.closed
    assert outcome == ["compacted", "closed"], outcome[:5]
    with PayloadStore(tmp_path / "s") as again:
        assert len(again) == 200 and again.get(199) == b"x" * 50


def test_close_racing_everything(tmp_path):
    """Threads hammer every call while another closes: each call returns a right
    answer or raises IndexClosedError; nothing crashes, nothing wrong is read.

    A hostile pass over PayloadStore found this.
    """
    for round_ in range(5):
        _race_close(tmp_path / f"s{round_}", 0.05 * (round_ + 1))
