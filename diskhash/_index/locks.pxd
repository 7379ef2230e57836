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
    int pthread_mutex_consistent(pthread_mutex_t *m)

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
    /* The cross-process writer lock in the lock file's shared page: shared
       between processes, robust (the next locker gets EOWNERDEAD when the
       holder died: LMDB's choice), error-checking (a thread that already
       holds it through another index object gets EDEADLK, not a hang). */
    static inline int dh_robust_mutex_init(void *m) {
        pthread_mutexattr_t a;
        int rc = pthread_mutexattr_init(&a);
        if (rc) return rc;
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        if (!rc) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        if (!rc) rc = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
        if (!rc) rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
        pthread_mutexattr_destroy(&a);
        /* One lock/unlock now: glibc leaves a robust mutex's count at 1 after
           its first lock, so later cycles leave the page byte-identical (a
           write call that changed nothing changes no byte of the lock file). */
        if (!rc && pthread_mutex_lock((pthread_mutex_t *)m) == 0)
            pthread_mutex_unlock((pthread_mutex_t *)m);
        return rc;
    }
    /* The calling thread, as a number (the owner of a `with writing()`). */
    static inline unsigned long dh_thread_id(void) { return (unsigned long)pthread_self(); }
    /* Whether the holder of a robust mutex died (the kernel marks its word
       FUTEX_OWNER_DIED) or nobody holds it: read without writing, so a
       reader that maps the lock file read-only can tell.  glibc's lock word
       is the mutex's first int. */
    static inline int dh_robust_owner_gone(const void *m) {
    #if defined(__GLIBC__) && defined(__linux__)
        unsigned int w = __atomic_load_n((const unsigned int *)m, __ATOMIC_RELAXED);
        return (w & 0x40000000u) != 0 || (w & 0x3fffffffu) == 0;
    #else
        (void)m;
        return 0;
    #endif
    }
    """
    int dh_rwlockattr_prefer_writer(pthread_rwlockattr_t *attr) nogil
    unsigned long dh_thread_id() nogil
    int dh_robust_owner_gone(const void *m) nogil
    int dh_robust_mutex_init(void *m) nogil
