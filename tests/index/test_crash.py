"""Crash safety, proven by killing a writer with SIGKILL (see crash_harness.py).

Every round checks the file the kill left (crash_harness.run_round); the full
run (``--run-slow``) kills 50 times and checks that the kills landed where
they matter, the default run kills a few times."""

from __future__ import annotations

import pytest
from helpers import crash_harness
from helpers.processes import subprocess_env

KILLS = 50
SAMPLE_KILLS = 6


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
