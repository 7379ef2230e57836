# pthread locks for the index: declarations only.
#
# Readers take the rwlock shared; slot writes and map swaps take it exclusive.
# Writers prefer: a steady stream of readers cannot starve a grow's swap.
# Rule that keeps the GIL out of deadlocks: nobody blocks on these locks while
# holding the GIL (try first, then wait `with nogil`), and nobody holding
# them waits for the GIL except the writer that owns both.
cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_rwlockattr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_rwlock_init(pthread_rwlock_t *lock, const pthread_rwlockattr_t *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *lock)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_tryrdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_wrlock(pthread_rwlock_t *lock)
    int pthread_rwlock_trywrlock(pthread_rwlock_t *lock)
    int pthread_rwlock_unlock(pthread_rwlock_t *lock)
    int pthread_rwlockattr_init(pthread_rwlockattr_t *attr)
    int pthread_rwlockattr_destroy(pthread_rwlockattr_t *attr)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from *:
    """
    /* inline: a module that cimports these declarations without calling it
       (_batch) compiles without -Wunused-function. */
    static inline int dh_rwlockattr_prefer_writer(pthread_rwlockattr_t *attr) {
    #if defined(__GLIBC__)
        return pthread_rwlockattr_setkind_np(attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    #else
        (void)attr;
        return 0;
    #endif
    }
    """
    int dh_rwlockattr_prefer_writer(pthread_rwlockattr_t *attr) nogil
