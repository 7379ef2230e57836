"""verify() lists every kind of defect on ``CorruptIndexError.defects``;
repair() rebuilds a valid table from what is readable and reports what it
dropped; a header count out of step with the slots (what a crash can leave)
never fails an open.  (Damaged headers: test_corrupt_open.py; the CLI:
test_cli.py.)"""

from __future__ import annotations

import os
import shutil

import pytest
from helpers.crafted import long_run_table
from helpers.processes import run_child
from helpers.records import fill_every_slot, record
from helpers.spec_model import (
    HEADER,
    HEADER_FIELD,
    SLOT,
    SLOT_FIELD,
    assert_valid,
    file_size,
    header_u64,
    set_header_u64,
    slot_key,
    slot_offset,
)

import diskhash
from diskhash import (
    CorruptIndexError,
    DiskHashIndex,
    PayloadMeta,
)
from diskhash._format.sochidx2 import home_slot


@pytest.fixture(scope="module")
def long_run_file(tmp_path_factory):
    pytest.importorskip("numpy")
    path = tmp_path_factory.mktemp("longrun") / "run.idx"
    long_run_table(path, slots=2**20, entries=2**19, homes=2**16)
    return path



def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)

LONG_RUN = r"""
import sys, time
from diskhash import DiskHashIndex
path, what = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
if what == "verify":
    with DiskHashIndex(path, readonly=True) as idx:
        idx.verify()
        print("entries", len(idx), "longest", idx.stats().longest_probe)
else:                     # a writable open without the clean marker: the heal scan
    with DiskHashIndex(path) as idx:
        print("entries", len(idx), "recovery", idx.recovery)
print("seconds", time.monotonic() - t0)
"""

SIGINT_SCAN = r"""
import os, signal, sys, threading, time
from diskhash import DiskHashIndex
idx = DiskHashIndex(sys.argv[1], readonly=True)
# A child inherits an ignored SIGINT (a CI job started in the background by a
# shell without job control ignores it, and Python then leaves it ignored):
# Ctrl-C's handler is what this test needs, so install it.
signal.signal(signal.SIGINT, signal.default_int_handler)
def interrupt():
    time.sleep(0.3)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
scans = 0
try:
    while True:
        idx.verify()
        scans += 1
except KeyboardInterrupt as exc:
    tb, inside = exc.__traceback__, False
    while tb is not None:
        inside |= tb.tb_frame.f_code.co_filename.endswith("table.pyx")
        tb = tb.tb_next
    print("interrupted", "inside-scan" if inside else "between-scans", scans)
"""


N = 300
TAG = SLOT_FIELD["tag"]


def occupied_slots(data) -> list[int]:
    n = header_u64(data, "num_slots")
    return [i for i in range(n) if data[slot_offset(i) + TAG] == 1]


@pytest.fixture
def built(index_path):
    """An index of N entries; returns (path, seed, bytearray of the file)."""
    with DiskHashIndex(index_path) as idx:
        for k in range(1, N + 1):
            idx.insert(k, record(k))
        seed = idx.seed
    return index_path, seed, bytearray(index_path.read_bytes())


def write(path, data) -> None:
    path.write_bytes(bytes(data))
    lock = path.with_name(path.name + ".lock")
    if lock.exists():
        lock.unlink()      # as after a crash: no clean-close marker


def verify_defects(path) -> list[str]:
    with DiskHashIndex(path, readonly=True) as idx:
        with pytest.raises(CorruptIndexError) as info:
            idx.verify()
    assert info.value.path == str(path) and str(path) in str(info.value)
    return info.value.defects


def empty_after_run(data, start: int, n: int = 4096) -> int:
    i = start
    while data[slot_offset(i) + TAG] != 0:
        i = (i + 1) % n
    return i


# -- each defect kind, detected and repaired -------------------------------------

def test_bad_tag(built):
    path, _, data = built
    victim = occupied_slots(data)[10]
    data[slot_offset(victim) + TAG] = 0x05
    write(path, data)
    assert f"slot {victim}: bad tag 0x05 (expected 0 or 1)" in verify_defects(path)
    report = diskhash.repair(path)
    assert report.kept == N - 1
    assert report.dropped == [(victim, f"slot {victim}: bad tag 0x05 (expected 0 or 1)")]
    check_repaired(path, {k: record(k) for k in range(1, N + 1) if k != slot_key(data, victim)})


def test_unknown_compression_byte(built):
    path, _, data = built
    victim = occupied_slots(data)[3]
    data[slot_offset(victim) + SLOT_FIELD["compression"]] = 3
    write(path, data)
    assert f"slot {victim}: unknown compression byte 3" in verify_defects(path)
    with DiskHashIndex(path) as idx:
        report = idx.repair()
    assert report.kept == N - 1 and [s for s, _ in report.dropped] == [victim]
    check_repaired(path, {k: record(k) for k in range(1, N + 1) if k != slot_key(data, victim)})


@pytest.mark.parametrize("offset", [SLOT_FIELD["reserved0"], SLOT_FIELD["reserved0"] + 1,
                                    SLOT_FIELD["reserved1"], SLOT_FIELD["reserved1"] + 3])
def test_nonzero_reserved_slot_bytes_are_listed_and_zeroed(built, offset):
    path, _, data = built
    victim = occupied_slots(data)[7]
    data[slot_offset(victim) + offset] = 0xAA
    write(path, data)
    assert f"slot {victim}: nonzero reserved bytes" in verify_defects(path)
    report = diskhash.repair(path)
    assert report.kept == N and report.dropped == []
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


@pytest.mark.parametrize("offset", [HEADER_FIELD["reserved0"], HEADER_FIELD["reserved0"] + 3,
                                    HEADER_FIELD["reserved1"], HEADER.size - 1])
def test_nonzero_reserved_header_bytes(built, offset):
    path, _, data = built
    data[offset] = 0x01
    write(path, data)
    assert "nonzero reserved bytes in the header" in verify_defects(path)
    assert diskhash.repair(path).kept == N
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


def test_key_unreachable_from_its_home_slot(built):
    path, seed, data = built
    src = occupied_slots(data)[0]
    key = slot_key(data, src)
    home = home_slot(key, seed, 4096)
    # Move the entry past an empty slot that follows its home: lookups stop there.
    gap = empty_after_run(data, home)
    dst = empty_after_run(data, (gap + 1) % 4096)
    data[slot_offset(dst): slot_offset(dst + 1)] = data[slot_offset(src): slot_offset(src + 1)]
    data[slot_offset(src): slot_offset(src + 1)] = bytes(SLOT.size)
    write(path, data)
    with DiskHashIndex(path, readonly=True) as idx:
        assert idx.get(key) is None                      # what any spec reader sees
    assert f"slot {dst}: key {key} is unreachable from its home slot" in verify_defects(path)
    report = diskhash.repair(path)
    assert report.kept == N and report.dropped == []     # re-homed, not dropped
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


def test_duplicate_key(built):
    path, seed, data = built
    src = occupied_slots(data)[5]
    key = slot_key(data, src)
    dst = empty_after_run(data, src)                     # a second, reachable copy
    data[slot_offset(dst): slot_offset(dst + 1)] = data[slot_offset(src): slot_offset(src + 1)]
    set_header_u64(data, "num_entries", N + 1)          # the count agrees with the slots
    write(path, data)
    assert verify_defects(path) == [f"slot {dst}: duplicate of key {key}"]
    # A writable open heals this (a crashed delete can leave a duplicate) ...
    with DiskHashIndex(path) as idx:
        assert idx.recovery is not None and idx.recovery.kept == N
        idx.verify()
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


def test_count_mismatch_is_listed_by_a_reader(built):
    path, _, data = built
    set_header_u64(data, "num_entries", N + 5)
    write(path, data)
    assert verify_defects(path) == [f"header counts {N + 5} entries but {N} slots are occupied"]


def test_no_empty_slot_is_listed_and_repair_grows_the_table(index_path):
    slots = 4096
    fill_every_slot(index_path, slots)           # keys 10**9 + i, no clean-close marker
    assert any("no empty slot" in d for d in verify_defects(index_path))
    report = diskhash.repair(index_path)
    assert report.kept == slots and report.slots == 8192 and report.dropped == []
    with DiskHashIndex(index_path, readonly=True) as idx:
        idx.verify()
        assert len(idx) == slots and idx[10**9 + 17] == (10**9 + 17, 0, 0, 0, 0)


def test_every_defect_at_once_is_listed(built):
    path, seed, data = built
    occ = occupied_slots(data)
    data[slot_offset(occ[0]) + TAG] = 0x09                  # bad tag
    data[slot_offset(occ[1]) + SLOT_FIELD["compression"]] = 7
    data[slot_offset(occ[2]) + SLOT_FIELD["reserved1"]] = 1    # reserved slot byte
    dup_src = occ[3]
    dup_dst = empty_after_run(data, dup_src)
    data[slot_offset(dup_dst): slot_offset(dup_dst + 1)] = data[slot_offset(dup_src): slot_offset(dup_src + 1)]
    data[HEADER_FIELD["reserved1"]] = 1                  # reserved header byte
    set_header_u64(data, "num_entries", 9999)            # count
    write(path, data)
    defects = verify_defects(path)
    for words in ("bad tag 0x09", "unknown compression byte 7", f"slot {occ[2]}: nonzero reserved",
                  "duplicate of key", "reserved bytes in the header", "header counts 9999"):
        assert sum(words in d for d in defects) == 1, (words, defects)
    assert len(defects) == 6
    report = diskhash.repair(path)
    assert sorted(s for s, _ in report.dropped) == sorted([occ[0], occ[1]])
    dropped_keys = {slot_key(data, occ[0]), slot_key(data, occ[1])}
    check_repaired(path, {k: record(k) for k in range(1, N + 1) if k not in dropped_keys})


def test_zero_seed_is_listed_and_repair_picks_a_new_one(built):
    path, _, data = built
    # Rebuild the table by hand with seed 0 (every key at its seed-0 home).
    table = bytearray(file_size(4096))
    HEADER.pack_into(table, 0, b"SOCHIDX2", 1, bytes(4), 4096, N, 0, bytes(24))
    for i in occupied_slots(data):
        key = slot_key(data, i)
        j = home_slot(key, 0, 4096)
        while table[slot_offset(j) + TAG]:
            j = (j + 1) % 4096
        table[slot_offset(j): slot_offset(j + 1)] = data[slot_offset(i): slot_offset(i + 1)]
    write(path, table)
    assert verify_defects(path) == ["hash seed is zero"]
    with DiskHashIndex(path, readonly=True) as idx:          # still readable
        assert idx[17] == record(17)
    diskhash.repair(path)
    with DiskHashIndex(path, readonly=True) as idx:
        assert idx.seed != 0
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


def check_repaired(path, expected) -> None:
    with DiskHashIndex(path, readonly=True) as idx:
        idx.verify()
        assert len(idx) == len(expected)
        assert dict(idx.items()) == expected
    assert assert_valid(path.read_bytes()) == {k: tuple(v) for k, v in expected.items()}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


# -- the header count after a crash ------------------------------------------------

@pytest.mark.parametrize("count", [0, N - 1, N + 1, 4096, 2**64 - 1])
def test_stale_header_count_never_fails_an_open(built, count):
    path, _, data = built
    set_header_u64(data, "num_entries", count)
    write(path, data)
    with DiskHashIndex(path, readonly=True) as idx:      # a reader recounts
        assert len(idx) == N
        assert idx[1] == record(1)
        assert idx.recovery is None                      # and writes nothing
    assert path.read_bytes() == bytes(data)
    with DiskHashIndex(path) as idx:                     # a writer fixes the header
        assert len(idx) == N
        assert idx.recovery == (N, [], 4096)
        idx.verify()
        idx.insert(N + 1, record(N + 1))
        assert len(idx) == N + 1
    check_repaired(path, {k: record(k) for k in range(1, N + 2)})


def test_stale_count_fixed_by_repair(built):
    path, _, data = built
    set_header_u64(data, "num_entries", 3)
    write(path, data)
    report = diskhash.repair(path)
    assert report.kept == N and report.dropped == []
    check_repaired(path, {k: record(k) for k in range(1, N + 1)})


def test_clean_close_skips_the_recount(built):
    path, _, _ = built
    with DiskHashIndex(path) as idx:                     # closed cleanly by `built`
        assert idx.recovery is None
    with DiskHashIndex(path, readonly=True) as idx:
        assert len(idx) == N


@pytest.mark.parametrize("what", ["verify", "heal"])
def test_one_long_run_is_scanned_in_linear_time(long_run_file, tmp_path, what):
    """A hostile pass found this: every call keeps its contract."""
    path = tmp_path / "run.idx"
    shutil.copyfile(long_run_file, path)
    # Quadratic, this took ~20 s on 2**18 slots and takes many minutes on
    # these 2**20; linear, it is milliseconds of scanning.
    r = run_child(LONG_RUN, path, what, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"entries {2**19}" in r.stdout
    if what == "verify":
        longest = int(r.stdout.split("longest ")[1].split()[0])
        assert longest > 2**18            # really one long run
    else:
        assert "recovery None" in r.stdout   # a valid file: nothing to heal


def test_duplicates_are_found_across_the_wrap(tmp_path):
    """The run that wraps from the last slot into slot 0 is checked as one run.

    A hostile pass found this: every call keeps its contract.
    """
    from diskhash._format.sochidx2 import home_slot

    path = tmp_path / "wrap.idx"
    with DiskHashIndex(path) as idx:
        keys = [k for k in range(10**6) if home_slot(k, idx.seed, 4096) == 4095][:3]
        for k in keys:
            idx.insert(k, rec(k))
    data = bytearray(path.read_bytes())
    # keys[0] sits in slot 4095, keys[1] in 0, keys[2] in 1: make slot 1 a copy of keys[0].
    off0, off2 = 64 + 40 * 4095, 64 + 40 * 1
    data[off2:off2 + 40] = data[off0:off0 + 40]
    data[24:32] = (3).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    os.unlink(str(path) + ".lock")
    with DiskHashIndex(path, readonly=True) as idx, pytest.raises(CorruptIndexError) as info:
        idx.verify()
    assert info.value.defects == [f"slot 1: duplicate of key {keys[0]}"]
    with DiskHashIndex(path) as idx:     # the unclean open heals it
        assert idx.recovery is not None and len(idx) == 2
        idx.verify()


def test_ctrl_c_interrupts_a_long_scan(long_run_file):
    # The signal lands while a scan runs (scans take all but microseconds of
    # the loop); KeyboardInterrupt must come out of the scan itself, which
    # Cython's traceback entry for _index/table.pyx shows.  A scan that never
    # checks would finish first and raise it between two scans.
    """A hostile pass found this: every call keeps its contract."""
    for _attempt in range(5):
        r = run_child(SIGINT_SCAN, long_run_file, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("interrupted"), r.stdout
        if "inside-scan" in r.stdout:
            return
    pytest.fail(f"KeyboardInterrupt never came from inside the scan: {r.stdout}")
