"""A busy event loop must not starve the worker threads it waits for.

Regression: with readers spinning on inline gets, a grow's worker thread
waited 10-30 s per grow for the GIL (the loop drops and retakes the GIL at
every selector poll, so CPython never forces a switch).  The inline paths now
hand the GIL over while a worker-thread call is in flight
(``diskhash/_threads.py``).  Each case runs in a subprocess with a timeout:
before the fix a case took 60-100 s, after it about a second.  The starving
shows on an otherwise idle machine only: on a busy one the kernel preempts
the loop thread now and then for longer than the switch interval, and
CPython's forced switch lets the worker in.  So run this file alone
(``pytest -n 0 tests/async/test_gil_handoff.py``) to see it guard.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest
from helpers.processes import subprocess_env

from diskhash import _threads

SCRIPT = textwrap.dedent("""
    import sys, time, anyio
    from diskhash import AsyncDiskHashIndex, AsyncPayloadStore, PayloadMeta

    kind, backend, directory = sys.argv[1:4]
    N = 40000

    def key(i):
        return (i * 0x9E3779B97F4A7C15 + 1) % 2**128

    async def main():
        if kind == "index":
            store = await AsyncDiskHashIndex.open(directory + "/t.idx")
            async def write(i):
                await store.insert(key(i), PayloadMeta(key(i), i, i % 1000, 0, i % 1000))
            def expect(i, got):
                return got == PayloadMeta(key(i), i, i % 1000, 0, i % 1000)
        else:
            store = await AsyncPayloadStore.open(directory + "/s")
            async def write(i):
                await store.put(key(i), i.to_bytes(4, "little"))
            def expect(i, got):
                return got == i.to_bytes(4, "little")
        loaded = 0
        done = anyio.Event()
        wrong = []
        async def reader():
            n = 0
            while not done.is_set():
                if loaded:
                    i = (n * 7919) % loaded
                    if not expect(i, await store.get(key(i))):
                        wrong.append(i)
                n += 1
                if n % 100 == 0:
                    await anyio.sleep(0)
        async def heartbeat():                # a timer, as servers have: the loop polls with a timeout
            while not done.is_set():
                await anyio.sleep(0.001)
        async def loader():
            nonlocal loaded
            for i in range(N):
                await write(i)
                loaded = i + 1
                if i % 64 == 0:
                    await anyio.sleep(0)
            done.set()
        t = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(heartbeat)
            tg.start_soon(loader)
        took = time.perf_counter() - t
        await store.close()
        from diskhash import _threads
        print(f"loaded {N} in {took:.1f} s; wrong {len(wrong)}; pending {_threads.pending}")

    anyio.run(main, backend=backend)
""")


@pytest.mark.parametrize("kind", ["index", "store"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_grows_finish_while_readers_spin_on_inline_gets(tmp_path, kind, backend):
    r = subprocess.run([sys.executable, "-c", SCRIPT, kind, backend, str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("wrong 0; pending 0"), r.stdout


async def _count_during(fn):
    seen = []

    def work():
        seen.append(_threads.pending)
        return fn()

    return await _threads.run_sync(work), seen


@pytest.mark.anyio
async def test_pending_counts_thread_calls_and_returns_to_zero():
    assert _threads.pending == 0
    result, seen = await _count_during(lambda: 42)
    assert (result, seen, _threads.pending) == (42, [1], 0)

    def boom():
        raise LookupError("from the worker")

    with pytest.raises(LookupError, match="from the worker"):
        await _count_during(boom)
    assert _threads.pending == 0

    started = anyio.Event()
    release = anyio.Event()

    def slow():
        anyio.from_thread.run_sync(started.set)
        anyio.from_thread.run(release.wait)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_threads.run_sync, slow)
        await started.wait()
        assert _threads.pending == 1
        tg.cancel_scope.cancel()        # the thread call is shielded: it runs to its end
        release.set()
    assert _threads.pending == 0


def test_handoff_sleeps_at_most_once_per_interval(monkeypatch):
    sleeps = []
    now = [100.0]
    monkeypatch.setattr(_threads.time, "sleep", sleeps.append)
    monkeypatch.setattr(_threads.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(_threads, "_next_handoff", 0.0)
    for _ in range(5):
        _threads.handoff()
    assert sleeps == [0]
    now[0] += _threads.HANDOFF_INTERVAL
    _threads.handoff()
    assert sleeps == [0, 0]
