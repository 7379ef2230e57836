# cython: language_level=3
"""Python objects <-> C integers for keys and records, as cheaply as CPython allows.

Keys are ints in [0, 2**128) (``uuid.UUID`` accepted as its ``.int``); ``bool``
is refused even though it is an ``int`` subclass, since ``idx[True]`` is
almost surely a bug.  Records are built by filling a tuple subclass directly
(as ``structseq`` does), skipping the Python-level constructor.

The record classes come from ``diskhash._types`` (the layer below), imported
here like any dependency.  This module is their constructor: at its import it
installs its validator as the one ``PayloadMeta.__new__`` calls (kept in
Python there, so a wrong number or name of arguments is reported as for any
``NamedTuple``) and, for the common call of five positional arguments, as the
class's vectorcall (``_install`` at the end).  ``import diskhash`` imports it (the index cimports it), so every
``PayloadMeta`` a program can build is validated.
"""
import operator
import uuid

from diskhash._types import Compression, PayloadMeta
from diskhash.errors import KeyRangeError

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from diskhash._format.sochidx2 cimport MAX_COMPRESSION

cdef extern from *:
    """
    #include <string.h>
    /* Little-endian 16-byte conversion; 3.13 made the private function's
       signature change and added a public replacement. */
    static int dh_long_to_u128(PyObject *v, uint64_t *lo, uint64_t *hi) {
        unsigned char buf[16];
    #if PY_VERSION_HEX >= 0x030D0000
        Py_ssize_t n = PyLong_AsNativeBytes(v, buf, 16,
            Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
            Py_ASNATIVEBYTES_REJECT_NEGATIVE);
        if (n < 0) {
            /* REJECT_NEGATIVE raises ValueError; an out-of-range int is an
               OverflowError on every other version and everywhere else. */
            if (PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_OverflowError, "can't convert negative int to unsigned");
            }
            return -1;
        }
        if (n > 16) { PyErr_SetString(PyExc_OverflowError, "int too big"); return -1; }
    #else
        if (_PyLong_AsByteArray((PyLongObject *)v, buf, 16, 1, 0) < 0) return -1;
    #endif
        memcpy(lo, buf, 8);
        memcpy(hi, buf + 8, 8);
        return 0;
    }
    static PyObject *dh_u128_to_long(uint64_t lo, uint64_t hi) {
        unsigned char buf[16];
        if (hi == 0) return PyLong_FromUnsignedLongLong(lo);
        memcpy(buf, &lo, 8);
        memcpy(buf + 8, &hi, 8);
    #if PY_VERSION_HEX >= 0x030D0000
        return PyLong_FromUnsignedNativeBytes(buf, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
    #else
        return _PyLong_FromByteArray(buf, 16, 1, 0);
    #endif
    }
    /* The common case without the 16-byte round trip: an exact, non-negative
       int read digit by digit (CPython's 30-bit digits).  3.10/3.11 keep the
       digit count in ob_size; 3.12+ use the public compact-int API for small
       values.  Anything else (negative, > 5 digits, other layouts) takes the
       portable path above, which raises the errors. */
    static inline int dh_key_fast(PyObject *v, uint64_t *lo, uint64_t *hi) {
    #if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30 && defined(__SIZEOF_INT128__)
        Py_ssize_t n = Py_SIZE(v);
        const digit *d = ((PyLongObject *)v)->ob_digit;
        unsigned __int128 x;
        switch (n) {
        case 0: *lo = 0; *hi = 0; return 0;
        case 1: *lo = d[0]; *hi = 0; return 0;
        case 2: *lo = (uint64_t)d[0] | ((uint64_t)d[1] << 30); *hi = 0; return 0;
        case 3:
            x = (unsigned __int128)d[0] | ((unsigned __int128)d[1] << 30)
                | ((unsigned __int128)d[2] << 60);
            break;
        case 4:
            x = (unsigned __int128)d[0] | ((unsigned __int128)d[1] << 30)
                | ((unsigned __int128)d[2] << 60) | ((unsigned __int128)d[3] << 90);
            break;
        case 5:
            if (d[4] >> 8) return dh_long_to_u128(v, lo, hi);     /* >= 2**128 */
            x = (unsigned __int128)d[0] | ((unsigned __int128)d[1] << 30)
                | ((unsigned __int128)d[2] << 60) | ((unsigned __int128)d[3] << 90)
                | ((unsigned __int128)d[4] << 120);
            break;
        default:
            return dh_long_to_u128(v, lo, hi);
        }
        *lo = (uint64_t)x;
        *hi = (uint64_t)(x >> 64);
        return 0;
    #elif PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject *)v)) {
            Py_ssize_t c = PyUnstable_Long_CompactValue((PyLongObject *)v);
            if (c >= 0) { *lo = (uint64_t)c; *hi = 0; return 0; }
        }
        return dh_long_to_u128(v, lo, hi);
    #else
        return dh_long_to_u128(v, lo, hi);
    #endif
    }
    typedef PyObject *(*dh_vectorcallfunc)(PyObject *, PyObject *const *, size_t, PyObject *);
    /* Make `t(...)` call `f` directly with the argument array (no tuple, no
       __new__ lookup), as builtin types do.  tp_vectorcall is never
       inherited, so subclasses keep the ordinary path. */
    static void dh_set_type_vectorcall(PyTypeObject *t, dh_vectorcallfunc f) {
        t->tp_vectorcall = (vectorcallfunc)f;
    }
    /* A 5-tuple of the given tuple subclass, filled without calling its
       constructor.  Steals nothing: every item is INCREF'd by the caller. */
    static PyObject *dh_new_tuple5(PyTypeObject *t, PyObject *a, PyObject *b,
                                   PyObject *c, PyObject *d, PyObject *e) {
        PyObject *r = t->tp_alloc(t, 5);
        if (r == NULL) return NULL;
        PyTuple_SET_ITEM(r, 0, a); PyTuple_SET_ITEM(r, 1, b);
        PyTuple_SET_ITEM(r, 2, c); PyTuple_SET_ITEM(r, 3, d);
        PyTuple_SET_ITEM(r, 4, e);
        return r;
    }
    """
    int dh_long_to_u128(object v, uint64_t *lo, uint64_t *hi) except -1
    int dh_key_fast(object v, uint64_t *lo, uint64_t *hi) except -1
    ctypedef PyObject *(*dh_vectorcallfunc)(PyObject *, PyObject **, size_t, PyObject *)
    void dh_set_type_vectorcall(PyTypeObject *t, dh_vectorcallfunc f)
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    # The same functions without Cython's exception check, for paths that
    # test the result themselves (no try/except bookkeeping on success).
    int dh_key_fast_nx "dh_key_fast"(object v, uint64_t *lo, uint64_t *hi) noexcept
    unsigned long long PyLong_AsUnsignedLongLong_nx "PyLong_AsUnsignedLongLong"(object o) noexcept
    long PyLong_AsLong_nx "PyLong_AsLong"(object o) noexcept
    PyObject *PyErr_Occurred() noexcept
    int PyErr_ExceptionMatches(object exc) noexcept
    void PyErr_Clear() noexcept
    object dh_u128_to_long(uint64_t lo, uint64_t hi)
    object dh_new_tuple5(PyTypeObject *t, object a, object b, object c, object d, object e)
    bint PyLong_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyBool_Check(object o)
    bint PyTuple_Check(object o)
    PyObject *PyTuple_GET_ITEM_PTR "PyTuple_GET_ITEM"(object t, Py_ssize_t i)
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? <unsigned long long>-1
    unsigned long PyLong_AsUnsignedLong(object o) except? <unsigned long>-1

cdef object _UUID = uuid.UUID
cdef object _payload_meta_type = PayloadMeta
cdef object _c0 = Compression.NONE, _c1 = Compression.LZ4, _c2 = Compression.ZSTD

if len(Compression) != MAX_COMPRESSION + 1 or (int(_c0), int(_c1), int(_c2)) != (0, 1, 2):
    raise RuntimeError("Compression must have exactly NONE, LZ4, ZSTD (0, 1, 2)")


cdef object compression_member(uint8_t value):
    if value == 0:
        return _c0
    if value == 1:
        return _c1
    return _c2


cdef int _key_slow(object key, uint64_t *lo, uint64_t *hi) except -1:
    if isinstance(key, _UUID):
        key = key.int
    elif PyBool_Check(key):
        raise TypeError(f"edge_id must be an int in [0, 2**128) or a uuid.UUID, not bool ({key!r})")
    elif not PyLong_Check(key):
        as_int = _index_or_none(key)
        if as_int is None:
            raise TypeError(
                f"edge_id must be an int in [0, 2**128) or a uuid.UUID, "
                f"not {type(key).__name__}")
        key = as_int
    if key < 0 or key >= 2**128:
        raise KeyRangeError(key)
    dh_long_to_u128(int(key), lo, hi)
    return 0


cdef int key_to_u128(object key, uint64_t *lo, uint64_t *hi) except -1:
    if PyLong_CheckExact(key):
        if dh_key_fast_nx(key, lo, hi) == 0:
            return 0
        if PyErr_ExceptionMatches(OverflowError):
            PyErr_Clear()
            raise KeyRangeError(key) from None
        return -1                       # some other error: already set
    return _key_slow(key, lo, hi)


cdef object u128_to_int(uint64_t lo, uint64_t hi):
    return dh_u128_to_long(lo, hi)


# Field validators: the common case is a few C instructions inline; every
# error (and its message) is built in the out-of-line *_error functions,
# which also take numpy integers (anything with __index__ but bool) by
# converting them and validating again, so values read from get_many's
# arrays can be passed back.

cdef object _index_or_none(object v):
    """``v`` as an int if it is an integer type other than bool, else None.

    numpy's bool scalars count as bool (older numpy lets them through
    ``__index__`` with a DeprecationWarning)."""
    if PyBool_Check(v) or getattr(getattr(v, "dtype", None), "kind", None) == "b":
        return None
    try:
        v = operator.index(v)
    except TypeError:
        return None
    return None if PyBool_Check(v) else v


cdef uint64_t _u64_error(object v, str name) except? 0xFFFFFFFFFFFFFFFFULL:
    if not PyLong_Check(v):
        i = _index_or_none(v)
        if i is not None:
            return _u64_field(i, name)
    if not PyLong_Check(v) or PyBool_Check(v):
        raise TypeError(f"PayloadMeta.{name} must be an int, not {type(v).__name__}")
    if PyErr_Occurred() == NULL or PyErr_ExceptionMatches(OverflowError):
        PyErr_Clear()
        raise OverflowError(f"PayloadMeta.{name} = {v} is outside [0, 2**64)") from None
    return 0xFFFFFFFFFFFFFFFFULL        # some other error: already set


cdef inline uint64_t _u64_field(object v, str name) except? 0xFFFFFFFFFFFFFFFFULL:
    # The key's digit-level conversion: int subclasses (IntEnum) share the layout.
    cdef uint64_t lo, hi
    if PyLong_Check(v) and not PyBool_Check(v):
        if dh_key_fast_nx(v, &lo, &hi) == 0 and hi == 0:
            return lo
    return _u64_error(v, name)


cdef uint32_t _u32_error(object v, str name) except? 0xFFFFFFFFU:
    if not PyLong_Check(v):
        i = _index_or_none(v)
        if i is not None:
            return _u32_field(i, name)
    if not PyLong_Check(v) or PyBool_Check(v):
        raise TypeError(f"PayloadMeta.{name} must be an int, not {type(v).__name__}")
    if PyErr_Occurred() != NULL:
        # Out of range as the 128-bit conversion sees it: OverflowError, or
        # ValueError for a negative int on 3.13+.  Anything else stands.
        if not (PyErr_ExceptionMatches(OverflowError) or PyErr_ExceptionMatches(ValueError)):
            return 0xFFFFFFFFU
        PyErr_Clear()
    raise OverflowError(f"PayloadMeta.{name} = {v} is outside [0, 2**32)")


cdef inline uint32_t _u32_field(object v, str name) except? 0xFFFFFFFFU:
    cdef uint64_t lo, hi
    if PyLong_Check(v) and not PyBool_Check(v):
        if dh_key_fast_nx(v, &lo, &hi) == 0 and hi == 0 and lo <= 0xFFFFFFFFULL:
            return <uint32_t>lo
    return _u32_error(v, name)


cdef uint8_t _compression_error(object v) except 255:
    if not PyLong_Check(v):
        i = _index_or_none(v)
        if i is not None:
            return _compression_field(i)
    if not PyLong_Check(v) or PyBool_Check(v):
        raise TypeError(f"PayloadMeta.compression must be a Compression or int, not {type(v).__name__}")
    if PyErr_Occurred() != NULL:
        if not PyErr_ExceptionMatches(OverflowError):
            return 255                  # some other error: already set
        PyErr_Clear()
    raise ValueError(
        f"PayloadMeta.compression = {v!r} is not a known compression "
        f"(0 NONE, 1 LZ4, 2 ZSTD)")


cdef inline uint8_t _compression_field(object v) except 255:
    cdef long c
    if PyLong_Check(v) and not PyBool_Check(v):
        c = PyLong_AsLong_nx(v)
        if 0 <= c <= MAX_COMPRESSION:
            return <uint8_t>c
    return _compression_error(v)


cdef int meta_from_object(object meta, uint64_t lo, uint64_t hi, object key,
                          meta_fields *out) except -1:
    """Validate a record for ``insert(key, meta)``; ``key`` is (lo, hi)."""
    cdef uint64_t mlo, mhi
    if not PyTuple_Check(meta) or PyTuple_GET_SIZE(meta) != 5:
        raise TypeError(
            "meta must be a PayloadMeta (or a 5-tuple edge_id, offset, length, "
            f"compression, uncompressed_length), not {type(meta).__name__}")
    edge_id = <object>PyTuple_GET_ITEM_PTR(meta, 0)
    if edge_id is not key:
        key_to_u128(edge_id, &mlo, &mhi)
        if mlo != lo or mhi != hi:
            raise ValueError(
                f"meta.edge_id ({edge_id!r}) differs from the key it is inserted "
                f"under ({u128_to_int(lo, hi)}): the entry would be unreachable")
    out.offset = _u64_field(<object>PyTuple_GET_ITEM_PTR(meta, 1), "offset")
    out.length = _u32_field(<object>PyTuple_GET_ITEM_PTR(meta, 2), "length")
    out.compression = _compression_field(<object>PyTuple_GET_ITEM_PTR(meta, 3))
    out.uncompressed_length = _u32_field(<object>PyTuple_GET_ITEM_PTR(meta, 4), "uncompressed_length")
    return 0


cdef inline object _record_from_objects(object edge_id, object c, object o, object n, object u):
    # dh_new_tuple5 stores borrowed references: give it its own.
    Py_INCREF(edge_id)
    Py_INCREF(o)
    Py_INCREF(n)
    Py_INCREF(c)
    Py_INCREF(u)
    return dh_new_tuple5(<PyTypeObject*>_payload_meta_type, edge_id, o, n, c, u)


cdef object make_record(object edge_id, uint8_t compression, uint64_t offset,
                        uint32_t length, uint32_t uncompressed_length):
    return _record_from_objects(edge_id, compression_member(compression), offset, length,
                                uncompressed_length)


cdef object _new_record(object cls, object edge_id, object offset, object length,
                        object compression, object uncompressed_length):
    cdef uint64_t lo, hi
    key_to_u128(edge_id, &lo, &hi)
    if not PyLong_CheckExact(edge_id):
        edge_id = u128_to_int(lo, hi)
    cdef uint64_t off = _u64_field(offset, "offset")
    cdef uint32_t ln = _u32_field(length, "length")
    cdef uint8_t comp = _compression_field(compression)
    cdef uint32_t ul = _u32_field(uncompressed_length, "uncompressed_length")
    if cls is not _payload_meta_type:
        return tuple.__new__(cls, (edge_id, off, ln, compression_member(comp), ul))
    # Exact ints are immutable and already hold the validated values: reuse them.
    if not PyLong_CheckExact(offset):
        offset = off
    if not PyLong_CheckExact(length):
        length = ln
    if not PyLong_CheckExact(uncompressed_length):
        uncompressed_length = ul
    return _record_from_objects(edge_id, compression_member(comp), offset, length,
                                uncompressed_length)


def new_payload_meta(cls, edge_id, offset, length, compression, uncompressed_length):
    """``PayloadMeta.__new__``: validate every field, normalise the key to an int."""
    return _new_record(cls, edge_id, offset, length, compression, uncompressed_length)


cdef object _payload_meta_vectorcall(object cls, PyObject **args, size_t nargsf, PyObject *kwnames):
    """``PayloadMeta(...)``: five positional arguments go straight to the
    validator; anything else takes ``type.__call__`` (``__new__``), so the
    behaviour and the errors are the same either way."""
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf)
    cdef Py_ssize_t i
    if kwnames == NULL and nargs == 5:
        return _new_record(cls, <object>args[0], <object>args[1], <object>args[2],
                           <object>args[3], <object>args[4])
    positional = tuple([<object>args[i] for i in range(nargs)])
    keywords = {}
    if kwnames != NULL:
        names = <object>kwnames
        for i in range(len(names)):
            keywords[names[i]] = <object>args[nargs + i]
    return type.__call__(cls, *positional, **keywords)


cdef _install(record_type):
    """Make ``record_type`` (``PayloadMeta``) construct through this module:
    its ``__new__`` (``_types``) calls ``new_payload_meta`` for every call
    form, and the vectorcall takes five positional arguments straight here."""
    if not (isinstance(record_type, type) and issubclass(record_type, tuple) and type(record_type) is type):
        raise TypeError("records are built as instances of a plain tuple subclass")
    record_type._validate = staticmethod(new_payload_meta)
    dh_set_type_vectorcall(<PyTypeObject*>record_type, <dh_vectorcallfunc>_payload_meta_vectorcall)


_install(PayloadMeta)
