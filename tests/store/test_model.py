"""PayloadStore against a dict: random puts, deletes, overwrites, saves and
reopens, with payloads around the read-ahead sizes."""

from __future__ import annotations

import pytest

_SIZES = (0, 1, 7, 100, 4095, 4096, 4097, 16 * 1024, 65535, 65536, 65537)   # BIG_READ is 64 KiB



def _model_run(directory, seed: int, steps: int) -> None:
    """Random puts (compiled and Python paths), put_manys (compiled at 64+ records),
    deletes, gets and get_manys (list, uint64 array, KEY_DTYPE, strided array),
    compact, rebuild_index, reopen (writable and read-only), each read compared
    with a dict; payloads at the BIG_READ boundary, 4 KiB, empty, compressible
    or not."""
    import random

    import numpy as np

    from diskhash import KEY_DTYPE, Compression, PayloadStore

    rng = random.Random(seed)
    comp = rng.choice([Compression.NONE, Compression.LZ4, Compression.ZSTD])
    keyspace = [rng.getrandbits(128) if i % 3 == 0 else rng.randrange(1000) for i in range(200)]
    model: dict[int, bytes] = {}

    def payload() -> bytes:
        n = rng.choice(_SIZES)
        return rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(4)]) * n

    def check(store, keys) -> None:
        want = [model.get(k) for k in keys]
        assert store.get_many(keys) == want
        arr = np.empty(len(keys), dtype=KEY_DTYPE)
        arr["lo"] = [k & (2**64 - 1) for k in keys]
        arr["hi"] = [k >> 64 for k in keys]
        assert store.get_many(arr) == want
        assert store.get_many(np.repeat(arr, 2)[::2]) == want
        small = [k for k in keys if k < 2**64]
        assert store.get_many(np.array(small, dtype=np.uint64)) == [model.get(k) for k in small]
        assert [store.get(k) for k in keys] == want

    s = PayloadStore(directory, compression=comp)
    try:
        for _step in range(steps):
            op = rng.random()
            if op < 0.35:
                k, v = rng.choice(keyspace), payload()
                c = rng.choice([None, None, Compression.NONE, Compression.LZ4, Compression.ZSTD])
                s.put(k, v if rng.random() < 0.7 else bytearray(v), compression=c)
                model[k] = v
            elif op < 0.45:
                n = rng.choice([1, 63, 64, 65, 200])
                ks = [rng.choice(keyspace) for _ in range(n)]
                vs = [payload() for _ in range(n)]
                s.put_many(ks, vs, compression=rng.choice([None, Compression.NONE, Compression.LZ4]))
                model.update(zip(ks, vs))
            elif op < 0.55:
                k = rng.choice(keyspace)
                assert s.delete(k) == (k in model)
                model.pop(k, None)
            elif op < 0.75:
                check(s, [rng.choice(keyspace) for _ in range(rng.choice([1, 17, 100]))])
            elif op < 0.80:
                s.compact()
            elif op < 0.84:
                s.rebuild_index()
            elif op < 0.90:
                s.close()
                s = PayloadStore(directory, compression=comp)
            elif op < 0.93:
                s.close()
                with PayloadStore(directory, readonly=True) as ro:
                    check(ro, keyspace)
                s = PayloadStore(directory, compression=comp)
            else:
                s.save()
        check(s, keyspace)
        assert len(s) == len(model)
        s.verify()
    finally:
        s.close()



@pytest.mark.parametrize("seed", range(3))
def test_store_matches_a_dict(tmp_path, seed):
    """A hostile pass over the compiled store paths found this."""
    _model_run(tmp_path / "s", seed, 120)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 40))
def test_store_matches_a_dict_long(tmp_path, seed):
    """A hostile pass over the compiled store paths found this."""
    _model_run(tmp_path / "s", seed, 500)
