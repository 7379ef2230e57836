"""The cross-process writer lock: flock, an OFD byte-range lock, or a robust
process-shared pthread mutex in a mapped page, measured side by side.

    python benchmarks/process_locks.py [--rounds 200000] [--dir DIR]

Every write call of a store shared by several processes takes a writer lock
for its own duration, so the price of one uncontended acquire + release is
added to every ``put``.  Three candidates:

* ``flock(LOCK_EX)`` / ``flock(LOCK_UN)`` on a second descriptor of the lock
  file (the kernel releases it when the holder dies);
* an OFD lock (``F_OFD_SETLKW`` on byte 0 of the lock file; Linux >= 3.15):
  per open file description like flock, so threads of one process exclude
  each other only through their own descriptors, and released on death too;
* a ``PTHREAD_PROCESS_SHARED`` + ``PTHREAD_MUTEX_ROBUST`` mutex in a mapped
  page of the lock file (LMDB's choice): no system call when uncontended, but
  a holder's death is reported to the next locker as ``EOWNERDEAD``, and a
  file on a file system without shared futexes cannot hold one.  Called here
  through ctypes, whose own cost per call is printed apart (``ctypes no-op``):
  compiled code pays only the mutex, so read its row as an upper bound (on a
  busy machine the two figures are too noisy to subtract).

Then the same three with two processes taking turns (each holds the lock for
an empty critical section, ``--rounds`` times): the hand-off cost a writer
pays while another process writes.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import multiprocessing
import os
import platform
import struct
import tempfile
import time

PTHREAD_PROCESS_SHARED = 1
PTHREAD_MUTEX_ROBUST = 1
EOWNERDEAD = 130
MUTEX_BYTES = 64            # >= sizeof(pthread_mutex_t) on every glibc target
ATTR_BYTES = 16             # >= sizeof(pthread_mutexattr_t)

_libc = ctypes.CDLL(None, use_errno=True)


def _ofd(kind: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (native alignment).
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 1, 0)


OFD_LOCK = _ofd(fcntl.F_WRLCK)
OFD_UNLOCK = _ofd(fcntl.F_UNLCK)


class FlockLock:
    name = "flock"

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class OfdLock:
    name = "OFD fcntl"

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def acquire(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, OFD_LOCK)

    def release(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, OFD_UNLOCK)


class RobustMutex:
    """A robust process-shared mutex at offset 0 of the mapped file."""

    name = "robust mutex (ctypes)"

    def __init__(self, path: str, create: bool = False) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, mmap.PAGESIZE)
        self.mutex = ctypes.c_char.from_buffer(self.map)
        self.ptr = ctypes.byref(self.mutex)
        if create:
            attr = ctypes.create_string_buffer(ATTR_BYTES)
            _libc.pthread_mutexattr_init(attr)
            _libc.pthread_mutexattr_setpshared(attr, PTHREAD_PROCESS_SHARED)
            _libc.pthread_mutexattr_setrobust(attr, PTHREAD_MUTEX_ROBUST)
            _libc.pthread_mutex_init(self.ptr, attr)
        self._lock = _libc.pthread_mutex_lock
        self._unlock = _libc.pthread_mutex_unlock

    def acquire(self) -> None:
        rc = self._lock(self.ptr)
        if rc == EOWNERDEAD:
            _libc.pthread_mutex_consistent(self.ptr)
        elif rc:
            raise OSError(rc, os.strerror(rc))

    def release(self) -> None:
        self._unlock(self.ptr)


KINDS = {"flock": FlockLock, "ofd": OfdLock, "mutex": RobustMutex}


def uncontended(lock, rounds: int) -> float:
    acquire, release = lock.acquire, lock.release
    t = time.perf_counter()
    for _ in range(rounds):
        acquire()
        release()
    return (time.perf_counter() - t) / rounds


def ctypes_noop(rounds: int) -> float:
    getpid = _libc.getpid     # a syscall-free call in glibc >= 2.25 (cached pid)
    t = time.perf_counter()
    for _ in range(rounds):
        getpid()
        getpid()
    return (time.perf_counter() - t) / rounds


def _turns(kind: str, path: str, rounds: int, start, out) -> None:
    lock = KINDS[kind](path)
    start.wait()
    out.put(uncontended(lock, rounds))


def contended(kind: str, path: str, rounds: int) -> float:
    """Two processes, each acquiring and releasing ``rounds`` times: the
    wall time per acquire of the slower one."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_turns, args=(kind, path, rounds, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    per = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return max(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200_000, help="acquire/release pairs per measurement")
    ap.add_argument("--dir", default=None, help="where the lock file goes (default: the temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "lock")
        with open(path, "wb") as f:
            f.truncate(mmap.PAGESIZE)
        RobustMutex(path, create=True)
        print(f"# {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        noop = ctypes_noop(args.rounds)
        print(f"# ctypes no-op pair: {noop * 1e9:.0f} ns (part of the mutex's row: ctypes calls it)")
        print(f"{'lock':<24}{'uncontended ns':>16}{'2 processes ns':>16}")
        for kind, cls in KINDS.items():
            alone = uncontended(cls(path), args.rounds)
            both = contended(kind, path, args.rounds)
            print(f"{cls.name:<24}{alone * 1e9:>16.0f}{both * 1e9:>16.0f}")


if __name__ == "__main__":
    main()
