"""Durable file operations: create, publish by atomic rename, lock, clean marker.

Everything that touches directory entries lives here, so the rules of
crash-safe replacement on Linux are written down once:

* a new table file is fully allocated (``posix_fallocate``) before it is
  mapped, so a full disk is an ``OSError`` now, not a ``SIGBUS`` later;
* it is fsynced before ``rename()`` and the directory is fsynced after, so
  after a power loss the name points at either the old or the new complete file;
* the cross-process lock lives in a sidecar ``<index>.lock`` file beside the
  index's resolved path (symlinks followed), because the index file itself is
  replaced on every grow and a lock on the old inode would no longer cover the
  new one; the index file's own inode is ``flock``ed too, so a second name for
  it (a hard link, whose sidecar differs) cannot let in a second writer;
* an existing table is opened with ``O_NONBLOCK`` and checked to be a regular
  file before anything else (a FIFO would block the open forever), and before
  any lock file is created beside it;
* a writable open allocates the blocks of a table someone else made sparse,
  for the same reason new tables are allocated.

See docs/guide/files-and-locks.md for what users see of these rules.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import time
import warnings
from dataclasses import dataclass

from diskhash._format.sochidx2 import (
    HEADER_SIZE,
    MAGIC,
    MARKER_SIZE,
    PAGE_BYTES,
    UNDO_OFFSET,
    VERSION,
    pack_header,
    table_bytes,
    unpack_header,
)
from diskhash.errors import CorruptIndexError, IndexLockedError, NetworkFileSystemWarning

__all__ = ["MARKER_SIZE", "UNDO_OFFSET", "table_bytes"]   # re-exported for tools and tests

TMP_SUFFIX = ".tmp"


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


def _restated(exc: OSError, name: str) -> OSError:
    """``exc`` naming the index as the user spelled it (not its resolved target)."""
    if exc.errno:
        return type(exc)(exc.errno, exc.strerror or str(exc), name)
    return exc


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_table(path: str, name: str, writable: bool) -> tuple[int, os.stat_result]:
    """Open the existing table file at ``path`` (resolved); returns (fd, stat).

    ``O_NONBLOCK`` so that a FIFO cannot block the open; anything but a
    regular file is refused with an ``OSError`` naming ``name``.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _restated(exc, name) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
            raise OSError(code, f"{kind}, not an index file (an index is a regular file)", name)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_header(fd: int, st: os.stat_result, name: str) -> tuple[int, int, int]:
    """Validate the header in O(1); returns (num_slots, num_entries, seed).

    Raises ``CorruptIndexError`` naming ``name`` for a file that is not a
    SOCHIDX2 table (or is shorter than its header says).
    """
    if st.st_size < HEADER_SIZE:
        raise CorruptIndexError(name, f"file is {st.st_size} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, num_slots, num_entries, seed = unpack_header(os.pread(fd, HEADER_SIZE, 0))
    defect = None
    if magic != MAGIC:
        defect = f"bad magic {magic!r} (expected {MAGIC!r})"
    elif version != VERSION:
        defect = f"unknown format version {version} (this diskhash reads version {VERSION})"
    elif num_slots == 0 or num_slots & (num_slots - 1):
        defect = f"slot count {num_slots} is not a power of two"
    elif st.st_size < table_bytes(num_slots):
        defect = (f"file is {st.st_size} bytes but the header's {num_slots} slots need "
                  f"{table_bytes(num_slots)} (truncated)")
    if defect:
        raise CorruptIndexError(name, [defect])
    return num_slots, num_entries, seed


def check_existing(path: str, name: str) -> bool:
    """Before any lock file is made: is there an index at ``path``?

    False if nothing is there; True if a regular file with a valid header
    is; otherwise raises (``OSError`` for a directory, FIFO, ...,
    ``CorruptIndexError`` for a file that is not an index), so a failed open
    leaves nothing beside something that is not an index.
    """
    try:
        fd, st = open_table(path, name, writable=False)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise
        return False
    try:
        read_header(fd, st, name)
    finally:
        os.close(fd)
    return True


def make_parent_dirs(path: str) -> None:
    """Create the missing directories above a new index file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)


def ensure_allocated(fd: int, size: int) -> None:
    """Make sure the first ``size`` bytes of ``fd`` have disk blocks.

    A sparse file (sized with ``ftruncate``, as the Rust original does) maps
    fine, but the first store into a hole on a full disk kills the process
    with ``SIGBUS``; allocating now turns that into an ``OSError``.  Cheap
    for a file whose blocks already exist.  Never changes the file's bytes.
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    # No fallocate on this file system: write zeros into each hole.
    pos = 0
    while pos < size:
        try:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
        except OSError:
            return                  # no hole information: nothing more we can do
        if hole >= size:
            return
        try:
            data = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError:
            data = size             # ENXIO: a hole up to the end of the file
        end = min(data, size)
        while hole < end:
            hole += os.pwrite(fd, bytes(min(end - hole, 1 << 20)), hole)
        pos = end


def lock_table(fd: int, exclusive: bool) -> None:
    """``flock`` a table file we just created (nobody else can have it yet),
    or turn that lock shared before it is published to other processes."""
    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)


def unlock_table(fd: int) -> None:
    """Let go of ``lock_table``'s lock before closing ``fd``: a child forked
    meanwhile shares the open file description, and its copy would otherwise
    keep the lock (closing one copy does not release an ``flock``), so the
    next open of the published file -- ours -- would be refused."""
    fcntl.flock(fd, fcntl.LOCK_UN)


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


LEFTOVER_KINDS = ("grow-", "create-", "repair-")


def remove_leftovers(path: str, kinds: tuple[str, ...] = LEFTOVER_KINDS) -> list[str]:
    """Delete temporary files a crashed grow/create/repair left beside ``path``.

    Only called by an open that is alone with the index (no live process can
    be writing them) or, for grows and repairs alone, by a writer holding
    the cross-process writer lock (every grow and repair runs under it).
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
            if rest.startswith(kinds):
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
        lock_table(fd, exclusive=True)
        _allocate(fd, table_bytes(num_slots))
        os.pwrite(fd, pack_header(num_slots, 0, seed), 0)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd


def replace_durably(fd: int, tmp: str, path: str) -> None:
    """Make ``tmp`` (open as ``fd``) durable, then atomically the file at
    ``path``; the rename itself is durable once ``fsync_dir`` has run."""
    os.fsync(fd)
    os.replace(tmp, path)


def publish(fd: int, tmp: str, path: str) -> None:
    """Make ``tmp`` (open as ``fd``) durable and atomically the file at ``path``."""
    replace_durably(fd, tmp, path)
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


PRESENCE_BYTE = 0       # OFD lock: read by every open, written by a quiet one
CREATE_BYTE = 1         # OFD lock: held while the table file is created
MAINTENANCE_BYTE = 2    # OFD lock: a store's compact() or rebuild_index() (one process at a time)
WRITERS_BYTE = 3        # OFD lock: read by a store's writable opens, written by the last one closing


#: File system types (as /proc/self/mountinfo names them) whose files other
#: machines can open: their maps and locks are not coherent across machines.
NETWORK_FILE_SYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs",
                                  "lustre", "gpfs", "afs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse"})


def file_system_type(path: str) -> "str | None":
    """The type of the file system ``path`` is on (the mount whose mount
    point is its longest prefix, as /proc/self/mountinfo names it); None
    where that cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    where = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        mount = fields[4].replace("\\040", " ")
        if (where == mount or where.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[sep + 1]
    return kind


def network_file_system(path: str) -> "str | None":
    """The type of the network file system the file ``path`` is on, else None."""
    kind = file_system_type(os.path.dirname(path) or ".")
    return kind if kind in NETWORK_FILE_SYSTEMS else None


class IndexLock:
    """The sidecar lock file: an advisory ``flock`` plus the clean-close marker.

    ``flock`` locks belong to the open file description, so two index objects
    in one process conflict just as two processes do, and a forked child
    shares (and must not release) its parent's lock.
    """

    def __init__(self, index_path: str, exclusive: bool, timeout: float | None,
                 name: str | None = None, shared: bool = False, readonly: bool | None = None,
                 exclusive_option: bool = False) -> None:
        self.path = index_path + ".lock"
        self.name = index_path if name is None else name
        self.exclusive = exclusive
        # Only a reader may fall back to a read-only lock file (a read-only
        # directory or file system); a writer gets the open's own error.
        self.readonly = (not exclusive) if readonly is None else readonly
        # exclusive_option: an index's open, where exclusive=True is an option
        # the refusal must name; the store's and shard set's locks keep the
        # one-writer rule.
        self.exclusive_option = exclusive_option
        # shared (an index's default): every open holds a shared flock and an
        # OFD read lock on byte PRESENCE_BYTE; writers take turns on the
        # robust mutex of the shared page instead.  ``quiet``: this open
        # holds the OFD write lock -- no other process has the index open.
        self.shared = shared and not exclusive
        self.quiet = exclusive
        self.writable_fd = False
        self.fd = -1
        self.undo_map: mmap.mmap | None = None
        self.deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self.timeout = timeout
        while True:
            self.fd = self._open()
            if self.fd < 0:
                return
            try:
                self._acquire(self.fd, "")
                if self._still_at_path(self.fd):
                    if self.shared:
                        self._join()
                    return
            except BaseException:
                self.close(unlock=False)
                raise
            # The holder we waited for unlinked the file (a failed create,
            # see discard_file): this lock guards nothing; take the new one.
            self.close()

    def _still_at_path(self, fd: int) -> bool:
        """Whether the locked file is still the one at ``self.path`` (the
        classic lock-file protocol: only then does its lock exclude others)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)

    def discard_file(self) -> None:
        """Unlink the lock file, then release it: a create that failed leaves
        nothing behind.  Only while holding it exclusively; a process that
        waited on it finds the inode gone from the path and opens a new one."""
        if (self.exclusive or self.quiet) and self.fd >= 0 and self._still_at_path(self.fd):
            _unlink_quietly(self.path)
        self.close()

    def lock_table(self, fd: int, writer: bool = False) -> None:
        """Lock the index file's own inode (``fd``) the same way, within the
        same timeout: every name of one file (a hard link has its own
        sidecar) then shares one writer.  Released when ``fd`` is closed.

        In shared mode the inode is locked shared, except by a ``writer``
        when the file has more than one name: writers through two names
        would take turns on two different mutexes, so such a file keeps the
        rule of one writer or many readers."""
        exclusive = self.exclusive
        if self.shared and writer and os.fstat(fd).st_nlink > 1:
            exclusive = True
        self._acquire(fd, " through another name of the same file (a hard link)", exclusive)

    # -- shared mode: the OFD locks (per open file description, like flock,
    # but converted atomically between read and write) --------------------

    def _ofd(self, kind: int, byte: int, wait: bool) -> bool:
        request = struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _join(self) -> None:
        """Become one of the index's openers: the only one (``quiet``, OFD
        write lock) if nobody else has it, else one of many (read lock,
        waiting only for a quiet opener to finish its recovery).  Warns on a
        network file system (``network_file_system``)."""
        kind = network_file_system(self.path)
        if kind is not None:
            warnings.warn(f"{self.name}: on a network file system ({kind}): processes of this "
                          f"machine share it, processes of other machines must not open it "
                          f"(docs/guide/processes.md)", NetworkFileSystemWarning, stacklevel=4)
        self.writable_fd = fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        if self.writable_fd and self._ofd(fcntl.F_WRLCK, PRESENCE_BYTE, False):
            self.quiet = True
            return
        self._ofd(fcntl.F_RDLCK, PRESENCE_BYTE, True)
        self.quiet = False

    def end_quiet(self) -> None:
        """Let other openers in (the write lock becomes a read lock, atomically)."""
        if self.shared and self.quiet:
            self._ofd(fcntl.F_RDLCK, PRESENCE_BYTE, False)
            self.quiet = False

    def try_quiet(self) -> bool:
        """Whether no other open of the index exists now (then it stays so
        until ``end_quiet`` or ``close``).  Never waits."""
        if not self.shared:
            return self.exclusive
        if self.quiet:
            return True
        if self.fd < 0 or not self.writable_fd:
            return False
        self.quiet = self._ofd(fcntl.F_WRLCK, PRESENCE_BYTE, False)
        return self.quiet

    def hold_maintenance(self) -> None:
        """Wait for, then hold, the lock of a store's long maintenance
        (``compact()``, ``rebuild_index()``) across processes: an OFD lock,
        let go by the kernel when its process dies."""
        self._ofd(fcntl.F_WRLCK, MAINTENANCE_BYTE, True)

    def join_writers(self) -> None:
        """A writable open of a store: counted among its writers (waits only
        for the last writer closing to finish its close)."""
        self._ofd(fcntl.F_RDLCK, WRITERS_BYTE, True)

    def last_writer(self) -> bool:
        """Whether no other writable open of the store exists (then none can
        start until this one closes).  Never waits."""
        return self.fd >= 0 and self._ofd(fcntl.F_WRLCK, WRITERS_BYTE, False)

    def release_maintenance(self) -> None:
        if self.fd >= 0:
            self._ofd(fcntl.F_UNLCK, MAINTENANCE_BYTE, False)

    def creating(self) -> "_CreateLock":
        """Held while an opener checks for and creates the table file, so
        two processes opening a missing index at once create it once."""
        return _CreateLock(self)

    def _open(self) -> int:
        # O_NONBLOCK: a FIFO in the lock file's place must not block the open;
        # anything but a regular file is refused (_checked_lock_file).
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if not self.readonly or exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            try:  # a reader in a read-only directory: lock if the file exists
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                return -1
        return self._checked_lock_file(fd)

    def _checked_lock_file(self, fd: int) -> int:
        """``fd`` if it is a regular file (O_NONBLOCK cleared); else closes it
        and raises an ``OSError`` naming the lock file and what is there."""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
                code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
                raise OSError(code, f"the index's lock file is {kind}, not a regular file "
                                    f"(remove it; diskhash creates it)", self.path)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _acquire(self, fd: int, where: str, exclusive: bool | None = None) -> None:
        if exclusive is None:
            exclusive = self.exclusive
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline, timeout = self.deadline, self.timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if self.shared and not where:
                    rule = "an exclusive=True open (it needs the index to itself)"
                elif self.exclusive_option and exclusive and not where:
                    rule = "other opens (exclusive=True needs the index to itself)"
                else:
                    rule = ("a writer" if not exclusive else "another reader or writer") + where
                    rule += " (many readers or one writer per file)"
                waited = f" after waiting {timeout:g}s" if timeout else ""
                raise IndexLockedError(self.name, f"index is locked by {rule}{waited}")
            time.sleep(delay if deadline is None else min(delay, deadline - now))
            delay = min(delay * 2, 0.05)

    def map_page(self, writable: bool) -> mmap.mmap | None:
        """Map the undo page: the writer's undo record (an overwrite keeps the
        slot's old bytes there while it stores the new ones, so a crash in
        between is undone) and the shared page (seqlock, table generation,
        the cross-process writer mutex).  A writer allocates its blocks for
        real, so a full disk fails the open instead of a later store
        (SIGBUS); a reader that cannot write the lock file maps it
        read-only, or not at all (None) if no writer ever made the page."""
        size = os.fstat(self.fd).st_size if self.fd >= 0 else 0
        if writable or (self.writable_fd and size < UNDO_OFFSET + PAGE_BYTES):
            ensure_allocated(self.fd, UNDO_OFFSET + PAGE_BYTES)
            self.undo_map = mmap.mmap(self.fd, PAGE_BYTES, offset=UNDO_OFFSET)
        elif self.writable_fd:      # (a reader writes it only to make or reset it)
            self.undo_map = mmap.mmap(self.fd, PAGE_BYTES, offset=UNDO_OFFSET)
        elif size >= UNDO_OFFSET + PAGE_BYTES:
            self.undo_map = mmap.mmap(self.fd, PAGE_BYTES, offset=UNDO_OFFSET,
                                      access=mmap.ACCESS_READ)
        return self.undo_map

    def read_marker(self) -> CleanMarker | None:
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
        fd = self.fd
        if fd < 0:
            return
        try:
            if unlock:
                if self.shared:     # (a forked child's copy must not keep them)
                    self._ofd(fcntl.F_UNLCK, PRESENCE_BYTE, False)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            # (forgotten just before the close: Ctrl-C cannot land between)
            self.fd = -1
            os.close(fd)


class _CreateLock:
    def __init__(self, lock: IndexLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        if self.lock.shared:
            self.lock._ofd(fcntl.F_WRLCK, CREATE_BYTE, True)

    def __exit__(self, *exc_info: object) -> None:
        if self.lock.shared and self.lock.fd >= 0:
            self.lock._ofd(fcntl.F_UNLCK, CREATE_BYTE, False)
