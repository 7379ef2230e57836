# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The PayloadStore's read hot path: check and copy one record out of the data file's map.

``MapReader(mapping)`` holds a buffer of the map (an ``mmap``); ``read(meta,
verify)`` checks the frame header against the ``PayloadMeta`` and, if asked,
the CRC-32C checksum (our own ``_crc32c.h``; this module's ``checksum`` is
also the one the Python side computes frames with), and returns the stored
bytes, or a small int saying why not (``BEYOND`` the map, ``MISMATCH``,
``BAD_CHECKSUM``): the Python caller remaps or raises, so the messages live
in one place (``diskhash/_store.py``).  The GIL is held: the copy is a few
KiB at most (bigger records are read with ``pread``).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsUnsignedLongLongMask
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "_crc32c.h":
    void dh_crc32c_init()
    uint32_t dh_crc32c(uint32_t crc, const void *data, size_t n) nogil
    uint32_t dh_crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) nogil

dh_crc32c_init()

BEYOND = 1
MISMATCH = 2
BAD_CHECKSUM = 3

cdef enum:
    FRAME_SIZE = 32
    HEADER_SIZE = 64
    FRAME_MARK = 0xD5A7

cdef packed struct frame_t:
    uint32_t checksum
    uint8_t kind
    uint8_t compression
    uint16_t mark
    uint32_t stored_length
    uint32_t uncompressed_length
    uint64_t key_lo
    uint64_t key_hi


cdef enum:
    NOGIL_CHECKSUM = 1 << 16    # bytes from which checksum() lets other threads run


def checksum(data):
    """The frame checksum (CRC-32C, as ``google_crc32c.value``) of a bytes-like object."""
    cdef Py_buffer view
    cdef uint32_t crc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= NOGIL_CHECKSUM:
            with nogil:
                crc = dh_crc32c(0, view.buf, <size_t>view.len)
        else:
            crc = dh_crc32c(0, view.buf, <size_t>view.len)
        return crc
    finally:
        PyBuffer_Release(&view)


def _checksum_soft(data):
    """``checksum`` by the portable table code even where the CPU has a crc32
    instruction (for the tests: both paths must agree)."""
    cdef Py_buffer view
    cdef uint32_t crc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        crc = dh_crc32c_soft(0xFFFFFFFF, <const unsigned char *>view.buf, <size_t>view.len)
        return crc ^ 0xFFFFFFFF
    finally:
        PyBuffer_Release(&view)


cdef inline Py_ssize_t _frame_end(const uint8_t *b, Py_ssize_t p, Py_ssize_t n, frame_t *f) noexcept nogil:
    """Where the whole, valid frame at ``b + p`` ends (its header copied to
    ``f``), or -1: a bad mark, kind or compression byte, lengths that do not
    fit the kind, a frame running past ``n``, or a checksum mismatch."""
    cdef Py_ssize_t end
    memcpy(f, b + p, FRAME_SIZE)
    if f.mark != FRAME_MARK or f.compression > 2:
        return -1
    if f.kind == 1:
        if ((f.compression == 0 and f.uncompressed_length != f.stored_length)
                or (f.compression != 0 and (f.stored_length == 0 or f.uncompressed_length == 0))):
            return -1
    elif f.kind == 2:
        if f.stored_length or f.uncompressed_length or f.compression:
            return -1
    else:
        return -1
    end = p + FRAME_SIZE + <Py_ssize_t>f.stored_length
    if end > n:
        return -1
    if dh_crc32c(0, b + p + 4, <size_t>(FRAME_SIZE - 4 + f.stored_length)) != f.checksum:
        return -1
    return end


cdef inline object _frame_key(const frame_t *f):
    """The frame's edge id as a Python int (small ids skip the 128-bit join)."""
    if f.key_hi:
        return (<object>f.key_hi << 64) | <object>f.key_lo
    return <object>f.key_lo


def scan_into(data, Py_ssize_t p, long long base, dict final):
    """Fold the valid frames of ``data[p:]`` (``data`` starts at file offset
    ``base``) into ``final``: key -> (payload offset, stored length,
    compression, uncompressed length) for a put, None for a tombstone.
    Returns where the first frame that is not valid (or not whole) starts.
    The checks are those of ``_payload_format._frame_at``.
    """
    cdef Py_buffer view
    cdef frame_t f
    cdef const uint8_t *b
    cdef Py_ssize_t n, end
    if p < 0:
        raise ValueError(f"start offset must be >= 0, not {p}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        b = <const uint8_t *>view.buf
        n = view.len
        while p + FRAME_SIZE <= n:
            end = _frame_end(b, p, n, &f)
            if end < 0:
                break
            key = _frame_key(&f)
            if f.kind == 1:
                final[key] = (base + p + FRAME_SIZE, f.stored_length, f.compression, f.uncompressed_length)
            else:
                final[key] = None
            p = end
        return p
    finally:
        PyBuffer_Release(&view)


def copy_live(data, Py_ssize_t p, long long base, get, list out, dict live, long long new_base):
    """Compaction's copy step over ``data[p:]`` (at file offset ``base``): each
    valid put frame that ``get(key)`` (the index) still points at is appended,
    as bytes, to ``out`` and recorded in ``live`` at its new place (``new_base``
    onwards).  Returns ``(stop, new_base)``; frame checks as in ``scan_into``.
    """
    cdef Py_buffer view
    cdef frame_t f
    cdef const uint8_t *b
    cdef Py_ssize_t n, end
    if p < 0:
        raise ValueError(f"start offset must be >= 0, not {p}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        b = <const uint8_t *>view.buf
        n = view.len
        while p + FRAME_SIZE <= n:
            end = _frame_end(b, p, n, &f)
            if end < 0:
                break
            if f.kind == 1:
                key = _frame_key(&f)
                m = get(key)
                if m is not None and <long long>(<object>PyTuple_GET_ITEM(m, 1)) == base + p + FRAME_SIZE:
                    out.append(PyBytes_FromStringAndSize(<const char *>(b + p), end - p))
                    live[key] = (new_base + FRAME_SIZE, f.stored_length, f.compression, f.uncompressed_length)
                    new_base += end - p
            p = end
        return p, new_base
    finally:
        PyBuffer_Release(&view)


cdef class MapReader:
    """A buffer of a map of the data file, for ``read``."""

    cdef Py_buffer view
    cdef bint held
    cdef const uint8_t *base
    cdef readonly Py_ssize_t size

    def __cinit__(self, mapping):
        PyObject_GetBuffer(mapping, &self.view, PyBUF_SIMPLE)
        self.held = True
        self.base = <const uint8_t *>self.view.buf
        self.size = self.view.len

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False

    def release(self):
        """Let go of the map (reads then answer ``BEYOND``), so it can be closed."""
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False
        self.base = NULL
        self.size = 0

    def read_many(self, list metas, bint verify, Py_ssize_t big):
        """``read`` of each item of ``metas`` (None stays None), in one call.

        Returns ``(results, fixups)``: ``fixups`` lists the positions the caller
        must still handle (a compressed payload to decode, a record over ``big``
        bytes to read with pread, an error code).
        """
        cdef Py_ssize_t i, n = len(metas)
        cdef list out = [None] * n
        cdef list fixups = []
        for i in range(n):
            m = metas[i]
            if m is None:
                continue
            if not PyTuple_Check(m) or PyTuple_GET_SIZE(m) != 5:
                raise TypeError("metas must hold PayloadMeta records or None")
            if <Py_ssize_t>(<object>PyTuple_GET_ITEM(m, 2)) > big:
                fixups.append(i)
                continue
            got = self.read(m, verify)
            out[i] = got
            if type(got) is not bytes or <int>(<object>PyTuple_GET_ITEM(m, 3)) != 0:
                fixups.append(i)
        return out, fixups

    def read(self, meta, bint verify):
        """The stored bytes of the record ``meta`` (a PayloadMeta), or an int error code."""
        cdef frame_t f
        cdef object edge_id
        cdef uint64_t offset, length
        cdef int compression
        cdef uint64_t ulen
        if not PyTuple_Check(meta) or PyTuple_GET_SIZE(meta) != 5:
            raise TypeError("meta must be a PayloadMeta")
        edge_id = <object>PyTuple_GET_ITEM(meta, 0)
        offset = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 1))
        length = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 2))
        compression = <int>(<object>PyTuple_GET_ITEM(meta, 3))
        ulen = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 4))
        # (offset + length could wrap past 2**64: compare without adding)
        if (offset < HEADER_SIZE + FRAME_SIZE or offset > <uint64_t>self.size
                or length > <uint64_t>self.size - offset):
            return BEYOND
        memcpy(&f, self.base + offset - FRAME_SIZE, FRAME_SIZE)
        if (f.kind != 1 or f.mark != FRAME_MARK or f.stored_length != length
                or f.compression != compression or f.uncompressed_length != ulen
                or f.key_lo != PyLong_AsUnsignedLongLongMask(edge_id)
                or f.key_hi != <uint64_t>(edge_id >> 64)):
            return MISMATCH
        if verify and dh_crc32c(0, self.base + offset - FRAME_SIZE + 4,
                                <size_t>(FRAME_SIZE - 4 + length)) != f.checksum:
            return BAD_CHECKSUM
        return PyBytes_FromStringAndSize(<const char *>(self.base + offset), <Py_ssize_t>length)
