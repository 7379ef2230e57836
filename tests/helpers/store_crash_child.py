"""Child process of the PayloadStore SIGKILL tests (tests/helpers/store_crash_model.py).

``python helpers/store_crash_child.py DIRECTORY JOURNAL SEED MODE`` opens the store
and does random operations until it is killed, writing each operation to
JOURNAL *before* doing it and ``S`` *after* each ``save()`` returns, one
``os.write`` per line, so the parent knows what might have happened.
MODE: ``mixed``, ``compact`` (compacts often), ``rebuild`` (rebuilds often)
or ``plain`` (no compression: the compiled write paths, ``put_frame`` for a
put and ``encode_frames`` for a put_many of 64 records or more).
"""

from __future__ import annotations

import os
import random
import sys

from diskhash import Compression, PayloadStore

KEYS = 400


def payload(key: int, version: int) -> bytes:
    """The bytes of version ``version`` of ``key``: some compressible, some random."""
    rng = random.Random(key * 1_000_003 + version)
    n = rng.choice((0, 1, 17, 200, 1000, 3000, 9000))
    if version % 2:
        return rng.randbytes(n)
    word = b"%d:%d " % (key, version)
    return (word * (n // len(word) + 1))[:n]


def main() -> None:
    directory, journal, seed, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    jfd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(line: str) -> None:
        os.write(jfd, (line + "\n").encode())

    version = seed * 1_000_000
    plain = mode == "plain"
    store = PayloadStore(directory, timeout=10.0,
                         compression=Compression.NONE if plain else Compression.LZ4)
    log("O")                                   # opened (recovery done)
    while True:
        r = rng.random()
        if r < 0.45:
            version += 1
            k = rng.randrange(KEYS)
            log(f"P {k} {version}")
            if plain:
                store.put(k, payload(k, version))
            else:
                store.put(k, payload(k, version), compression=Compression(version % 3))
        elif r < 0.60:
            items = []
            n = rng.choice((64, 300, 5000)) if plain else rng.randrange(1, 300)
            for _ in range(n):
                version += 1
                items.append((rng.randrange(KEYS), version))
            log("M " + ",".join(f"{k}:{v}" for k, v in items))
            store.put_many([k for k, _ in items], [payload(k, v) for k, v in items])
        elif r < 0.75:
            k = rng.randrange(KEYS)
            log(f"D {k}")
            store.delete(k)
        elif r < 0.85:
            store.save()
            log("S")
        elif r < 0.85 + (0.10 if mode == "compact" else 0.01):
            log("C")
            store.compact()
        elif r < 0.85 + (0.10 if mode == "rebuild" else 0.01) + (0.10 if mode == "compact" else 0.01):
            log("R")
            store.rebuild_index()


if __name__ == "__main__":
    main()
