"""What ``fork()`` does to an inherited PayloadStore (issue 20, items 1 and 2).

A forked child shares its parent's data file (and its map of it, and its
lock): every write path of the child's copy must refuse before it touches a
file, reads refuse too (the inherited index is disabled at fork), and
``close()`` in the child only drops the child's own descriptors and maps.
Before, a put in the child wrote its frame at the child's stale log end and
then zeroed it, wiping the parent's newer records; a ``close()`` with
``sync="never"`` truncated the parent's data file.

The scenarios run in a child Python (real ``os.fork()``, a timeout against a
child that hangs on a lock its parent held) that reports what the forked
children saw and what the parent could read afterwards; the test then
reopens the store itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.processes import subprocess_env

from diskhash import PayloadStore

pytest.importorskip("numpy")

SCRIPT = r'''
import json, os, sys, threading
import numpy as np
import anyio
from diskhash import PayloadStore, IndexClosedError, KEY_DTYPE
from diskhash import AsyncPayloadStore
from diskhash._store.store import put_many_packed

d, sync = sys.argv[1], sys.argv[2]
sync = int(sync) if sync.isdigit() else sync
ops = sys.argv[3].split(",")
s = PayloadStore(d, sync=sync)
s.put_many(list(range(200)), [b"before %d " % k * 10 for k in range(200)])
s.save()
keys = np.zeros(100, dtype=KEY_DTYPE)
keys["lo"] = np.arange(5000, 5100)
packed = (keys, np.arange(1, 101, dtype=np.int64) * 7, b"p" * 700)


async def async_put(store):
    a = AsyncPayloadStore(store)
    await a.put(9999, b"async")


OPS = {
    "put": lambda: s.put(9000, b"child " * 100),
    "put_fast": lambda: s.put(9001, b"x"),
    "put_compressed": lambda: s.put(9002, b"z" * 4000, compression=1),
    "setitem": lambda: s.__setitem__(9003, b"child"),
    "put_many": lambda: s.put_many([9100, 9101], [b"a" * 50, b"b" * 60]),
    "put_many_numpy": lambda: s.put_many(np.arange(9200, 9400, dtype=np.uint64), [b"n" * 30] * 200),
    "put_many_packed": lambda: put_many_packed(s, [packed]),
    "delete": lambda: s.delete(3),
    "delitem": lambda: s.__delitem__(4),
    "pop": lambda: s.pop(5),
    "save": s.save,
    "compact": s.compact,
    "rebuild_index": s.rebuild_index,
    "verify": s.verify,
    "stats": s.stats,
    "get": lambda: s.get(1),
    "getitem": lambda: s[2],
    "get_many": lambda: s.get_many([1, 2, 3]),
    "contains": lambda: 1 in s,
    "len": lambda: len(s),
    "iter": lambda: list(s),
    "meta": lambda: s.meta(1),
    "payload_range": lambda: s.payload_range(1),
    "with": lambda: s.__enter__(),
    "async_put": lambda: anyio.run(async_put, s),
    "close": lambda: None,          # only the close below
}

def same(k, want):
    try:
        return s.get(k) == want
    except Exception:
        return False


report = {"children": {}, "parent": {}}
next_key = 1000
for op in ops:
    rfd, wfd = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.close(go_w)
        os.read(go_r, 1)            # the parent has written after the fork
        out = {}
        try:
            OPS[op]()
            out["op"] = "no error"
        except IndexClosedError as exc:
            out["op"] = "IndexClosedError: " + str(exc)
        except BaseException as exc:
            out["op"] = f"{type(exc).__name__}: {exc}"
        try:
            s.close()
            s.close()
            out["close"] = "ok"
        except BaseException as exc:
            out["close"] = f"{type(exc).__name__}: {exc}"
        out["closed"] = s.closed
        os.write(wfd, json.dumps(out).encode())
        os._exit(0)
    os.close(wfd)
    os.close(go_r)
    # The parent writes on after the fork: past the child's stale end of the log.
    new = list(range(next_key, next_key + 50))
    s.put_many(new, [b"after %d " % k * 40 for k in new])
    for k in new[:5]:
        s.put(k, b"after %d " % k * 40)
    if sync == "save":
        s.save()
    next_key += 50
    os.write(go_w, b"x")
    os.close(go_w)
    got = b""
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        got += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    child = json.loads(got) if got else {"op": "no report", "close": "?"}
    child["status"] = os.waitstatus_to_exitcode(status)
    report["children"][op] = child
    # Everything the parent wrote is still there, and it writes on.
    bad = [k for k in range(1000, next_key) if not same(k, b"after %d " % k * 40)]
    bad += [k for k in range(200) if not same(k, b"before %d " % k * 10)]
    report["parent"][op] = bad
    s.put(next_key + 100000, b"parent writes on")

# A child that just exits (finalisers and atexit run): it must not close the
# parent's files either.
pid = os.fork()
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
s.put(777777, b"after an exiting child")
s.verify()
report["size"] = os.path.getsize(s.data_path)
s.close()
print(json.dumps(report))
'''

ALL_OPS = ["put", "put_fast", "put_compressed", "setitem", "put_many", "put_many_numpy",
           "put_many_packed", "delete", "delitem", "pop", "save", "compact", "rebuild_index",
           "verify", "stats", "get", "getitem", "get_many", "contains", "len", "iter", "meta",
           "payload_range", "with", "async_put", "close"]


def _run(directory, sync, ops) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(directory), str(sync), ",".join(ops)],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _check(directory, report, ops) -> None:
    for op in ops:
        child = report["children"][op]
        assert child["status"] == 0, (op, child)
        assert child["close"] == "ok" and child["closed"], (op, child)
        if op != "close":
            assert child["op"].startswith("IndexClosedError:"), (op, child)
            assert "inherited across fork()" in child["op"], (op, child)
            assert "open" in child["op"] and str(directory.name) in child["op"], (op, child)
        assert report["parent"][op] == [], (op, report["parent"][op][:10])
    with PayloadStore(directory) as s:
        assert s.recovery is None or "cut_bytes" not in s.recovery, s.recovery
        s.verify()
        n = 1000 + 50 * len(ops)
        assert all(s.get(k) == b"after %d " % k * 40 for k in range(1000, n))
        assert all(s.get(k) == b"before %d " % k * 10 for k in range(200))
        assert s.get(777777) == b"after an exiting child"
        assert s.get(9000) is None and s.get(9101) is None and s.get(5000) is None
        assert len(s) == 200 + 50 * len(ops) + len(ops) + 1


@pytest.mark.parametrize("sync", ["save", "never", "5"])
def test_a_forked_child_neither_writes_nor_truncates_the_parents_store(tmp_path, sync):
    """Every write path refuses in the child with IndexClosedError naming the
    fix (open the store in the child), before touching a file; close() in the
    child closes only the child's copies: the parent's later records survive,
    the data file keeps its size, the store reopens with everything."""
    ops = ["put", "put_many_numpy", "put_many_packed", "delete", "save", "compact", "close"]
    report = _run(tmp_path / "s", sync, ops)
    _check(tmp_path / "s", report, ops)


def test_every_call_refuses_in_a_forked_child(tmp_path):
    """The whole API in the child: writes, maintenance and reads all raise the
    same clear error (the inherited index is disabled at fork, so no read can
    be served either), and the parent's store is untouched."""
    report = _run(tmp_path / "s", "never", ALL_OPS)
    _check(tmp_path / "s", report, ALL_OPS)


def test_a_child_forked_while_a_parent_thread_held_the_writer_lock(tmp_path):
    """The writer lock may be held by another parent thread at the fork (the
    sync thread saving, a put): the child's copy of it would stay held for
    ever, so its calls raise and its close returns instead of hanging."""
    script = r'''
import os, sys, threading, time
from diskhash import PayloadStore, IndexClosedError
s = PayloadStore(sys.argv[1])
s.put(1, b"one")
held, release = threading.Event(), threading.Event()
def hold():
    with s._writer.lock, s._life.maintenance:
        held.set()
        release.wait(30)
t = threading.Thread(target=hold)
t.start()
held.wait(30)
pid = os.fork()
if pid == 0:
    try:
        s.put(2, b"two")
        os._exit(3)
    except IndexClosedError:
        pass
    s.close()
    os._exit(0)
_, status = os.waitpid(pid, 0)
release.set()
t.join()
s.put(3, b"three")
s.close()
print(os.waitstatus_to_exitcode(status))
'''
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s")], capture_output=True,
                       text=True, env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0"]
    with PayloadStore(tmp_path / "s") as s:
        assert s.get(1) == b"one" and s.get(2) is None and s.get(3) == b"three"


IMPORT_AT_FORK = r'''
import faulthandler, importlib.machinery, os, sys, threading
from diskhash import PayloadStore, ShardedStore, IndexClosedError

name = sys.argv[2]
s = PayloadStore(os.path.join(sys.argv[1], "plain"))
s.put(1, b"one")
sh = ShardedStore(os.path.join(sys.argv[1], "sharded"), shards=2)
sh.put(1, b"one")
assert name not in sys.modules
entered, go = threading.Event(), threading.Event()


class Stall:
    """Holds the import of ``name`` (and its module lock) in the middle of
    executing the module until told to go on.  (Not in ``find_spec``: that
    runs under the global import lock, which ``os.fork()`` itself takes.)"""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        spec.loader = Loader(spec.loader)
        return spec


class Loader:
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        entered.set()
        go.wait()
        self.real.exec_module(module)


sys.meta_path.insert(0, Stall())
t = threading.Thread(target=__import__, args=(name,))
t.start()
entered.wait()
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(10, exit=True)
    calls = {
        "put_many": lambda: s.put_many([2, 3], [b"a", b"b"]),
        "compact": lambda: s.compact(),
        "sharded put_many": lambda: sh.put_many([2, 3], [b"a", b"b"]),
        "sharded get_many": lambda: sh.get_many([1, 2]),
        "sharded compact": lambda: sh.compact(),
    }
    for what, call in calls.items():
        try:
            call()
        except IndexClosedError:
            pass
        else:
            print(what, "did not refuse", flush=True)
            os._exit(3)
    os._exit(0)
go.set()
t.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
assert s.get(1) == b"one" and sh.get(1) == b"one"
s.put_many([2, 3], [b"a", b"b"])
s.compact()
print("parent", sorted(s), s.get(3))
'''


@pytest.mark.parametrize("module", ["diskhash._index.dtypes", "diskhash._store.compact"])
def test_a_child_forked_while_a_parent_thread_imported_refuses_without_hanging(tmp_path, module):
    """A parent thread was importing a module diskhash loads lazily (numpy via
    ``diskhash._index.dtypes`` on the first ``put_many``, ``diskhash._store.compact`` on the
    first ``compact``) when another thread forked: the child inherits that
    module's import lock held by a thread it does not have.  ``put_many``,
    ``compact`` and the sharded batch calls imported before checking that the
    store was inherited, so the child hung for ever instead of raising
    ``IndexClosedError`` (found by forking in a loop beside a ``put_many`` thread)."""
    r = subprocess.run([sys.executable, "-c", IMPORT_AT_FORK, str(tmp_path), module],
                       capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "child 0" in r.stdout, r.stdout + r.stderr[-3000:]
    assert "parent [1, 2, 3] b'b'" in r.stdout


FORK_DURING_CREATE = r'''
import os, sys, time
from diskhash import PayloadStore
from diskhash._fs import files as _files

s = PayloadStore(sys.argv[1])
s.put_many(range(100), [b"v%d" % i for i in range(100)])
real = _files.publish
forked = []


def publish(fd, tmp, path):
    """Another thread forks while the new index file is being created: the
    child inherits the created file's descriptor and lives on."""
    if not forked:
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        forked.append(pid)
    real(fd, tmp, path)


_files.publish = publish
s.compact()
print("compacted", len(s), s.get(7))
s.close()
with PayloadStore(sys.argv[1]) as s:
    print("reopened", len(s))
os.kill(forked[0], 9)
os.waitpid(forked[0], 0)
'''


def test_a_child_forked_while_an_index_file_was_created_keeps_no_lock(tmp_path):
    """A fork (from another thread) while ``compact()`` created its new index file:
    the child inherited the new file's descriptor, locked (``flock``) since its
    creation, and kept the lock after the parent closed its copy, so the
    parent's open of the file it had just published failed with
    ``IndexLockedError`` ("through another name of the same file") for as long
    as the child lived: ``compact()`` failed (found by forking in a loop beside
    a compacting thread).  The creator now lets go of that lock before it
    closes the descriptor."""
    r = subprocess.run([sys.executable, "-c", FORK_DURING_CREATE, str(tmp_path / "s")],
                       capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "compacted 100 b'v7'" in r.stdout and "reopened 100" in r.stdout
