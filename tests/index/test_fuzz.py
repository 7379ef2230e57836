"""Damaged files, fuzzed: header and slot bytes of a valid 4096-slot table are
mutated (hypothesis); opening, lookups, iteration, len, verify, stats and
repair never crash or hang, and either raise ``CorruptIndexError`` or return
exactly what an independent reader of the spec finds in the same bytes."""

from __future__ import annotations

import faulthandler
import functools
import os
import tempfile
from contextlib import contextmanager

import numpy as np
import pytest
from helpers.spec_model import HEADER, HEADER_FIELD, SLOT, SLOT_FIELD, assert_valid, file_size, slot_offset, spec_hash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diskhash import CorruptIndexError, DiskHashIndex, PayloadMeta
from diskhash._format.sochidx2 import home_slot
from diskhash._fs import files as _files

SEED = 0xF022_5EED_0000_0001
SLOTS = 4096
SLOT_DTYPE = np.dtype([("tag", "u1"), ("comp", "u1"), ("r0", "<u2"), ("length", "<u4"),
                       ("ulen", "<u4"), ("r1", "<u4"), ("lo", "<u8"), ("hi", "<u8"), ("offset", "<u8")])
assert SLOT_DTYPE.itemsize == SLOT.size


@functools.lru_cache(maxsize=None)
def base_file() -> tuple[bytes, tuple[int, ...]]:
    """A valid table: 1500 entries, including a run that wraps past the last slot."""
    wrap = []
    k = 1
    while len(wrap) < 6:
        if home_slot(k, SEED, SLOTS) >= SLOTS - 2:
            wrap.append(k)
        k += 1
    rng = np.random.default_rng(5)
    keys = wrap + [int(x) | (int(y) << 64) for x, y in zip(rng.integers(0, 2**63, 1494),
                                                           rng.integers(0, 3, 1494))]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "base.idx")
        os.close(_files.create_table_file(path, SLOTS, SEED))
        with DiskHashIndex(path) as idx:
            for key in keys:
                idx.insert(key, PayloadMeta(key, key % 2**64, key % 2**32, key % 3, key % 999))
        with open(path, "rb") as f:
            data = f.read()
    assert len(assert_valid(data)) == len(keys)
    return data, tuple(keys)


# -- an independent reader: what the bytes mean ---------------------------------

class Reference:
    """The spec's reading of ``data``: header, slots, lookups, validity."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.header_ok = False
        if len(data) < HEADER.size:
            return
        magic, version, r1, n, count, seed, r2 = HEADER.unpack_from(data)
        if magic != b"SOCHIDX2" or version != 1 or n == 0 or n & (n - 1) or len(data) < file_size(n):
            return
        self.header_ok = True
        self.n, self.count, self.seed = n, count, seed
        self.header_reserved_ok = r1 == b"\0" * 4 and r2 == b"\0" * 24
        self.slots = np.frombuffer(data, SLOT_DTYPE, count=n, offset=HEADER.size)
        self.rows = self.slots.tolist()      # (tag, comp, r0, length, ulen, r1, lo, hi, offset)

    def key(self, i: int) -> int:
        row = self.rows[i]
        return row[6] | (row[7] << 64)

    def record(self, i: int):
        tag, comp, _, length, ulen, _, lo, hi, offset = self.rows[i]
        return (lo | (hi << 64), offset, length, comp, ulen)

    def lookup(self, key: int):
        """("hit", i) / ("miss",) / ("corrupt",): the spec's probe, stopping at damage."""
        i = spec_hash(key, self.seed) & (self.n - 1)
        for _ in range(self.n):
            tag = self.rows[i][0]
            if tag == 0:
                return ("miss",)
            if tag != 1:
                return ("corrupt",)
            if self.key(i) == key:
                return ("hit", i)
            i = (i + 1) & (self.n - 1)
        return ("corrupt",)

    def occupied(self) -> np.ndarray:
        return np.flatnonzero(self.slots["tag"] == 1)

    def iteration(self):
        """Every record in slot order, or None if iterating must raise."""
        tags = self.slots["tag"]
        if np.any(tags > 1) or np.any(self.slots["comp"][tags == 1] > 2):
            return None
        return [(self.key(i), self.record(i)) for i in self.occupied()]

    def valid(self) -> bool:
        """Every promise verify() checks, computed independently."""
        s = self.slots
        tags = s["tag"]
        occ = tags == 1
        if (not self.header_reserved_ok or self.seed == 0 or np.any(tags > 1)
                or int(occ.sum()) != self.count or occ.all()):
            return False
        o = s[occ]
        if np.any(o["comp"] > 2) or np.any(o["r0"]) or np.any(o["r1"]):
            return False
        keys = [self.key(i) for i in np.flatnonzero(occ)]
        if len(set(keys)) != len(keys):
            return False
        return all(self.lookup(k) == ("hit", i) for k, i in zip(keys, np.flatnonzero(occ)))


# -- mutations ------------------------------------------------------------------

SPECIAL = st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0xFF])
byte_values = st.one_of(SPECIAL, st.integers(0, 255))


@functools.lru_cache(maxsize=None)
def base_reference() -> "Reference":
    return Reference(base_file()[0])


@functools.lru_cache(maxsize=None)
def slot_choice():
    occupied = [int(i) for i in base_reference().occupied()]
    return st.one_of(st.sampled_from(occupied), st.integers(0, SLOTS - 1),
                     st.sampled_from([0, 1, SLOTS - 2, SLOTS - 1]))


@st.composite
def slot_mutation(draw):
    """One edit of the table: a byte of a slot, or a whole slot copied/cleared/swapped."""
    near = slot_choice()
    i = int(draw(near))
    kind = draw(st.sampled_from(["byte", "byte", "byte", "copy", "clear", "swap"]))
    if kind == "byte":
        field = draw(st.one_of(st.sampled_from([SLOT_FIELD[f] for f in ("tag", "compression", "reserved0")]
                                               + [SLOT_FIELD["reserved0"] + 1, SLOT_FIELD["reserved1"],
                                                  SLOT_FIELD["reserved1"] + 3]),
                               st.integers(0, SLOT.size - 1)))
        return ("byte", slot_offset(i) + field, draw(byte_values))
    return (kind, i, int(draw(near)))


def apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for edit in sorted(edits, key=lambda e: e[0] == "resize"):     # resizes last
        if edit[0] == "byte":
            out[edit[1]] = edit[2]
        elif edit[0] == "field":
            _, off, size, value = edit
            out[off: off + size] = value.to_bytes(size, "little")
        elif edit[0] == "resize":
            out = out[: edit[1]] if edit[1] <= len(out) else out + bytes(edit[1] - len(out))
        else:
            kind, i, j = edit
            a, b, size = slot_offset(i), slot_offset(j), SLOT.size
            if kind == "copy":
                out[b: b + size] = out[a: a + size]
            elif kind == "clear":
                out[a: a + size] = bytes(size)
            else:
                out[a: a + size], out[b: b + size] = out[b: b + size], out[a: a + size]
    return bytes(out)


header_edit = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, HEADER.size - 1), byte_values),
    st.tuples(st.just("field"), st.just(HEADER_FIELD["num_slots"]), st.just(8),
              st.one_of(st.sampled_from([0, 1, 2, 1024, 2048, 4095, 4096, 8192, 2**63]),
                        st.integers(0, 2**64 - 1))),
    st.tuples(st.just("field"), st.just(HEADER_FIELD["num_entries"]), st.just(8),
              st.one_of(st.sampled_from([0, 1, 1499, 1500, 1501, 4096, 2**64 - 1]),
                        st.integers(0, 2**64 - 1))),
    st.tuples(st.just("field"), st.just(HEADER_FIELD["seed"]), st.just(8), st.sampled_from([0, 1, SEED ^ 1])),
    st.tuples(st.just("resize"), st.sampled_from([0, 10, HEADER.size - 1, file_size(0), file_size(1),
                                                  file_size(4095), file_size(4096) + 7, file_size(8192)])),
)


# -- the checks -----------------------------------------------------------------

@contextmanager
def watchdog(seconds: float):
    """A hang (even one holding the GIL) kills the run with every thread's traceback."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class Files:
    """Fresh file names in one directory: no clean-close marker carries over."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="dh-fuzz-")
        self.n = 0

    def write(self, data: bytes) -> str:
        self.n += 1
        path = os.path.join(self.dir.name, f"f{self.n}.idx")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def remove(self, path: str) -> None:
        for p in (path, path + ".lock"):
            if os.path.exists(p):
                os.unlink(p)
        assert not [n for n in os.listdir(self.dir.name) if n.endswith(".tmp")]


@pytest.fixture(scope="module")
def files():
    f = Files()
    yield f
    f.dir.cleanup()


def probe_keys(ref: Reference, keys, edits) -> list[int]:
    """Keys to look up: a spread of the table, absent keys, and every key that
    sat (before or after the edits) at or just after an edited slot."""
    sample = list(keys[:6]) + list(keys[6::97]) + [0, 2**128 - 1, 123456789]
    occ = ref.occupied()
    sample += [ref.key(i) for i in occ[:: max(1, len(occ) // 8)]]
    base = base_reference()
    for edit in edits:
        if edit[0] in ("copy", "clear", "swap", "byte"):
            first = edit[1] if edit[0] != "byte" else (edit[1] - HEADER.size) // SLOT.size
            for i in range(first, first + 4):
                for r in (base, ref):
                    if i < r.n and r.rows[i][0] != 0:
                        sample.append(r.key(i))
    return sample


def check_read_only(path: str, ref: Reference, keys, edits=()) -> None:
    if not ref.header_ok:
        with pytest.raises(CorruptIndexError) as info:
            DiskHashIndex(path, readonly=True)
        assert info.value.defects and info.value.path == path
        return
    with DiskHashIndex(path, readonly=True) as idx:
        assert len(idx) == len(ref.occupied())          # recounted: no clean marker
        for key in probe_keys(ref, keys, edits):
            found = ref.lookup(key)
            if found[0] == "corrupt":
                event("a lookup met damage")
                with pytest.raises(CorruptIndexError):
                    idx.get(key)
                with pytest.raises(CorruptIndexError):
                    _ = key in idx
                continue
            assert (key in idx) == (found[0] == "hit")
            if found[0] == "miss":
                assert idx.get(key) is None
            elif ref.rows[found[1]][1] > 2:
                with pytest.raises(CorruptIndexError, match="compression"):
                    idx.get(key)
            else:
                assert idx.get(key) == ref.record(found[1])
        expected = ref.iteration()
        if expected is None:
            with pytest.raises(CorruptIndexError):
                list(idx.items())
        else:
            assert list(idx.items()) == expected
        if ref.valid():
            event("valid after the mutation")
            idx.verify()
        else:
            with pytest.raises(CorruptIndexError) as info:
                idx.verify()
            assert info.value.defects and all(isinstance(d, str) for d in info.value.defects)
        assert idx.stats().entries == len(ref.occupied())


def check_repair(path: str, ref: Reference) -> None:
    if not ref.header_ok:
        with pytest.raises(CorruptIndexError):
            DiskHashIndex(path)
        return
    readable: dict[int, set] = {}
    bad = 0
    for i in range(ref.n):
        tag, comp = ref.rows[i][:2]
        if tag == 1 and comp <= 2:
            readable.setdefault(ref.key(i), set()).add(ref.record(i))
        elif tag != 0:
            bad += 1
    with DiskHashIndex(path) as idx:                    # a writable open never fails here
        report = idx.repair()
        idx.verify()
        assert report.kept == len(readable) and len(report.dropped) == bad
        new_key = 2**127 + 12345
        idx.insert(new_key, PayloadMeta(new_key, 1, 2, 0, 3))
        assert idx.get(new_key) == (new_key, 1, 2, 0, 3)
        assert idx.delete(new_key)
    with open(path, "rb") as f:
        entries = assert_valid(f.read())
    assert entries.keys() == readable.keys()
    assert all(entries[k] in readable[k] for k in entries)


FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# The full runs are marked slow (``--run-slow``); the default run fuzzes a sample.
SLOTS_EXAMPLES, HEADER_EXAMPLES, REPAIR_EXAMPLES = 900, 700, 300
SAMPLE = 0.1


def fuzz_slots_read_only(files, data) -> None:
    base, keys = base_file()
    edits = data.draw(st.lists(slot_mutation(), min_size=1, max_size=6))
    mutated = apply(base, edits)
    path = files.write(mutated)
    with watchdog(60):
        check_read_only(path, Reference(mutated), keys, edits)
    files.remove(path)


def fuzz_header_read_only(files, edits) -> None:
    base, keys = base_file()
    mutated = apply(base, edits)
    path = files.write(mutated)
    with watchdog(60):
        check_read_only(path, Reference(mutated), keys)
    files.remove(path)


def fuzz_repair(files, data) -> None:
    base, _ = base_file()
    edits = data.draw(st.lists(st.one_of(slot_mutation(), header_edit), min_size=1, max_size=5))
    mutated = apply(base, edits)
    path = files.write(mutated)
    with watchdog(60):
        check_repair(path, Reference(mutated))
    files.remove(path)


header_edits = st.lists(header_edit, min_size=1, max_size=3)


@pytest.mark.slow
@settings(FUZZ, max_examples=SLOTS_EXAMPLES)
@given(data=st.data())
def test_fuzzed_slots_read_only(files, data):
    fuzz_slots_read_only(files, data)


@settings(FUZZ, max_examples=int(SLOTS_EXAMPLES * SAMPLE))
@given(data=st.data())
def test_fuzzed_slots_read_only_sample(files, data):
    fuzz_slots_read_only(files, data)


@pytest.mark.slow
@settings(FUZZ, max_examples=HEADER_EXAMPLES)
@given(edits=header_edits)
def test_fuzzed_header_read_only(files, edits):
    fuzz_header_read_only(files, edits)


@settings(FUZZ, max_examples=int(HEADER_EXAMPLES * SAMPLE))
@given(edits=header_edits)
def test_fuzzed_header_read_only_sample(files, edits):
    fuzz_header_read_only(files, edits)


@pytest.mark.slow
@settings(FUZZ, max_examples=REPAIR_EXAMPLES)
@given(data=st.data())
def test_fuzzed_files_repair(files, data):
    fuzz_repair(files, data)


@settings(FUZZ, max_examples=int(REPAIR_EXAMPLES * SAMPLE))
@given(data=st.data())
def test_fuzzed_files_repair_sample(files, data):
    fuzz_repair(files, data)
