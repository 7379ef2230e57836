# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The payload log's frame, compiled: the CRC-32C checksum of a buffer and the frame scan.

Byte layout only, no I/O: ``frame.pxd`` declares the frame (struct,
constants, ``frame_end``, ``frame_matches``) for the compiled modules; this
module gives Python the two loops it must not run itself.  ``checksum`` is the
one checksum of the store's files (frames, data file header, manifest: every
Python path in ``_format/payload.py`` computes with it), over our own
``crc32c.h``.  ``scan_into`` folds a run of frames into a dict: the replay at
open (``payload.replay``).  The store's whole-log passes that also probe an
index (``LogFold``, compaction's copy) live in ``_store/read.pyx`` and check
each frame with the same inline ``frame_end``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t

# (frame.pxd's declarations are this module's own: no cimport needed.)

dh_crc32c_init()

cdef enum:
    NOGIL_CHECKSUM = 1 << 16    # bytes from which checksum() lets other threads run


def checksum(data, uint32_t crc=0):
    """The frame checksum (CRC-32C, as ``google_crc32c.value``) of a bytes-like object.

    ``crc``: the checksum of the bytes before ``data`` (as ``google_crc32c.extend``),
    so a long frame can be checked in bounded pieces."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= NOGIL_CHECKSUM:
            with nogil:
                crc = dh_crc32c(crc, view.buf, <size_t>view.len)
        else:
            crc = dh_crc32c(crc, view.buf, <size_t>view.len)
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


def scan_into(data, Py_ssize_t p, long long base, dict final):
    """Fold the valid frames of ``data[p:]`` (``data`` starts at file offset
    ``base``) into ``final``: key -> (payload offset, stored length,
    compression, uncompressed length) for a put, None for a tombstone.
    Returns where the first frame that is not valid (or not whole) starts.
    The checks are ``frame_end``'s (``frame.pxd``), those of
    ``payload.frame_at``.
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
            end = frame_end(b, p, n, &f)
            if end < 0:
                break
            key = frame_key(&f)
            if f.kind == KIND_PUT:
                final[key] = (base + p + FRAME_SIZE, f.stored_length, f.compression, f.uncompressed_length)
            else:
                final[key] = None
            p = end
        return p
    finally:
        PyBuffer_Release(&view)
