"""SIGKILL loop for the PayloadStore: kill a writer at random moments, then check.

The property (issue 11, requirement 4): every put or delete before the last
completed ``save()`` is there byte-exact; every later one is there
byte-exact or absent (a later delete: deleted, or an earlier value); no key
ever holds bytes that were never put.  Each round: start the child, kill it
after a random delay, open the store writable (recovery), compare every key
with what the journal allows, ``verify()``, close cleanly; the checked state
is the next round's starting point.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from diskhash import PayloadStore
from helpers.store_crash_child import payload

HERE = Path(__file__).resolve().parent


@dataclass
class Stats:
    rounds: int = 0
    killed_mid_compact: int = 0
    killed_mid_rebuild: int = 0
    killed_mid_put_many: int = 0
    killed_before_open: int = 0
    later_ops_applied: int = 0
    later_ops_absent: int = 0
    recoveries: dict = field(default_factory=dict)


def _parse(journal: Path) -> list[tuple]:
    ops: list[tuple] = []
    data = journal.read_bytes().decode() if journal.exists() else ""
    lines = data.split("\n")
    for line in lines[:-1]:             # the last piece has no newline: torn or empty
        if not line:
            continue
        kind = line[0]
        if kind == "P":
            _, k, v = line.split()
            ops.append(("P", int(k), int(v)))
        elif kind == "M":
            items = [tuple(int(x) for x in it.split(":")) for it in line[2:].split(",")]
            ops.append(("M", items))
        elif kind == "D":
            ops.append(("D", int(line.split()[1])))
        else:
            ops.append((kind,))
    return ops


def allowed_states(base: dict[int, int | None], ops: list[tuple]) -> dict[int, set]:
    """Per key, the versions (None: absent) a correct store may hold after ``ops``."""
    last_save = max((i for i, op in enumerate(ops) if op[0] == "S"), default=-1)
    state = dict(base)
    allowed: dict[int, set] = {}
    for i, op in enumerate(ops):
        changes: list[tuple[int, int | None]] = []
        if op[0] == "P":
            changes = [(op[1], op[2])]
        elif op[0] == "M":
            changes = [(k, v) for k, v in op[1]]
        elif op[0] == "D":
            changes = [(op[1], None)]
        for k, v in changes:
            state[k] = v
            if i > last_save:
                allowed.setdefault(k, set()).add(v)
        if i == last_save:
            allowed = {}
            saved = dict(state)
    if last_save < 0:
        saved = dict(base)
    result = {k: {v} for k, v in saved.items()}
    for k, vs in allowed.items():
        result.setdefault(k, {None}).update(vs)
    return result


def check(directory: Path, base: dict[int, int | None], ops: list[tuple],
          stats: Stats) -> dict[int, int | None]:
    """Open (recovering), compare with the journal, verify, close; returns the state found."""
    allowed = allowed_states(base, ops)
    latest = dict(base)
    for op in ops:
        if op[0] == "P":
            latest[op[1]] = op[2]
        elif op[0] == "M":
            latest.update(dict(op[1]))
        elif op[0] == "D":
            latest[op[1]] = None
    found: dict[int, int | None] = {}
    with PayloadStore(directory, timeout=10.0) as store:
        if store.recovery:
            for key, value in store.recovery._asdict().items():
                if value:
                    stats.recoveries[key] = stats.recoveries.get(key, 0) + 1
        store.verify()
        for k in set(allowed) | set(store):
            got = store.get(k)
            ok = allowed.get(k, {None})
            match = None
            for v in ok:
                if (got is None and v is None) or (v is not None and got == payload(k, v)):
                    match = (v,)
                    break
            if match is None:
                raise AssertionError(
                    f"key {k}: store holds {None if got is None else got[:40]!r} "
                    f"({'absent' if got is None else len(got)}), allowed versions {sorted(ok, key=str)}")
            found[k] = match[0]
            if len(ok) > 1:         # the key had operations after the last save
                if match[0] == latest.get(k, base.get(k)):
                    stats.later_ops_applied += 1
                else:
                    stats.later_ops_absent += 1
        assert len(store) == sum(1 for v in found.values() if v is not None)
    return found


def run(directory: Path, kills: int, seed: int, env: dict, max_delay: float = 0.8,
        modes: tuple = ("mixed", "compact", "rebuild")) -> Stats:
    rng = random.Random(seed)
    stats = Stats()
    base: dict[int, int | None] = {}
    child = HERE / "store_crash_child.py"
    for rnd in range(kills):
        journal = directory.parent / f"journal-{rnd}.txt"
        mode = modes[rnd % len(modes)]
        proc = subprocess.Popen([sys.executable, str(child), str(directory), str(journal),
                                 str(rnd + 1), mode], env=env, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, max_delay))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"child exited {proc.returncode} before the kill:\n{err.decode()}")
        ops = _parse(journal)
        if not ops:
            stats.killed_before_open += 1
        elif ops[-1][0] == "C":
            stats.killed_mid_compact += 1
        elif ops[-1][0] == "R":
            stats.killed_mid_rebuild += 1
        elif ops[-1][0] == "M":
            stats.killed_mid_put_many += 1
        ops = [op for op in ops if op[0] != "O"]
        base = check(directory, base, ops, stats)
        journal.unlink(missing_ok=True)
        stats.rounds += 1
    return stats


if __name__ == "__main__":  # manual runs, from tests/: python -m helpers.store_crash_model ROUNDS
    import tempfile

    from helpers.processes import subprocess_env

    with tempfile.TemporaryDirectory() as tmp:
        s = run(Path(tmp) / "store", int(sys.argv[1]) if len(sys.argv) > 1 else 50, 1, subprocess_env())
        print(s)
