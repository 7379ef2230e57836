"""Crafted inputs for the index's contract tests: a table holding one long run,
and a script (run in a child, see ``helpers.processes.run_child``) that calls
every callable of every extension type with a foreign ``self``."""

from __future__ import annotations

import struct

HEADER = struct.Struct("<8sI4xQQQ24x")
M64 = (1 << 64) - 1


def _mix(np, x):
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def long_run_table(path, slots: int, entries: int, homes: int, seed: int = 0x1234567) -> None:
    """A valid table whose ``entries`` keys all hash to the first ``homes``
    slots, so they form one run from slot 0 with lookups up to ``entries``
    slots long (the case that made a per-slot backward search quadratic).

    Keys are < 2**64 (hi = 0), so the home is ``mix(lo ^ seed) ^ mix(seed * phi)``.
    """
    import numpy as np

    rng = np.random.default_rng(7)
    hi_part = _mix(np, np.array([(seed * 0x9E3779B97F4A7C15) & M64], dtype=np.uint64))[0]
    found, total = [], 0
    with np.errstate(over="ignore"):
        while total < entries:
            lo = rng.integers(1, 2**63, size=1 << 20, dtype=np.uint64)
            h = _mix(np, lo ^ np.uint64(seed)) ^ hi_part
            home = h & np.uint64(slots - 1)
            keep = home < np.uint64(homes)
            found.append((lo[keep], home[keep]))
            total += int(keep.sum())
    lo = np.concatenate([f[0] for f in found])
    home = np.concatenate([f[1] for f in found]).astype(np.int64)
    lo, idx = np.unique(lo, return_index=True)
    home = home[idx]
    order = np.argsort(home, kind="stable")[:entries]
    lo, home = lo[order], home[order]
    # Linear probing in home order: each key goes to the first free slot at
    # or after its home, i.e. max(home, previous slot + 1).
    n = np.arange(len(lo), dtype=np.int64)
    pos = np.maximum.accumulate(home - n) + n
    assert pos[-1] < slots - 1
    slot = np.dtype([("tag", "u1"), ("compression", "u1"), ("r0", "<u2"), ("length", "<u4"),
                     ("ulen", "<u4"), ("r1", "<u4"), ("lo", "<u8"), ("hi", "<u8"), ("offset", "<u8")])
    table = np.zeros(slots, dtype=slot)
    table["tag"][pos] = 1
    table["lo"][pos] = lo
    table["offset"][pos] = lo >> np.uint64(8)
    table["length"][pos] = 5
    with open(path, "wb") as f:
        f.write(HEADER.pack(b"SOCHIDX2", 1, slots, len(lo), seed))
        f.write(table.tobytes())


# Calls every callable of every extension type of the compiled modules with
# a foreign ``self``; prints one line per failure and "checked N".
FOREIGN_SELF = r"""
import importlib, sys
modules = [importlib.import_module(m) for m in
           ("diskhash._index.table", "diskhash._index.convert", "diskhash._format.sochidx2", "diskhash._index.batch")]
import diskhash, tempfile, os
types = set()
for mod in modules:
    for value in vars(mod).values():
        if isinstance(value, type) and value.__module__ == mod.__name__:
            types.add(value)
# Types the modules create without naming them: iterators, chunks.
path = os.path.join(tempfile.mkdtemp(), "x.idx")
idx = diskhash.DiskHashIndex(path)
idx.insert(1, (1, 2, 3, 0, 4))
it = iter(idx)
types.add(type(it))
types.add(type(modules[0].iteration_chunk(idx, 0, 0, modules[0].iteration_start(idx)[0])))
foreign = [object(), "x", 0, None, 1.5, b"", (1, 2, 3, 0, 4)]
arg_sets = [(), (1,), (1, 2), (1, 2, 3), (object(),), (1, (1, 2, 3, 0, 4))]
checked, failures = 0, []
names = sorted(t.__module__ + "." + t.__qualname__ for t in types)
for cls in sorted(types, key=lambda t: t.__qualname__):
    if cls.__module__.startswith("diskhash") is False and cls is not type(it):
        continue
    for name, raw in vars(cls).items():
        calls = []
        if name == "__new__":
            calls = [lambda f, a, raw=raw: raw(type(f), *a)]
        elif hasattr(raw, "__get__") and not callable(raw):
            # (__get__(None, ...) returns the descriptor itself: not a foreign self.)
            calls = [lambda f, a, raw=raw: raw.__get__(f, type(f)) if f is not None else raw.__get__(0)]
            if hasattr(raw, "__set__"):
                calls.append(lambda f, a, raw=raw: raw.__set__(f, 1))
        elif callable(raw):
            calls = [lambda f, a, raw=raw: raw(f, *a)]
        else:
            continue
        for call in calls:
            for f in foreign:
                if isinstance(f, cls):
                    continue
                for a in arg_sets:
                    checked += 1
                    try:
                        call(f, a)
                    except TypeError:
                        pass
                    except BaseException as exc:
                        failures.append(f"{cls.__qualname__}.{name}({type(f).__name__}, *{a!r}): {exc!r}")
                    else:
                        failures.append(f"{cls.__qualname__}.{name}({type(f).__name__}, *{a!r}) returned")
# Module-level functions: a foreign argument must raise, never crash.
for mod in modules:
    for name, fn in vars(mod).items():
        if callable(fn) and type(fn).__name__ in ("builtin_function_or_method", "cython_function_or_method"):
            for n in range(6):
                checked += 1
                try:
                    fn(*([object()] * n))
                except Exception:
                    pass
idx.close()
for line in failures:
    print("FAIL", line)
print("types", " ".join(names))
print("checked", checked)
"""
