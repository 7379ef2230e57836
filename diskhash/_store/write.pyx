# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The PayloadStore's write hot paths: ``put`` in one call, the frames of a ``put_many`` piece in one loop.

``put_frame(index, view, start, key, payload)`` writes one uncompressed frame
into the writer's map and indexes it (see there).

``encode_frames(keys, payloads, start, max_bytes, blob)`` (and
``encode_frames_u128(pairs, payloads, ...)`` for a numpy key array) lays out the put frames
(uncompressed, docs/internals/store-format.md) of ``keys[start:]``/``payloads[start:]``
back to back in one bytearray -- header, payload, CRC-32C over both -- and
beside it the ``KEY_DTYPE`` and ``META_DTYPE`` rows that ``insert_many``
indexes them with, so the Python caller writes the piece with one ``pwrite``
and indexes it with one call.  The keys must already be validated ints (the
store's ``key_list``), the payloads bytes or flat byte views
(``payload_view``).  The GIL is held: the copies are the work.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_FromStringAndSize,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.object cimport PyObject_Length
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cpython.list cimport PyList_GET_SIZE
from cpython.long cimport PyLong_CheckExact

from diskhash._index.convert cimport key_to_u128, make_record, meta_fields, u128_to_int
from diskhash._format.sochidx2 cimport DH_COMPILER_BARRIER, dh_load_acquire
from diskhash._format.frame cimport FRAME_MARK, FRAME_SIZE, KIND_PUT, dh_crc32c, dh_crc32c_init, frame_t
from diskhash._index.table cimport DiskHashIndex
from diskhash._store.shared cimport SharedPage, dh_store_page

dh_crc32c_init()

cdef enum:
    KEY_ROW = 16          # KEY_DTYPE: lo@0, hi@8
    META_ROW = 24         # META_DTYPE: offset@0, length@8, compression@12, uncompressed_length@16

cdef uint64_t MAX_PAYLOAD = 0xFFFFFFFFU     # stored_length is a u32 (_format.payload.MAX_LENGTH)


cdef inline void _write_put_frame(uint8_t *p, uint64_t lo, uint64_t hi, const void *src,
                                  uint32_t length) noexcept nogil:
    """One uncompressed put frame at ``p``: bytes 4..end (header, payload)
    first, the CRC-32C over them last, so a frame written into the live map
    is never whole before it is right (``Writer.append``'s order)."""
    cdef frame_t f
    cdef uint32_t crc
    f.checksum = 0
    f.kind = KIND_PUT
    f.compression = 0
    f.mark = FRAME_MARK
    f.stored_length = length
    f.uncompressed_length = length
    f.key_lo = lo
    f.key_hi = hi
    memcpy(p + 4, (<uint8_t *>&f) + 4, FRAME_SIZE - 4)
    if length:
        memcpy(p + FRAME_SIZE, src, length)
    crc = dh_crc32c(0, p + 4, <size_t>(FRAME_SIZE - 4 + length))
    DH_COMPILER_BARRIER()
    memcpy(p, &crc, 4)


cdef inline void _write_rows(uint8_t *krow, uint8_t *mrow, uint64_t lo, uint64_t hi,
                             uint64_t offset, uint32_t length) noexcept nogil:
    """A record's ``KEY_DTYPE`` and ``META_DTYPE`` rows (compression NONE; the
    meta row's padding zeroed by the caller)."""
    memcpy(krow, &lo, 8)
    memcpy(krow + 8, &hi, 8)
    memcpy(mrow, &offset, 8)
    memcpy(mrow + 8, &length, 4)
    memcpy(mrow + 16, &length, 4)


cdef inline Py_ssize_t _length(object payload) except -1:
    if PyBytes_CheckExact(payload):
        return PyBytes_GET_SIZE(payload)
    return PyObject_Length(payload)


def encode_frames(list keys, list payloads, Py_ssize_t start, Py_ssize_t max_bytes,
                  bytearray blob not None):
    """The frames of records ``start``, ``start + 1``, ... until they hold at
    least ``max_bytes`` bytes (or the lists end; one record at least), written
    at the start of ``blob`` (grown if it is too small; reused across pieces,
    so the pages of a fresh 16 MiB buffer are faulted in once per batch).

    Returns ``(stop, size, key_rows, meta_rows)``: ``stop`` the first record
    not taken, ``size`` the bytes of ``blob`` the frames fill, ``key_rows`` (bytes) and
    ``meta_rows`` (bytearray, writable: the caller adds where the blob
    lands in the file to each offset) the ``KEY_DTYPE``/``META_DTYPE`` rows,
    offsets relative to the blob's start.
    """
    return _encode_frames(keys, NULL, len(keys), payloads, start, max_bytes, blob)


def encode_frames_u128(const uint64_t[::1] pairs, list payloads, Py_ssize_t start,
                       Py_ssize_t max_bytes, bytearray blob not None):
    """``encode_frames`` of the keys ``pairs[2i] | pairs[2i + 1] << 64`` (a
    ``KEY_DTYPE`` array viewed as ``uint64``, as ``keys.key_pairs`` makes
    it): a numpy key array is never turned into Python ints, whose making
    was the bulk of a ``put_many`` of small payloads (docs/performance.md)."""
    cdef Py_ssize_t n = pairs.shape[0] // 2
    if pairs.shape[0] != 2 * n:
        raise ValueError(f"encode_frames_u128 got {pairs.shape[0]} halves, not pairs")
    if n == 0:
        return _encode_frames(None, NULL, 0, payloads, start, max_bytes, blob)
    return _encode_frames(None, &pairs[0], n, payloads, start, max_bytes, blob)


def encode_frames_packed(const uint64_t[::1] pairs, const int64_t[::1] ends,
                         const uint8_t[::1] data, Py_ssize_t start, Py_ssize_t max_bytes,
                         bytearray blob not None):
    """``encode_frames_u128`` with the payloads packed: payload ``i`` is
    ``data[ends[i - 1]:ends[i]]`` (``ends[-1]`` taken as 0), the layout of a
    ``_packed`` piece.  No Python object per record, and the copy loop runs
    without the GIL.  Raises ``ValueError`` for ends that go backwards or
    past ``data``, or a payload over the u32 limit, before any copy.

    Another thread may write ``pairs`` and ``ends`` while the copy runs (they
    are the caller's arrays): the keys and lengths are checked and copied
    into the key and meta rows (ours) with the GIL held, and the loop without
    the GIL reads only those, so it never copies outside ``data`` or ``blob``.
    """
    cdef Py_ssize_t n = pairs.shape[0] // 2
    cdef Py_ssize_t i, stop, count, size = 0, length
    cdef int64_t prev, first, end
    cdef Py_buffer blob_view
    cdef uint64_t off, src, lo, hi
    cdef uint32_t ulen32
    cdef char *out
    cdef const uint8_t *base
    cdef uint8_t *krow
    cdef uint8_t *mrow
    cdef Py_ssize_t pos = 0
    if pairs.shape[0] != 2 * n:
        raise ValueError(f"encode_frames_packed got {pairs.shape[0]} halves, not pairs")
    if ends.shape[0] != n:
        raise ValueError(f"encode_frames_packed got {n} keys but {ends.shape[0]} payload ends")
    if start < 0 or start >= n:
        raise ValueError(f"start {start} is outside [0, {n})")
    first = ends[start - 1] if start else 0
    if first < 0 or first > data.shape[0]:
        raise ValueError(f"payload end {first} of record {start - 1} is outside [0, {data.shape[0]}]")
    prev = first
    stop = start
    while stop < n and (stop == start or size < max_bytes):
        end = ends[stop]
        if end < prev or end > data.shape[0]:
            raise ValueError(f"payload end {end} of record {stop} is outside "
                             f"[{prev}, {data.shape[0]}]")
        length = <Py_ssize_t>(end - prev)
        if <uint64_t>length > MAX_PAYLOAD:
            raise ValueError(f"payloads[{stop}] is {length} bytes; the limit is {MAX_PAYLOAD} (u32)")
        size += FRAME_SIZE + length
        prev = end
        stop += 1
    count = stop - start
    if PyByteArray_GET_SIZE(blob) < size:
        PyByteArray_Resize(blob, size)
    key_rows = PyBytes_FromStringAndSize(NULL, count * KEY_ROW)
    meta_rows = PyByteArray_FromStringAndSize(NULL, count * META_ROW)
    krow = <uint8_t *>PyBytes_AS_STRING(key_rows)
    mrow = <uint8_t *>PyByteArray_AS_STRING(meta_rows)
    memset(mrow, 0, <size_t>(count * META_ROW))
    # The rows, with the GIL: making the rows above may have run Python code
    # (a collection), so the ends are checked again as they are copied.
    prev = first
    for i in range(start, stop):
        end = ends[i]
        length = <Py_ssize_t>(end - prev)
        if end < prev or end > data.shape[0] or pos + FRAME_SIZE + length > size:
            raise ValueError("payload ends changed during encode_frames_packed")
        _write_rows(krow + (i - start) * KEY_ROW, mrow + (i - start) * META_ROW,
                    pairs[2 * i], pairs[2 * i + 1], <uint64_t>(pos + FRAME_SIZE), <uint32_t>length)
        pos += FRAME_SIZE + length
        prev = end
    if pos != size:
        raise ValueError("payload ends changed during encode_frames_packed")
    base = &data[0] if data.shape[0] else NULL
    PyObject_GetBuffer(blob, &blob_view, PyBUF_WRITABLE)
    try:
        out = <char *>blob_view.buf
        with nogil:
            src = <uint64_t>first
            for i in range(count):
                memcpy(&lo, krow + i * KEY_ROW, 8)
                memcpy(&hi, krow + i * KEY_ROW + 8, 8)
                memcpy(&off, mrow + i * META_ROW, 8)
                memcpy(&ulen32, mrow + i * META_ROW + 8, 4)
                _write_put_frame(<uint8_t *>out + off - FRAME_SIZE, lo, hi, base + src, ulen32)
                src += ulen32
    finally:
        PyBuffer_Release(&blob_view)
    return stop, size, key_rows, meta_rows


cdef tuple _encode_frames(list keys, const uint64_t *kv, Py_ssize_t n, list payloads,
                          Py_ssize_t start, Py_ssize_t max_bytes, bytearray blob):
    """``encode_frames`` with the keys in ``keys`` (ints) or, if ``kv`` is not
    NULL, in ``kv`` (``n`` pairs lo, hi)."""
    cdef Py_ssize_t stop, count, size = 0, length
    cdef Py_buffer blob_view
    if len(payloads) != n:
        raise ValueError(f"encode_frames got {n} keys but {len(payloads)} payloads")
    if start < 0 or start >= n:
        raise ValueError(f"start {start} is outside [0, {n})")
    stop = start
    while stop < n and (stop == start or size < max_bytes):
        if stop >= PyList_GET_SIZE(payloads):     # a payload's __len__ shrank the list
            raise RuntimeError("payloads changed size during put_many")
        length = _length(payloads[stop])
        if <uint64_t>length > MAX_PAYLOAD:
            raise ValueError(f"payloads[{stop}] is {length} bytes; the limit is {MAX_PAYLOAD} (u32)")
        size += FRAME_SIZE + length
        stop += 1
    count = stop - start
    if PyByteArray_GET_SIZE(blob) < size:
        PyByteArray_Resize(blob, size)
    key_rows = PyBytes_FromStringAndSize(NULL, count * KEY_ROW)
    meta_rows = PyByteArray_FromStringAndSize(NULL, count * META_ROW)
    # ``blob`` exported for the loop: a key's __index__ or a payload's buffer
    # export runs Python code, which must not be able to resize (free) the
    # buffer the frames are copied into (BufferError instead).
    PyObject_GetBuffer(blob, &blob_view, PyBUF_WRITABLE)
    try:
        _encode_loop(keys, kv, payloads, start, stop, size, <char *>blob_view.buf,
                     <uint8_t *>PyBytes_AS_STRING(key_rows),
                     <uint8_t *>PyByteArray_AS_STRING(meta_rows), count)
    finally:
        PyBuffer_Release(&blob_view)
    return stop, size, key_rows, meta_rows


cdef int _encode_loop(list keys, const uint64_t *kv, list payloads, Py_ssize_t start, Py_ssize_t stop,
                      Py_ssize_t size, char *out, uint8_t *krow, uint8_t *mrow,
                      Py_ssize_t count) except -1:
    """``encode_frames``' copy loop, into buffers the caller holds exports of."""
    cdef Py_ssize_t i, pos = 0, length
    cdef uint64_t lo, hi
    cdef Py_buffer view
    cdef const char *src
    cdef bint held
    memset(mrow, 0, <size_t>(count * META_ROW))
    for i in range(start, stop):
        # (a payload's buffer export may run Python code that changes the lists)
        if (kv == NULL and i >= PyList_GET_SIZE(keys)) or i >= PyList_GET_SIZE(payloads):
            raise RuntimeError("keys or payloads changed size during put_many")
        if kv == NULL:
            key_to_u128(keys[i], &lo, &hi)
        else:
            lo = kv[2 * i]
            hi = kv[2 * i + 1]
        payload = payloads[i]
        if PyBytes_CheckExact(payload):
            src = PyBytes_AS_STRING(payload)
            length = PyBytes_GET_SIZE(payload)
            held = False
        else:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            held = True
            src = <const char *>view.buf
            length = view.len
        try:
            if pos + FRAME_SIZE + length > size:
                raise ValueError(f"payloads[{i}] changed size during put_many")
            _write_put_frame(<uint8_t *>out + pos, lo, hi, src, <uint32_t>length)
        finally:
            if held:
                PyBuffer_Release(&view)
        _write_rows(krow, mrow, lo, hi, <uint64_t>(pos + FRAME_SIZE), <uint32_t>length)
        krow += KEY_ROW
        mrow += META_ROW
        pos += FRAME_SIZE + length
    if pos != size:
        raise ValueError("a payload changed size during put_many")
    return 0


def put_frame(DiskHashIndex index not None, view, Py_ssize_t start, key, bytes payload not None):
    """``put`` of an uncompressed payload in one call: the frame written into
    ``view`` (the writer's map of the data file) at ``start``, then indexed.

    The caller holds the store's writer lock and has allocated and mapped the
    frame's bytes.  Order, as ``Writer.append`` documents: bytes 4..end
    of the frame first, its checksum last (``start .. start + 4`` are zero
    until then), then the index entry (``DiskHashIndex.insert``: its writer
    lock, the same slot writes).  If indexing fails the frame is zeroed again
    and the error raised, so no open replays it.  A bad key raises before any
    byte is written.  Returns the ``PayloadMeta`` indexed.
    """
    cdef uint64_t lo, hi
    cdef Py_buffer buf
    cdef meta_fields m
    cdef Py_ssize_t length = PyBytes_GET_SIZE(payload)
    cdef uint8_t *p
    key_to_u128(key, &lo, &hi)
    if <uint64_t>length > MAX_PAYLOAD:
        raise ValueError(f"payload is {length} bytes; the limit is {MAX_PAYLOAD} (u32)")
    PyObject_GetBuffer(view, &buf, PyBUF_WRITABLE)
    try:
        if start < 0 or start > buf.len or FRAME_SIZE + length > buf.len - start:
            raise ValueError(f"the frame at {start} ({FRAME_SIZE + length} bytes) is outside "
                             f"the map ({buf.len} bytes)")
        p = <uint8_t *>buf.buf + start
        _write_put_frame(p, lo, hi, PyBytes_AS_STRING(payload), <uint32_t>length)
        m.offset = <uint64_t>(start + FRAME_SIZE)
        m.length = <uint32_t>length
        m.uncompressed_length = <uint32_t>length
        m.compression = 0
        try:
            index._write_acquire(True)
            try:
                index._insert_locked(lo, hi, &m)
            finally:
                index._write_release()
        except BaseException:
            memset(p, 0, <size_t>(FRAME_SIZE + length))
            raise
    finally:
        PyBuffer_Release(&buf)
    if not PyLong_CheckExact(key):
        key = u128_to_int(lo, hi)
    return make_record(key, 0, m.offset, m.length, m.uncompressed_length)


# -- the writer's door and the maintenance lock ------------------------------------------
#
# Compiled, so that Ctrl-C cannot land between taking a lock and the code that
# gives it back.  A signal handler's KeyboardInterrupt is raised only where the
# interpreter runs Python code (a Python function's first instruction, the
# step after a call returns), never inside these C methods, and a ``with``
# statement calls them without a Python frame of their own.  Written in
# Python, a Ctrl-C at the first instruction of ``__exit__`` or right after
# ``acquire()`` returned left the lock held for ever: other writers, the sync
# thread and ``close()`` (which joins the sync thread) then waited for it.

import threading as _threading


cdef class WriterDoor:
    """The base of ``_store.writer.Writer``: its door, ``with writer as g:``.

    ``__enter__`` takes the writer lock (the subclass's ``lock``, an ``RLock``)
    and checks ``writable()`` (read-only, closed); then, in a store shared
    between processes (``sharing``, a ``_store.sharing.Sharing``), the
    outermost entry of the thread takes the cross-process writer lock of
    the shared page and brings the writer up to what other processes wrote
    (``Sharing.sync``; ``Sharing.recover_dead`` first when the last holder
    died).  It returns the writable generation, letting everything go if a
    step raises.  ``__exit__`` publishes the log's end (``Sharing.publish``)
    and lets the locks go.  ``nowait()`` is the same
    door without waiting for either lock."""

    cdef public object sharing
    # The writer's state, fields here so the door's fast path reads and
    # writes them in C: the current generation, the log's end, the
    # checkpoint, and the generation last published to (or synced from) the
    # shared page.
    cdef public object gen
    cdef public unsigned long long end
    cdef public unsigned long long checkpoint
    cdef public object published
    cdef public bint readonly
    cdef Py_ssize_t depth
    cdef SharedPage _page       # (sharing.page, kept: it never changes)

    def __enter__(self):
        lock = self.lock
        lock.acquire()
        try:
            g = self.gen
            if g is None or self.readonly:
                g = self.writable()         # (raises)
            if self.sharing is not None:
                self.depth += 1
                if self.depth == 1:
                    try:
                        self._cross_enter(True)
                    except BaseException:
                        self.depth = 0
                        raise
                    g = self.gen
                    if g is None:
                        self.depth = 0
                        self._cross_exit()
                        self.writable()         # (raises: closed meanwhile)
            return g
        except BaseException:
            lock.release()
            raise

    def __exit__(self, *exc):
        try:
            if self.depth:
                self.depth -= 1
                if self.depth == 0:
                    self._cross_exit()
        finally:
            self.lock.release()

    cdef bint _cross_enter(self, bint block) except -1:
        """The cross-process writer lock (the in-process one held): False if
        busy and not ``block``.  A dead holder's write is put right first.
        While the page says nothing moved since this writer last published
        or synced (its count is ``seen``, its generation ``published``), the
        log's end and checkpoint are read here; else ``Sharing.sync``."""
        sharing = self.sharing
        if self._page is None:
            self._page = sharing.page
        cdef SharedPage page = self._page
        cdef dh_store_page *p
        cdef int got = page.lock(block)
        if got == 1:
            return False
        try:
            p = page.page
            if got == 2:
                sharing.recover_dead(self)
                page.consistent()
                sharing.sync(self)
            elif (p != NULL and self.gen is not None and self.gen is self.published
                    and dh_load_acquire(&p.seq) == page.seen):
                self.end = p.log_end
                self.checkpoint = p.checkpoint
            else:
                sharing.sync(self)
        except BaseException:
            page.unlock()
            raise
        return True

    cdef int _cross_exit(self) except -1:
        """Publish the log's end (a new generation: ``Sharing.publish``), let
        the cross-process lock go."""
        cdef SharedPage page = self._page
        cdef dh_store_page *p = page.page
        try:
            if p != NULL and self.gen is not None and self.gen is self.published:
                p.log_end = self.end
                p.checkpoint = self.checkpoint
            else:
                self.sharing.publish(self)
        finally:
            page.unlock()
        return 0

    def nowait(self):
        """``with writer.nowait() as g:``: ``g`` is the writable generation, the
        lock taken, or None when another thread or process holds it (nothing taken)."""
        return NoWait(self)


cdef class NoWait:
    """``WriterDoor.nowait()``'s context manager (one use)."""

    cdef WriterDoor _door
    cdef object _held

    def __cinit__(self, WriterDoor door):
        self._door = door

    def __enter__(self):
        door = self._door
        lock = door.lock
        if not lock.acquire(False):
            return None
        try:
            g = door.writable()
            if door.sharing is not None:
                door.depth += 1
                if door.depth == 1:
                    try:
                        taken = door._cross_enter(False)
                    except BaseException:
                        door.depth = 0
                        raise
                    if not taken:
                        door.depth = 0
                        lock.release()
                        return None
                    g = door.gen
                    if g is None:
                        door.depth = 0
                        door._cross_exit()
                        door.writable()         # (raises: closed meanwhile)
            self._held = lock
            return g
        except BaseException:
            lock.release()
            raise

    def __exit__(self, *exc):
        lock = self._held
        self._held = None
        if lock is not None:
            try:
                door = self._door
                if door.depth:
                    door.depth -= 1
                    if door.depth == 0:
                        door._cross_exit()
            finally:
                lock.release()


cdef class MaintenanceLock:
    """The lock of compact(), rebuild_index() and close().  Taking it again in
    the thread that holds it (a ``rebuild_index`` progress callback calling
    ``close()`` or ``compact()``) raises ``RuntimeError`` instead of deadlocking.

    Fair: callers get it in the order they asked (a ticket each), so a thread
    running ``compact()`` in a tight loop cannot starve a ``close()`` from
    another thread (a plain lock is taken back by its releaser before the
    woken waiter runs).  A waiter interrupted (Ctrl-C) gives up its ticket."""

    cdef object _mutex
    cdef object _cond
    cdef object _owner
    cdef readonly Py_ssize_t _next      # the next ticket handed out (read by a test)
    cdef Py_ssize_t _serving    # the ticket that may hold the lock
    cdef set _given_up

    def __cinit__(self):
        self._mutex = _threading.Lock()
        self._cond = _threading.Condition(self._mutex)
        self._owner = None
        self._given_up = set()

    def __enter__(self):
        cdef Py_ssize_t ticket
        me = _threading.get_ident()
        if self._owner == me:
            raise RuntimeError("close(), compact() and rebuild_index() cannot be called "
                               "while this thread runs one of them (from a progress callback)")
        with self._mutex:
            ticket = self._next
            self._next += 1
            try:
                while self._serving != ticket:
                    self._cond.wait()
            except BaseException:
                if self._serving == ticket:
                    self._advance()
                else:
                    self._given_up.add(ticket)
                raise
            self._owner = me
        return self

    def __exit__(self, *exc):
        with self._mutex:
            self._owner = None
            self._advance()

    cdef void _advance(self) except *:
        self._serving += 1
        while self._serving in self._given_up:
            self._given_up.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


cdef class Maintaining:
    """``with Maintaining(maintenance, lock):`` held for a whole ``compact()``
    or ``rebuild_index()``: this process's fair ``MaintenanceLock``, then the
    cross-process one (``lock.hold_maintenance()``, an OFD lock on
    store.lock: two processes compacting at once would write the same new
    generation).  Compiled, as the door is, so that Ctrl-C cannot leave
    either held."""

    cdef MaintenanceLock _lock
    cdef object _cross

    def __cinit__(self, MaintenanceLock lock, cross):
        self._lock = lock
        self._cross = cross

    def __enter__(self):
        self._lock.__enter__()
        try:
            self._cross.hold_maintenance()
        except BaseException:
            try:
                self._cross.release_maintenance()
            finally:
                self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._cross.release_maintenance()
        finally:
            self._lock.__exit__(None, None, None)


cdef class Holding:
    """``with Holding(door, value) as v:``: the writer's door held across the
    block (``PayloadStore.writing()``), ``value`` handed out; compiled so
    that Ctrl-C cannot leave the door held."""

    cdef WriterDoor _door
    cdef object _value

    def __cinit__(self, WriterDoor door, value):
        self._door = door
        self._value = value

    def __enter__(self):
        self._door.__enter__()
        return self._value

    def __exit__(self, *exc):
        self._door.__exit__(None, None, None)
