"""A cold ``get``: a frame that crosses a page boundary asked for in one request.

Frames lie back to back in the data file, so a 1 KiB record crosses a page
boundary about a quarter of the time; read from the device through the
(MADV_RANDOM) map, that is two faults waited for in turn.  While the reader
sees the map read cold (``MapReader.cold``, from timed gets) it asks for
every page of such a frame in one ``madvise(MADV_WILLNEED)`` first.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import random
import subprocess
import sys
import textwrap

import pytest

from diskhash import PayloadStore
from diskhash._format import payload as fmt
from diskhash._store import read as _store_read

PAGE = mmap.PAGESIZE
COLD_SAMPLE = 8     # read.pyx: one found record in this many is timed
COLD_HOLD = 4       # read.pyx: this many fast timed gets in a row end the cold regime


def _pages(meta) -> int:
    """How many pages the frame of ``meta`` (a PayloadMeta) spans."""
    start = meta.offset - fmt.FRAME_SIZE
    return (meta.offset + meta.length - 1) // PAGE - start // PAGE + 1


def _fill(store: PayloadStore, n: int, size: int = 1000) -> "dict[int, bytes]":
    rng = random.Random(19)
    model = {}
    for key in range(1, n + 1):
        model[key] = rng.randbytes(size)
    store.put_many(list(model), list(model.values()))
    return model


def _split(store: PayloadStore, model: "dict[int, bytes]") -> "tuple[list[int], list[int]]":
    """The keys whose frame spans several pages, and those within one."""
    across = [k for k in model if _pages(store.index.get(k)) > 1]
    within = [k for k in model if _pages(store.index.get(k)) == 1]
    assert across and within
    return across, within


@pytest.mark.parametrize("verify", [True, False])
def test_a_frame_across_pages_is_requested_once_when_cold(tmp_path, verify):
    with PayloadStore(tmp_path / "s") as s:
        model = _fill(s, 64)
        across, within = _split(s, model)
        r = s._writer.gen.reader
        r.cold_ns = -1                   # (every timed get reads cold: the regime stays)
        r.cold = True
        for k in across:
            assert r.get(k, verify, 1 << 16) == model[k]
        assert r.frame_requests == len(across)
        for k in within:
            assert r.get(k, verify, 1 << 16) == model[k]
        assert r.frame_requests == len(across)          # one page: nothing to ask for
        assert r.get(10**6, verify, 1 << 16) is None    # absent: nothing either
        assert r.frame_requests == len(across)
        assert s.get(across[0]) == model[across[0]]     # the store's get goes through it


def test_a_warm_reader_makes_no_request(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        model = _fill(s, 64)
        across, _within = _split(s, model)
        r = s._writer.gen.reader
        assert r.cold is False and r.cold_ns == _store_read.COLD_NS
        # (the pages are in memory; a timed get preempted on a loaded machine
        # could still take over COLD_NS, so the test does not rely on the clock)
        r.cold_ns = 1 << 62
        for k in across:
            assert s.get(k) == model[k]
        assert r.cold is False
        assert r.frame_requests == 0


def test_a_big_frame_spanning_many_pages(tmp_path):
    """Up to BIG_READ stored bytes come through the map: all its pages in one request."""
    with PayloadStore(tmp_path / "s") as s:
        big = random.Random(3).randbytes(60_000)
        s.put(1, b"x" * 100)
        s.put(2, big)
        assert _pages(s.index.get(2)) >= 15
        r = s._writer.gen.reader
        r.cold_ns = -1
        r.cold = True
        assert r.get(2, True, 1 << 16) == big
        assert r.frame_requests == 1


def test_timed_gets_set_and_clear_cold(tmp_path):
    """One found record in COLD_SAMPLE is timed: one slower than ``cold_ns``
    sets ``cold``; COLD_HOLD fast ones in a row clear it."""
    with PayloadStore(tmp_path / "s") as s:
        model = _fill(s, 8)
        r = s._writer.gen.reader
        keys = list(model)
        r.cold_ns = -1                   # every timed get counts as slow
        for k in keys[:COLD_SAMPLE - 1]:
            assert r.get(k, True, 1 << 16) == model[k]
        assert r.cold is False           # no get timed yet
        assert r.get(10**6, True, 1 << 16) is None
        assert r.cold is False           # absent keys are not timed
        assert r.get(keys[-1], True, 1 << 16) == model[keys[-1]]
        assert r.cold is True
        r.cold_ns = 1 << 62              # every timed get counts as fast
        for i in range(COLD_SAMPLE * COLD_HOLD - 1):
            assert r.get(keys[i % 8], True, 1 << 16) == model[keys[i % 8]]
        assert r.cold is True            # COLD_HOLD - 1 fast timed gets so far
        assert r.get(keys[0], True, 1 << 16) == model[keys[0]]
        assert r.cold is False
        r.cold_ns = -1                   # one slow timed get sets it again
        for i in range(COLD_SAMPLE):
            r.get(keys[i], True, 1 << 16)
        assert r.cold is True


def test_a_released_reader_makes_no_request(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        model = _fill(s, 16)
        across, _within = _split(s, model)
        r = s._writer.gen.reader
        r.cold = True
        r.release()
        assert r.get(across[0], True, 1 << 16) == _store_read.FALLBACK
        assert r.frame_requests == 0


_CHILD = textwrap.dedent("""
    import hashlib, json, os, sys
    from diskhash import PayloadStore

    def counters():
        with open("/proc/self/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        with open("/proc/self/stat") as f:
            majflt = int(f.read().rsplit(")", 1)[1].split()[9])
        return int(io["read_bytes"]), majflt

    path, key, cold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    s = PayloadStore(path, readonly=True, resident_index=True)
    g = s._writer.gen
    g.remap()                        # (mapped, nothing of it touched yet)
    os.posix_fadvise(g.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    r = g.reader
    r.cold_ns = -1
    r.cold = cold
    b0, f0 = counters()
    got = r.get(key, True, 1 << 16)
    b1, f1 = counters()
    print(json.dumps({"sha": hashlib.sha256(got).hexdigest(),
                      "read_bytes": b1 - b0, "majflt": f1 - f0, "requests": r.frame_requests}))
""")


@pytest.mark.slow
def test_a_cold_frame_across_pages_is_read_before_it_is_touched(tmp_path):
    """From the device: with ``cold`` the frame's two pages are read by the
    madvise, so touching them is no major fault; without, each page is one."""
    path = tmp_path / "s"
    with PayloadStore(path) as s:
        model = _fill(s, 256)
        across, _within = _split(s, model)
        key = next(k for k in across if _pages(s.index.get(k)) == 2)
    seen = {}
    for cold in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(key), cold],
                              capture_output=True, text=True, timeout=60, check=True)
        seen[cold] = json.loads(done.stdout)
        assert seen[cold]["sha"] == hashlib.sha256(model[key]).hexdigest()
    if seen["0"]["read_bytes"] == 0:
        pytest.skip("the data file's pages were not read from a device here (tmpfs?)")
    assert seen["0"]["majflt"] == 2 and seen["0"]["requests"] == 0
    assert seen["1"]["majflt"] == 0 and seen["1"]["requests"] == 1
    assert seen["1"]["read_bytes"] >= 2 * PAGE
