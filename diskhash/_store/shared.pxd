# The store's shared page (store.lock): declarations for the modules that
# cimport it (read.pyx watches its generation counter).
from libc.stdint cimport uint64_t


cdef extern from *:
    """
    #include <pthread.h>
    #include <stdint.h>
    #include <stddef.h>
    /* The page every opener of one store maps from store.lock (after the
       lock file's marker, where an index's lock file keeps its undo page).
       `seq` counts the times the store's current generation changed (a
       compact(), a rebuild_index(), a writer's recovery): a process whose
       count differs reads the MANIFEST again.  `log_end` and `checkpoint`
       belong to the generation `data_gen`/`index_gen` and are written by the
       writer holding `mutex` (robust, process-shared: the store's
       cross-process writer lock).  `live` is 1 while the fields describe the
       store as opened writable in this session (every open shares it); an
       open that finds itself alone resets it. */
    #define DH_STORE_PAGE_MAGIC 0x3152544f534b5344ULL   /* "DSKSTOR1" */
    typedef struct {
        uint64_t magic;
        uint64_t seq;
        uint64_t live;
        uint64_t data_gen;
        uint64_t index_gen;
        uint64_t log_end;
        uint64_t checkpoint;
        uint64_t owner_pid;
        pthread_mutex_t mutex;
    } dh_store_page;
    _Static_assert(offsetof(dh_store_page, mutex) == 64, "store page mutex");
    _Static_assert(sizeof(pthread_mutex_t) <= 64, "pthread_mutex_t fits");
    """
    ctypedef struct dh_store_page:
        uint64_t magic
        uint64_t seq
        uint64_t live
        uint64_t data_gen
        uint64_t index_gen
        uint64_t log_end
        uint64_t checkpoint
        uint64_t owner_pid
    uint64_t DH_STORE_PAGE_MAGIC


cdef class SharedPage:
    cdef object _map
    cdef object _view
    cdef dh_store_page *page
    cdef readonly bint writable
    cdef readonly object path
    cdef public uint64_t seen
    cdef dh_store_page *_page(self) except NULL
    cdef dh_store_page *_wpage(self) except NULL
    cpdef int lock(self, bint block) except -1
    cpdef int unlock(self) except -1
