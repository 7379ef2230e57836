"""Crash safety, proven by killing a writer with SIGKILL (see helpers/crash_harness.py).

Every round checks the file the kill left (crash_harness.run_round); the full
run (``--run-slow``) kills 50 times and checks that the kills landed where
they matter, the default run kills a few times."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import crash_harness
from helpers.processes import subprocess_env
from helpers.records import record

from diskhash import DiskHashIndex

KILLED_BATCH = r"""
import sys
import numpy as np
from diskhash import DiskHashIndex, META_DTYPE, CorruptIndexError
idx = DiskHashIndex(sys.argv[1])
n = int(sys.argv[2])
keys = np.arange(10**6, 10**6 + n, dtype="u8")
metas = np.zeros(n, dtype=META_DTYPE)
metas["offset"] = keys * 3
print("go", flush=True)
while True:                      # each call writes part of the batch, meets a
    try:                         # bad tag, rolls back, raises; until killed
        idx.insert_many(keys, metas)
    except CorruptIndexError:
        pass
"""


KILLS = 50
SAMPLE_KILLS = 3


@pytest.mark.slow
def test_sigkilled_writer_loses_nothing_it_saved(tmp_path):
    stats = crash_harness.run(tmp_path, KILLS, seed=20240601, env=subprocess_env(),
                               spec_check_every=2)
    assert stats.rounds == KILLS
    # The kills landed where they matter: after checkpoints, across grows.
    assert stats.checkpoints >= KILLS // 2, stats
    assert stats.grew >= KILLS // 6, stats
    assert stats.mid_grow >= 1, stats


def test_a_few_sigkilled_writers_lose_nothing_they_saved(tmp_path):
    """The same rounds, fewer of them: where each kill lands is left to chance."""
    stats = crash_harness.run(tmp_path, SAMPLE_KILLS, seed=20240602, env=subprocess_env())
    assert stats.rounds == SAMPLE_KILLS


@pytest.mark.slow
def test_sigkill_during_insert_many_and_its_rollback_leaves_a_healable_table(tmp_path):
    """Killed mid-batch (or mid-rollback), insert_many leaves each key of the
    batch inserted or not -- as that many single inserts would -- and nothing
    else: the next writable open heals the count, and verify() finds only the
    planted damage.  (A kill is not all-or-nothing for a batch: docs/guide/batch.md.)

    A hostile pass over the index, its files and the CLI found this.
    """
    import random
    import time

    from diskhash import CorruptIndexError
    from diskhash._format.sochidx2 import SLOT_FIELDS, slot_offset

    path = tmp_path / "k.idx"
    with DiskHashIndex(path, capacity=300_000) as idx:
        for k in range(1000):
            idx.insert(k, record(k))
        slots = idx.num_slots
    tag_at = SLOT_FIELDS["tag"][0]
    fd = os.open(path, os.O_RDWR)
    try:
        planted = 0
        for s in range(slots // 3, slots, slots // 40):       # bad tags, met mid-batch
            if os.pread(fd, 1, slot_offset(s) + tag_at) == b"\0":
                os.pwrite(fd, b"\x07", slot_offset(s) + tag_at)
                planted += 1
    finally:
        os.close(fd)
    n = 200_000
    rng = random.Random(9)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", KILLED_BATCH, str(path), str(n)],
                                 stdout=subprocess.PIPE, text=True, env=subprocess_env())
        try:
            assert child.stdout.readline().strip() == "go"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            child.kill()
            child.wait(timeout=60)
            child.stdout.close()
        with DiskHashIndex(path) as idx:
            assert 1000 <= len(idx) <= 1000 + n
            with pytest.raises(CorruptIndexError) as info:
                idx.verify()
            assert len(info.value.defects) == planted, info.value.defects[:5]
            assert all("bad tag" in d for d in info.value.defects)
            for k in range(1000):
                assert idx[k] == record(k)
            found = 0
            for k in range(10**6, 10**6 + n):
                try:
                    meta = idx.get(k)
                except CorruptIndexError:   # its probe meets a planted bad tag, as
                    continue                # insert_many's did: never inserted
                if meta is not None:
                    assert meta.offset == k * 3
                    found += 1
            assert found == len(idx) - 1000
