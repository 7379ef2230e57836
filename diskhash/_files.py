"""Durable file operations: create, publish by atomic rename, lock, clean marker.

Everything that touches directory entries lives here, so the rules of
crash-safe replacement on Linux are written down once:

* a new table file is fully allocated (``posix_fallocate``) before it is
  mapped, so a full disk is an ``OSError`` now, not a ``SIGBUS`` later;
* it is fsynced before ``rename()`` and the directory is fsynced after, so
  after a power loss the name points at either the old or the new complete file;
* the cross-process lock lives in a sidecar ``<index>.lock`` file, because the
  index file itself is replaced on every grow and a lock on the old inode
  would no longer cover the new one.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time
from dataclasses import dataclass

from diskhash.errors import IndexLockedError

# The sidecar <index>.lock file: the clean-close marker (text) at offset 0,
# the writer's undo page (binary, see _index.pxd) at UNDO_OFFSET.
MARKER_SIZE = 256
UNDO_OFFSET = mmap.ALLOCATIONGRANULARITY
UNDO_SIZE = 64

MAGIC = b"SOCHIDX2"
VERSION = 1
HEADER = struct.Struct("<8sI4xQQQ24x")
HEADER_SIZE = 64
SLOT_SIZE = 40
TMP_SUFFIX = ".tmp"

assert HEADER.size == HEADER_SIZE


def table_bytes(num_slots: int) -> int:
    return HEADER_SIZE + num_slots * SLOT_SIZE


def map_table(fd: int, num_slots: int, writable: bool) -> mmap.mmap:
    """Map a table file, advised for random access before the first fault.

    Lookups touch one slot each, so read-ahead only wastes the page cache;
    and without the advice the kernel may cache a file in large folios, so
    that ``save()`` writes up to 2 MiB for each slot changed
    (``benchmarks/save_after_grow.py``).
    """
    access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
    mm = mmap.mmap(fd, table_bytes(num_slots), access=access)
    try:
        mm.madvise(mmap.MADV_RANDOM)
    except (AttributeError, OSError):
        pass
    return mm


def new_seed() -> int:
    """A random nonzero u64 (the Rust code mixes clock, pid and a stack address)."""
    while True:
        seed = int.from_bytes(os.urandom(8), "little")
        if seed:
            return seed


def temp_path(path: str, kind: str) -> str:
    """A unique name beside ``path``: same directory, so rename is atomic."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{kind}-{os.getpid()}-{os.urandom(4).hex()}{TMP_SUFFIX}")


def remove_leftovers(path: str) -> list[str]:
    """Delete temporary files a crashed grow/create left beside ``path``.

    Only called by a writer holding the exclusive lock, so no live process
    can be writing them.
    """
    head, name = os.path.split(path)
    prefix = f".{name}."
    removed: list[str] = []
    try:
        entries = os.listdir(head or ".")
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(TMP_SUFFIX):
            rest = entry[len(prefix):]
            if rest.startswith(("grow-", "create-", "repair-")):
                full = os.path.join(head, entry)
                try:
                    os.unlink(full)
                    removed.append(full)
                except FileNotFoundError:
                    pass
    return removed


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        # No fallocate on this file system: write zeros so the blocks exist.
        os.ftruncate(fd, 0)
        chunk = b"\0" * (1 << 20)
        left = size
        while left:
            n = os.write(fd, chunk[: min(left, len(chunk))])
            left -= n


def create_table_file(tmp: str, num_slots: int, seed: int, mode: int = 0o644) -> int:
    """Create ``tmp`` holding an empty table; returns its (read-write) fd.

    Raises ``OSError`` (ENOSPC, EACCES, ...) with nothing left behind.
    """
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _allocate(fd, table_bytes(num_slots))
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, num_slots, 0, seed), 0)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd


def publish(fd: int, tmp: str, path: str) -> None:
    """Make ``tmp`` (open as ``fd``) durable and atomically the file at ``path``."""
    os.fsync(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def fsync_dir(directory: str) -> None:
    dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


discard_temp = _unlink_quietly


def table_error(exc: OSError, action: str, path: str, num_slots: int) -> OSError:
    """``exc`` (same class and errno) restated for the user: what failed, on which index.

    Used when creating a table file fails (disk full, permission, I/O error):
    the message says the index at ``path`` is unchanged, which is true because
    nothing replaced it.
    """
    reason = exc.strerror or str(exc)
    message = (f"{reason} while {action} ({num_slots} slots, {table_bytes(num_slots)} bytes); "
               f"the index is unchanged")
    return type(exc)(exc.errno, message, path) if exc.errno else type(exc)(f"{path}: {message}")


@dataclass(frozen=True)
class CleanMarker:
    """What the last writer recorded when it closed cleanly."""

    ino: int
    size: int
    mtime_ns: int
    entries: int

    def matches(self, st: os.stat_result) -> bool:
        return (self.ino, self.size, self.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


class IndexLock:
    """The sidecar lock file: an advisory ``flock`` plus the clean-close marker.

    ``flock`` locks belong to the open file description, so two index objects
    in one process conflict just as two processes do, and a forked child
    shares (and must not release) its parent's lock.
    """

    def __init__(self, index_path: str, exclusive: bool, timeout: "float | None") -> None:
        self.path = index_path + ".lock"
        self.exclusive = exclusive
        self.fd = -1
        self.undo_map: "mmap.mmap | None" = None
        self.fd = self._open()
        if self.fd >= 0:
            self._acquire(index_path, timeout)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if self.exclusive or exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
        try:  # a reader in a read-only directory: lock if the file exists
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def _acquire(self, index_path: str, timeout: "float | None") -> None:
        op = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        delay = 0.001
        while True:
            try:
                fcntl.flock(self.fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except BaseException:
                self.close(unlock=False)
                raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.close(unlock=False)
                held = "a writer" if not self.exclusive else "another reader or writer"
                waited = f" after waiting {timeout:g}s" if timeout else ""
                raise IndexLockedError(
                    index_path,
                    f"index is locked by {held} (many readers or one writer per file){waited}",
                )
            time.sleep(delay if deadline is None else min(delay, deadline - now))
            delay = min(delay * 2, 0.05)

    def map_undo(self) -> mmap.mmap:
        """Map the undo page (writers): where an overwrite keeps the slot's old
        bytes while it stores the new ones, so a crash in between is undone
        by the next writable open.  Its blocks are allocated for real, so a
        full disk fails this open instead of a later store (SIGBUS)."""
        if os.fstat(self.fd).st_size < UNDO_OFFSET + UNDO_SIZE:
            try:
                os.posix_fallocate(self.fd, 0, UNDO_OFFSET + UNDO_SIZE)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                os.pwrite(self.fd, bytes(UNDO_SIZE), UNDO_OFFSET)
        self.undo_map = mmap.mmap(self.fd, UNDO_SIZE, offset=UNDO_OFFSET)
        return self.undo_map

    def read_marker(self) -> "CleanMarker | None":
        if self.fd < 0:
            return None
        data = os.pread(self.fd, MARKER_SIZE, 0).decode("ascii", "replace").split()
        if len(data) != 6 or data[:2] != ["diskhash-clean", "v1"]:
            return None
        try:
            ino, size, mtime_ns, entries = (int(x) for x in data[2:])
        except ValueError:
            return None
        return CleanMarker(ino, size, mtime_ns, entries)

    def _write_marker(self, line: str) -> None:
        # Padded to a fixed size: the undo page after it must stay in place.
        os.pwrite(self.fd, line.encode("ascii").ljust(MARKER_SIZE - 1) + b"\n", 0)

    def mark_dirty(self) -> None:
        """Durably record that a writer has the index open (fsync: see README)."""
        self._write_marker("diskhash-dirty")
        os.fsync(self.fd)

    def mark_clean(self, st: os.stat_result, entries: int) -> None:
        self._write_marker(f"diskhash-clean v1 {st.st_ino} {st.st_size} {st.st_mtime_ns} {entries}")

    def close(self, unlock: bool = True) -> None:
        """Release the lock.  ``unlock=False`` (a forked child) only drops the fd."""
        undo_map, self.undo_map = self.undo_map, None
        if undo_map is not None:
            try:
                undo_map.close()
            except BufferError:     # a forked child: a view is still exported; unmapped at exit
                pass
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if unlock:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
