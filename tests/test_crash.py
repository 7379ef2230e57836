"""Crash safety, proven by killing a writer with SIGKILL (see crash_harness.py)."""

from __future__ import annotations

import crash_harness
from conftest import subprocess_env

KILLS = 50


def test_sigkilled_writer_loses_nothing_it_saved(tmp_path):
    stats = crash_harness.run(tmp_path, KILLS, seed=20240601, env=subprocess_env(),
                               spec_check_every=2)
    assert stats.rounds == KILLS
    # The kills landed where they matter: after checkpoints, across grows.
    assert stats.checkpoints >= KILLS // 2, stats
    assert stats.grew >= KILLS // 6, stats
    assert stats.mid_grow >= 1, stats
