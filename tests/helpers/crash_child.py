"""A writer that the crash tests kill with SIGKILL: ``helpers/crash_child.py PATH SEED``.

It applies a deterministic sequence of operations (``operations(seed)``) to
the index at PATH and reports on stdout, one line each, written with
``os.write`` so nothing sits in a buffer when it dies:

  ``R``       ready (the index is open)
  ``L n``     a limit: no operation with number >= n starts before the next ``L`` line
  ``C n``     checkpoint: operations 0..n-1 are applied and ``save()`` has returned
  ``G n``     operation n is about to grow the table (a checkpoint was just saved)
  ``D``       every operation is done; the child then waits to be killed

The parent replays ``operations(seed)`` to know what the file may hold.
"""

from __future__ import annotations

import os
import random
import sys
import time

LIMIT_STEP = 256
MAX_OPS = 40_000


def operations(seed: int, count: int = MAX_OPS):
    """Yield ``(kind, key, record)``: kind ``"ins"`` (insert/overwrite), ``"del"`` or ``"cp"``.

    Keys come from a space that widens with the operation number (so the table
    grows several times) and spread over all 128 bits; every record field is
    random, so a torn record cannot pass for a real one.
    """
    rng = random.Random(seed)
    base = rng.getrandbits(128)
    next_cp = rng.randrange(200, 3000)
    for i in range(count):
        if i == next_cp:
            next_cp = i + rng.randrange(200, 3000)
            yield ("cp", 0, None)
            continue
        k = rng.randrange(2000 + i)
        key = (base + k * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128)
        if rng.random() < 0.75:
            rec = (key, rng.getrandbits(64), rng.getrandbits(32), rng.randrange(3), rng.getrandbits(32))
            yield ("ins", key, rec)
        else:
            yield ("del", key, None)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main(path: str, seed: int) -> None:
    from diskhash import DiskHashIndex

    idx = DiskHashIndex(path)          # never closed: the parent kills us
    _say("R")
    limit = 0
    for n, (kind, key, rec) in enumerate(operations(seed)):
        if n >= limit:
            limit = n + LIMIT_STEP
            _say(f"L {limit}")
        if kind == "cp":
            idx.save()
            _say(f"C {n + 1}")
        elif kind == "del":
            idx.delete(key)
        else:
            if len(idx) >= idx.capacity and key not in idx:
                idx.save()             # a checkpoint right before a grow
                _say(f"C {n}")
                _say(f"G {n}")
            idx.insert(key, rec)
    _say("D")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
