"""One async object, several event loops: a call from a second loop never
hangs (``WrongEventLoopError``), and a facade per loop over one sync object
works from both."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.processes import subprocess_env

import diskhash
from diskhash import (
    WrongEventLoopError,
)

TWO_LOOPS = r"""
import os, sys, tempfile, threading
import anyio
from diskhash import AsyncDiskHashIndex, DiskHashIndex, PayloadMeta, WrongEventLoopError

second = sys.argv[1]
path = os.path.join(tempfile.mkdtemp(), "x.idx")
shared = AsyncDiskHashIndex(DiskHashIndex(path))
done, refused, failures = {}, {}, []
start = threading.Barrier(2)

async def hammer(name, base):
    ok = no = 0
    for i in range(400):
        k = base + i
        try:
            await shared.insert(k, PayloadMeta(k, 1, 2, 0, 3))   # grows: the writer lane
            await shared.delete(k)
            await shared.stats()
            ok += 1
        except WrongEventLoopError as exc:
            assert "another event loop" in str(exc), exc
            no += 1
    done[name], refused[name] = ok, no

def run(name, backend, base):
    try:
        start.wait()
        anyio.run(hammer, name, base, backend=backend)
    except BaseException as exc:
        failures.append(repr(exc))

threads = [threading.Thread(target=run, args=("first", "asyncio", 0)),
           threading.Thread(target=run, args=("second", second, 10**6))]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures
assert sum(done.values()) + sum(refused.values()) == 800, (done, refused)
assert sum(done.values()) > 0, (done, refused)

# One loop after the other is fine: the facade moves to the idle new loop.
async def one(backend_name):
    n = len(shared)         # a refused delete above may have left a key behind
    await shared.insert(7 * 10**9, PayloadMeta(7 * 10**9, 1, 2, 0, 3))
    assert (await shared.stats()).entries == n + 1
    assert await shared.pop(7 * 10**9) == (7 * 10**9, 1, 2, 0, 3)
for backend in ("asyncio", second, "asyncio"):
    anyio.run(one, backend, backend=backend)
shared.sync.close()
print("ok", done, refused)
"""



@pytest.mark.parametrize("second", ["asyncio", "trio"])
def test_one_async_index_on_two_event_loops_never_hangs(second, tmp_path):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    r = subprocess.run([sys.executable, "-c", TWO_LOOPS, second], check=False, capture_output=True,
                       text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok"), r.stdout


def test_a_facade_per_loop_over_one_sync_index_works_from_two_loops(tmp_path):
    """A hostile pass found this: the API keeps its contracts at its edges."""
    code = TWO_LOOPS.replace(
        "async def hammer(name, base):",
        "facades = {}\nasync def hammer(name, base):\n"
        "    facade = facades.setdefault(name, AsyncDiskHashIndex(shared.sync))",
    ).replace("await shared.insert(k,", "await facade.insert(k,").replace(
        "await shared.delete(k)", "await facade.delete(k)").replace(
        "await shared.stats()\n            ok", "await facade.stats()\n            ok")
    code = code.replace('print("ok", done, refused)',
                        'assert refused == {"first": 0, "second": 0}, refused\nprint("ok", done)')
    r = subprocess.run([sys.executable, "-c", code, "trio"], check=False, capture_output=True,
                       text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_wrong_event_loop_error_is_a_diskhash_error_and_a_runtime_error():
    """A hostile pass found this: the API keeps its contracts at its edges."""
    assert issubclass(WrongEventLoopError, diskhash.DiskHashError)
    assert issubclass(WrongEventLoopError, RuntimeError)


STORE_TWO_LOOPS = """
import sys, threading
import anyio
from diskhash import AsyncPayloadStore, PayloadStore

store = PayloadStore(sys.argv[1])
astore = AsyncPayloadStore(store)
errors = []

def loop_thread(base, backend, options):
    async def main():
        for i in range(300):
            await astore.put(base + i, b"%d" % (base + i))
            assert await astore.get(base + i) == b"%d" % (base + i)
            if i % 50 == 0:
                await astore.put(base + i, b"x" * 70000)         # a worker-thread put
                await astore.save()
                await astore.put(base + i, b"%d" % (base + i))
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=loop_thread, args=a) for a in
           ((0, "asyncio", {}), (10_000, "trio", {}), (20_000, "asyncio", {"use_uvloop": True}))]
for t in threads:
    t.start()
for t in threads:
    t.join()

async def count():
    return len([k async for k in astore])   # (iteration while others write raises RuntimeError)

assert anyio.run(count) == 900
store.close()
with PayloadStore(sys.argv[1], readonly=True) as r:
    assert len(r) == 900 and r.get(20_050) == b"20050"
print("ok" if not errors else errors)
"""


def test_two_event_loops_share_one_async_store(tmp_path):
    """Threads with their own event loops (asyncio, trio, uvloop) share one AsyncPayloadStore.

    A hostile pass over PayloadStore found this.
    """
    import subprocess
    import sys

    from helpers.processes import subprocess_env
    pytest.importorskip("uvloop")
    out = subprocess.run([sys.executable, "-c", STORE_TWO_LOOPS, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=120, env=subprocess_env())
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
