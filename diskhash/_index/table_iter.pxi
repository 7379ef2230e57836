# Included by table.pyx (one module, so the hot path stays inlined):
# iteration -- the occupied slots copied a chunk at a time under the read
# lock, turned into keys or records after it is released.
cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from diskhash._index.convert cimport u128_to_int
from diskhash._format.sochidx2 cimport TAG_EMPTY, TAG_OCCUPIED, dh_load_acquire, dh_slot, slot_at

from diskhash.errors import CorruptIndexError

cdef Py_ssize_t CHUNK = 1024          # slots copied per iteration step


cdef inline uint64_t iteration_stamp(DiskHashIndex self) noexcept:
    """What an iteration compares to learn that the keys changed: this
    object's own count (its writes, a re-map of a grown table) plus the
    shared page's count of keys added or removed by any process."""
    if self._shared != NULL:
        return self._generation + dh_load_acquire(&self._shared.key_changes)
    return self._generation


@cython.final
cdef class _Chunk:
    """One step of iteration: records copied under the read lock."""
    cdef public list items
    cdef public uint64_t next_slot
    cdef public uint64_t generation


cdef _Chunk read_chunk(DiskHashIndex self, uint64_t start, int what, uint64_t generation):
    """Records of the occupied slots from ``start``, up to CHUNK slots.

    ``what``: 0 keys, 1 values, 2 items.  Raises ``RuntimeError`` if the
    set of keys changed since ``generation`` (like a dict).
    """
    cdef uint64_t i, end, n = 0, seq
    cdef bint ok = False
    cdef dh_slot *buf = <dh_slot *>malloc(CHUNK * sizeof(dh_slot))
    cdef _Chunk out = _Chunk()
    if buf == NULL:
        raise MemoryError()
    try:
        while not ok:
            self._read_begin(&seq)
            if generation != iteration_stamp(self):
                self._read_release()
                raise RuntimeError(f"{self.path}: index changed size during iteration")
            n = 0
            end = min(start + CHUNK, self._num_slots)
            for i in range(start, end):
                if slot_at(self._base, i).tag != TAG_EMPTY:
                    buf[n] = slot_at(self._base, i)[0]
                    n += 1
            ok = read_valid(self, seq)      # (else another process wrote: copy again)
            self._read_release()
        out.next_slot = end
        out.generation = generation
        out.items = []
        for i in range(n):
            if buf[i].tag != TAG_OCCUPIED:
                raise CorruptIndexError(self.path, f"bad tag 0x{buf[i].tag:02x} met while iterating")
            key = u128_to_int(buf[i].key_lo, buf[i].key_hi)
            if what == 0:
                out.items.append(key)
            else:
                rec = self._record(key, &buf[i])
                out.items.append(rec if what == 1 else (key, rec))
        return out
    finally:
        free(buf)


def iteration_start(DiskHashIndex self):
    """(generation, num_slots) for a new iteration (the async index's too)."""
    if self._state != STATE_OPEN:
        self._raise_unusable()
    return iteration_stamp(self), self._num_slots


def iteration_chunk(DiskHashIndex self, uint64_t start, int what, uint64_t generation):
    """Records of the occupied slots from ``start`` (see ``read_chunk``): one
    step of an iteration, for the async index's worker threads."""
    return read_chunk(self, start, what, generation)


def _iterate(DiskHashIndex self, int what):
    """The sync iterators: records a chunk at a time, re-checked before each."""
    generation, num_slots = iteration_start(self)
    cdef uint64_t start = 0
    cdef uint64_t gen = generation
    while start < num_slots:
        chunk = read_chunk(self, start, what, generation)
        start = chunk.next_slot
        for item in chunk.items:
            # A chunk is copied ahead: re-check before each item, so a key
            # deleted (or the index closed) meanwhile is never yielded.
            if self._state != STATE_OPEN or iteration_stamp(self) != gen:
                iteration_start(self)          # raises if closed
                raise RuntimeError(f"{self.path}: index changed size during iteration")
            yield item
