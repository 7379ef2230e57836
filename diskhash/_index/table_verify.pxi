# Included by table.pyx (one module, so the hot path stays inlined): verify,
# stats and repair, built on the whole-table scan.
import os

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from diskhash._index.convert cimport u128_to_int
from diskhash._format.sochidx2 cimport HEADER_SIZE, dh_slot, probe, slot_at

from diskhash._fs import files as _files
from diskhash._format.sochidx2 import header_reserved, unpack_header
from diskhash._types import IndexStats, RepairReport
from diskhash.errors import CorruptIndexError

cdef str _defect_text(int kind, uint64_t slot, const unsigned char *base):
    cdef const dh_slot *s = slot_at(base, slot)
    if kind == D_BAD_TAG:
        return f"slot {slot}: bad tag 0x{s.tag:02x} (expected 0 or 1)"
    if kind == D_BAD_COMPRESSION:
        return f"slot {slot}: unknown compression byte {s.compression}"
    if kind == D_RESERVED:
        return f"slot {slot}: nonzero reserved bytes"
    if kind == D_UNREACHABLE:
        return f"slot {slot}: key {u128_to_int(s.key_lo, s.key_hi)} is unreachable from its home slot"
    return f"slot {slot}: duplicate of key {u128_to_int(s.key_lo, s.key_hi)}"


cdef int SCAN_ATTEMPTS = 5


cdef tuple scan_locked(DiskHashIndex self, size_t cap):
    """Run the table scan under the read lock; returns (scan dict, defect texts)."""
    cdef scan_t sc
    cdef size_t k
    cdef defect_t *defects = <defect_t *>malloc((cap or 1) * sizeof(defect_t))
    if defects == NULL:
        raise MemoryError()
    memset(&sc, 0, sizeof(sc))
    sc.defects = defects
    cdef uint64_t seq
    cdef int attempt
    num_entries = file_bytes = header = None
    texts = dropped = []
    try:
        for attempt in range(SCAN_ATTEMPTS):
            # Another process's writes during the scan can show a passing
            # state (a delete's shifted run): scan again, a few times.
            self._read_begin(&seq)
            try:
                memset(&sc, 0, sizeof(sc))
                sc.cap = cap
                sc.defects = defects
                scan_table(self._base, self._num_slots, self._seed, &sc)
                texts = [_defect_text(sc.defects[k].kind, sc.defects[k].slot, self._base)
                         for k in range(sc.ndefects)]
                dropped = [(sc.defects[k].slot, texts[k]) for k in range(sc.ndefects)
                           if sc.defects[k].kind in (D_BAD_TAG, D_BAD_COMPRESSION)]
                header = (<char *>self._base)[:HEADER_SIZE]
                num_entries = self._num_entries
                # Under the read lock: close() and a grow's swap wait for it,
                # so the descriptor cannot be closed (or reused) meanwhile.
                file_bytes = os.fstat(self._fd).st_size
                if read_valid(self, seq):
                    break
            finally:
                self._read_release()
    finally:
        free(defects)
    info = dict(occupied=sc.occupied, empties=sc.empties, longest=sc.longest,
                total_probe=sc.total_probe, counts=[sc.counts[k] for k in range(<size_t>D_KINDS)],
                header=header, num_entries=num_entries, dropped=dropped,
                file_bytes=file_bytes)
    return info, texts


cdef int verify_table(DiskHashIndex self) except -1:
    """Check the whole table; raise ``CorruptIndexError`` listing every defect.

    Checks tags, compression bytes, reserved bytes, that every key is
    reachable from its home slot, duplicate keys, the header count and
    reserved header bytes, and that an empty slot exists.  O(slots).
    """
    info, texts = scan_locked(self, 1000)
    counts = info["counts"]
    defects = []
    header = info["header"]
    if any(header_reserved(header)):
        defects.append("nonzero reserved bytes in the header")
    if self._seed == 0:
        defects.append("hash seed is zero")
    hdr_count = unpack_header(header)[3]
    if hdr_count != info["occupied"]:
        defects.append(f"header counts {hdr_count} entries but {info['occupied']} slots are occupied")
    if info["empties"] == 0:
        defects.append("no empty slot: lookups of absent keys cannot terminate")
    defects.extend(texts)
    shown = len(texts)
    total = sum(counts)
    if total > shown:
        defects.append(f"... and {total - shown} more slot defects")
    if defects:
        raise CorruptIndexError(self.path, defects)
    return 0


cdef object table_stats(DiskHashIndex self):
    """Entries, slots, load factor, file bytes, longest and mean probe.  O(slots)."""
    info, _ = scan_locked(self, 0)
    occupied = info["occupied"]
    return IndexStats(
        entries=occupied,
        slots=self._num_slots,
        load_factor=occupied / self._num_slots,
        file_bytes=info["file_bytes"],
        longest_probe=info["longest"],
        mean_probe=(info["total_probe"] / occupied) if occupied else 0.0,
    )


cdef object repair_table(DiskHashIndex self):
    """Rebuild a valid table from every readable entry; report what was dropped.

    Slots with a bad tag or compression byte are dropped (and listed);
    unreachable entries are re-homed, duplicates kept once, reserved bytes
    zeroed, the count fixed, a zero seed replaced.  The rebuilt file
    replaces the old one atomically, as a grow does.
    """
    self._write_acquire(True)
    try:
        info, _ = scan_locked(self, 1 << 20)
        kept_max = info["occupied"]
        slots = max(self._num_slots, slots_for(kept_max))
        self._rebuild_locked(slots, True, 0 if self._seed else _files.new_seed())
        self._count_ok = True
        return RepairReport(self._num_entries, info["dropped"], self._num_slots)
    finally:
        self._write_release()
