"""Kill a writer (crash_child.py) with SIGKILL and check what the file kept.

Shared by tests/index/test_crash.py (a bounded number of kills) and
benchmarks/crash_stress.py (many more).  One *round*: start a child on the
index file, kill it at a random moment (or right as it starts a grow), then

* a read-only open works and ``len()`` equals the occupied slots (it recounts);
* a writable open works (it heals), ``verify()`` passes, the file is valid for
  the pure-Python spec reader;
* every key untouched since the last completed checkpoint holds exactly its
  checkpointed record (or is absent if it was absent then); a key touched
  after the checkpoint holds its checkpointed record or a record it was given
  later (or is absent if it was absent then or deleted later); no other key
  exists.

The state after a round is the next round's starting state, so crashes pile
up on one file the way they would in production.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diskhash import DiskHashIndex
from helpers import crash_child
from helpers.spec_model import HEADER, SLOT_FIELD, assert_valid, header_u64, slot_offset

CHILD = Path(__file__).with_name("crash_child.py")


@dataclass
class Stats:
    rounds: int = 0
    mid_grow: int = 0          # kills that left a grow's temporary file behind
    grew: int = 0              # rounds whose file has more slots than at the start
    healed: int = 0            # writable opens that fixed the count or rebuilt the table
    checkpoints: int = 0       # rounds killed after at least one checkpoint
    touched_keys: int = 0      # keys whose value was undetermined (touched after the checkpoint)
    seconds: float = 0.0
    slots: list[int] = field(default_factory=list)


def _read_lines(stream, lines: list[str], ready: threading.Event, grow_seen: threading.Event) -> None:
    """Collect the child's lines; ``ready`` is set at its "R" (or when it dies first)."""
    try:
        for raw in stream:
            line = raw.decode().strip()
            lines.append(line)
            if line == "R":
                ready.set()
            elif line.startswith("G "):
                grow_seen.set()
    finally:
        ready.set()


def run_round(path: Path, seed: int, env: dict, rng: random.Random, stats: Stats,
              start: dict[int, tuple], spec_check: bool = True) -> dict[int, tuple]:
    """One child, one kill, every check; returns the entries the file now holds."""
    t0 = time.monotonic()
    slots_before = _num_slots(path)
    proc = subprocess.Popen([sys.executable, str(CHILD), str(path), str(seed)],
                            stdout=subprocess.PIPE, env=env)
    lines: list[str] = []
    ready, grow_seen = threading.Event(), threading.Event()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines, ready, grow_seen))
    reader.start()
    try:
        ready.wait(20)
        assert "R" in lines, f"child did not start (exit {proc.poll()})"
        if rng.random() < 0.3:
            # Kill as soon as a grow starts (right after its checkpoint), or
            # a little later, inside the grow.
            grow_seen.wait(3.0)
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.004)
        else:
            time.sleep(rng.random() * 0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}: {lines[-3:]}"

    checkpoint = max((int(x[2:]) for x in lines if x.startswith("C ")), default=0)
    limit = max((int(x[2:]) for x in lines if x.startswith("L ")), default=0)
    stats.rounds += 1
    stats.checkpoints += checkpoint > 0
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.grow-")]
    stats.mid_grow += bool(leftovers)

    # The model: the state at the checkpoint, and every value a key took later.
    saved = dict(start)
    later: dict[int, list] = {}
    for n, (kind, key, rec) in enumerate(crash_child.operations(seed, limit)):
        if kind == "cp":
            continue
        value = rec if kind == "ins" else None
        if n < checkpoint:
            if value is None:
                saved.pop(key, None)
            else:
                saved[key] = value
        else:
            later.setdefault(key, []).append(value)
    stats.touched_keys += len(later)

    # A read-only open of a crashed writer's file works, and len() recounts.
    with DiskHashIndex(path, readonly=True) as idx:
        occupied = _occupied(path)
        assert len(idx) == occupied, (len(idx), occupied)

    with DiskHashIndex(path) as idx:           # heals
        stats.healed += idx.recovery is not None
        idx.verify()
        got = {k: tuple(v) for k, v in idx.items()}
        assert len(idx) == len(got)
    if spec_check:                             # the pure-Python reader is slow
        assert assert_valid(path.read_bytes()) == got

    for key in saved.keys() | later.keys():
        allowed = [saved.get(key)] + later.get(key, [])
        assert got.get(key) in allowed, (
            f"key {key}: found {got.get(key)}, allowed {allowed} "
            f"(checkpoint {checkpoint}, limit {limit}, seed {seed})")
    extra = got.keys() - saved.keys() - later.keys()
    assert not extra, f"keys never inserted: {sorted(extra)[:5]}"
    untouched_missing = [k for k in saved if k not in later and got.get(k) != saved[k]]
    assert not untouched_missing
    after = _num_slots(path)
    stats.grew += after > slots_before
    stats.slots.append(after)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left"
    stats.seconds += time.monotonic() - t0
    return got


def _num_slots(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return header_u64(f.read(HEADER.size), "num_slots")


def _occupied(path: Path) -> int:
    data = path.read_bytes()
    n = _num_slots(path)
    return sum(1 for i in range(n) if data[slot_offset(i) + SLOT_FIELD["tag"]] == 1)


def run(directory: Path, kills: int, seed: int, env: dict, rounds_per_file: int = 3,
        spec_check_every: int = 1, progress=None) -> Stats:
    """``kills`` rounds; a fresh file every ``rounds_per_file`` rounds so grows keep happening."""
    rng = random.Random(seed)
    stats = Stats()
    state: dict[int, tuple] = {}
    path = directory / "crash.idx"
    for r in range(kills):
        if r % rounds_per_file == 0:
            for p in directory.iterdir():
                if p.name.startswith("crash.idx") or p.name.startswith(".crash.idx"):
                    os.unlink(p)
            path = directory / "crash.idx"
            state = {}
        state = run_round(path, rng.getrandbits(64), env, rng, stats, state,
                          spec_check=r % spec_check_every == 0)
        if progress is not None:
            progress(r + 1, stats)
    return stats
