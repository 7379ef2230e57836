"""The files of a store: the directory (its MANIFEST, the data files' create,
open and header, the leftovers of a crash) and ``Generation``, the open files
of one (data generation, index generation) pair with their map.

No policy lives here (when to save, what to replay): the store, its recovery,
writer and compaction call these to touch the files.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import weakref
from typing import Any, Sequence

from diskhash._format import payload as fmt
from diskhash._fs.files import fsync_dir
from diskhash._index.table import DiskHashIndex, close_unsynced
from diskhash._store import codecs as _codecs
from diskhash._store.read import MapReader
from diskhash.errors import CorruptPayloadError, IndexClosedError

__all__ = ["Generation", "StoreDirectory", "TMP_SUFFIX", "unlink", "open_data_fd", "read_checkpoint",
           "write_header", "fsync_data", "populate_pages", "allocate_blocks", "write_all",
           "keep_resident"]

_decompress = _codecs.decompress
#: The compiled get decodes LZ4 with this directly (errors: via _decompress).
_lz4_decompress = _codecs.lz4_block_decompress
#: madvise(MADV_POPULATE_WRITE) (Linux 5.14+; not in the mmap module's constants before 3.13?).
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: madvise(MADV_POPULATE_READ): the same for reading (the export's walk).
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
TMP_SUFFIX = ".tmp"


def unlink(*paths: str) -> None:
    """Remove ``paths``; one already gone is not an error."""
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class StoreDirectory:
    """A store's directory: the names of its files, its MANIFEST (which
    generation of each file is current), the data files' header and the
    files a crash left behind."""

    __slots__ = ("directory", "manifest_path")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.manifest_path = os.path.join(directory, fmt.MANIFEST_NAME)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def read_manifest(self) -> "tuple[int, int] | None":
        try:
            fd = os.open(self.manifest_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):      # a FIFO would block a plain open
                raise CorruptPayloadError(self.manifest_path, "store manifest is not a regular file")
            return fmt.unpack_manifest(os.pread(fd, 64, 0), self.manifest_path)
        finally:
            os.close(fd)

    def write_manifest(self, data_gen: int, index_gen: int) -> None:
        tmp = self.path(f".{fmt.MANIFEST_NAME}.{os.getpid()}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, fmt.pack_manifest(data_gen, index_gen))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.manifest_path)
        fsync_dir(self.directory)

    def create_data_file(self, data_gen: int) -> str:
        path = self.path(fmt.data_name(data_gen))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, fmt.pack_data_header(fmt.DATA_HEADER_SIZE, 0), 0)
            os.fsync(fd)
        except BaseException:
            unlink(path)          # a full disk: leave no empty generation behind
            raise
        finally:
            os.close(fd)
        return path

    def remove_leftovers(self, data_gen: int, index_gen: int) -> list[str]:
        """Files of other generations and temporaries a crash left behind (writers
        only, once the named generation has been opened whole).  Exactly the
        names the store makes (``fmt.generation_file``, ``fmt.is_store_temporary``):
        a user's ``data-export.dat`` or ``.notes.tmp`` is never touched."""
        keep = {("data", data_gen), ("index", index_gen)}
        removed = []
        for entry in sorted(os.listdir(self.directory)):
            gen = fmt.generation_file(entry)
            if (gen is not None and gen not in keep) or fmt.is_store_temporary(entry):
                try:
                    if stat.S_ISDIR(os.lstat(self.path(entry)).st_mode):
                        continue        # the store makes only files: a directory is not ours
                    os.unlink(self.path(entry))
                    removed.append(entry)
                except FileNotFoundError:
                    pass
        return removed

    def missing_generation(self, path: str, data_gen: int, index_gen: int) -> CorruptPayloadError:
        """The error of a MANIFEST naming a data file that is not there (a backup
        restored from during a compact(), a partial copy): which generations the
        directory does hold, so the right MANIFEST can be put back."""
        found: "dict[str, set[int]]" = {"data": set(), "index": set()}
        for entry in os.listdir(self.directory):
            gen = fmt.generation_file(entry)
            if gen is not None:
                found[gen[0]].add(gen[1])

        def names(kind: str) -> str:
            return ", ".join(str(g) for g in sorted(found[kind])) or "none"

        return CorruptPayloadError(
            path, f"the MANIFEST names data generation {data_gen} and index generation "
                  f"{index_gen}, but {os.path.basename(path)} is missing; this directory holds "
                  f"data generation(s) {names('data')} and index generation(s) {names('index')}. "
                  f"Nothing was changed: put back the MANIFEST that names the files that are "
                  f"here (docs/internals/store-format.md)")


def open_data_fd(path: str, writable: bool) -> tuple[int, fmt.DataHeader, int]:
    """Open a data file (a regular file only) and read its header: (fd, header, size)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptPayloadError(path, "data file is not a regular file")
        os.set_blocking(fd, True)
        header = fmt.unpack_data_header(os.pread(fd, fmt.DATA_HEADER_SIZE, 0), path)
    except BaseException:
        os.close(fd)
        raise
    return fd, header, st.st_size


def read_checkpoint(fd: int, path: str) -> int:
    return fmt.unpack_data_header(os.pread(fd, fmt.DATA_HEADER_SIZE, 0), path).checkpoint


def fsync_data(fd: int) -> None:
    os.fdatasync(fd)


def populate_pages(mm: "mmap.mmap | None", fd: int, start: int, end: int) -> None:
    """Fault in the map's pages [start, end) writable in one call.

    One call costs less than the appends' page faults taken one at a time,
    and less than writing the frames with pwrite (docs/performance.md,
    "Measurements behind the design").  An old kernel without
    MADV_POPULATE_WRITE just takes the faults.

    The map is advised random (no read-ahead for readers), so the populate
    would create the page cache's pages one fault at a time; read-ahead of
    the range first (POSIX_FADV_WILLNEED: no I/O for fallocated blocks)
    makes it cheaper and keeps 4 KiB pages (the map advised normal instead
    made a put + save() write more: docs/performance.md, "PayloadStore";
    benchmarks/save_after_grow.py measures it).
    """
    if mm is None or end <= start:
        return
    page = mmap.PAGESIZE
    first = start - start % page
    try:
        os.posix_fadvise(fd, first, end - first, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass
    try:
        mm.madvise(_MADV_POPULATE_WRITE, first, end - first)
    except (OSError, ValueError):
        pass


def allocate_blocks(fd: int, start: int, end: int) -> None:
    """Make bytes [start, end) of the file real blocks (the file grows to ``end``)."""
    if end <= start:
        return
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        zeros = bytes(min(end - start, 1 << 20))    # no fallocate here: write zeros
        pos = start
        while pos < end:
            pos += os.pwrite(fd, zeros[: min(len(zeros), end - pos)], pos)


def write_all(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """Write ``buffers`` at ``offset`` (retrying short writes); returns the new end.

    The views it makes are released before it returns, whatever happens: one
    left to the refcount stays alive while another thread holds this call's
    frame (Dask's sampling profiler holds its workers' frames), and keeps
    its buffer from being resized (the packed put's next piece)."""
    made: list[memoryview] = []
    try:
        for b in buffers:
            made.append(memoryview(b))
            made.append(made[-1].cast("B"))
        bufs = [v for v in made[1::2] if len(v)]
        while bufs:
            n = os.pwritev(fd, bufs[:512], offset)
            if n <= 0:  # pragma: no cover - pwritev raises instead
                raise OSError(errno.EIO, "short write")
            offset += n
            while n:
                if n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs.pop(0)
                else:
                    bufs[0] = bufs[0][n:]
                    made.append(bufs[0])
                    n = 0
    finally:
        for view in reversed(made):
            view.release()
    return offset


class Generation:
    """The files of one (data generation, index generation) pair, open.

    Readers take a local reference (``g = writer.gen``) for the length of one
    call, so a generation replaced by ``compact()``/``rebuild_index()`` keeps
    its descriptor, map and index until the last reader drops it (CPython
    frees it then, closing them).  ``close()`` closes the index now (the core
    waits for readers inside it) and leaves the descriptor to that
    finaliser, so a reader racing close() reads a closed index, never a
    reused fd.

    Reads of up to ``BIG_READ`` bytes copy from a read-only map of the data
    file (``map``/``view``).  The map is never unmapped explicitly: a read
    past its end maps the file again at its current size and the old map is
    freed when the last reader lets go of it, so no reader can touch an
    unmapped page.  Records lie inside the file (they are indexed only after
    their write completed), so no read reaches past the end of the file.
    """

    __slots__ = ("data_gen", "index_gen", "data_path", "index_path", "fd", "index",
                 "map", "view", "reader", "alloc", "writable", "closed", "watching", "__weakref__")

    def __init__(self, data_gen: int, index_gen: int, data_path: str, index_path: str,
                 fd: int, index: DiskHashIndex, writable: bool = True) -> None:
        self.data_gen = data_gen
        self.index_gen = index_gen
        self.data_path = data_path
        self.index_path = index_path
        self.fd = fd
        self.index = index
        self.map: "mmap.mmap | None" = None
        self.view: "memoryview | None" = None
        self.reader: Any = None
        self.closed = False
        #: Bytes of the file allocated (posix_fallocate) for appends.
        self.alloc = os.fstat(fd).st_size
        self.writable = writable
        #: (shared page, its seq when this generation was current): the
        #: compiled get answers FALLBACK once the count moves on.
        self.watching: "tuple[Any, int] | None" = None
        weakref.finalize(self, _release, fd, index)

    def watch(self, page: Any, seen: int) -> None:
        """Reads through this generation's map are current while the shared
        page's ``seq`` is ``seen``: the compiled ``get`` checks it first."""
        self.watching = (page, seen)
        reader = self.reader
        if reader is not None:
            reader.watch(page, seen)

    def remap(self) -> memoryview:
        """Map the file at its current size (read-write for the writer); returns the new view."""
        if self.closed:
            raise IndexClosedError(f"{self.data_path}: store is closed")
        size = os.fstat(self.fd).st_size
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        mm = mmap.mmap(self.fd, size, access=access)
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except (AttributeError, OSError):  # pragma: no cover
            pass
        view = memoryview(mm)
        self.map, self.view = mm, view
        reader = MapReader(mm, self.index, _decompress, _lz4_decompress)
        if self.watching is not None:
            reader.watch(*self.watching)
        self.reader = reader
        return view


    def advise(self, start: int, end: int, advice: int) -> None:
        """``madvise`` the pages of this generation's map that lie within
        [start, end) (none if it is not mapped): a whole-log pass asks for
        the pages ahead of it (``MADV_WILLNEED``: the map is advised random,
        so nothing reads ahead by itself) and lets go of those behind it
        (``MADV_DONTNEED``: the pages stay in the page cache, written or
        not, but leave the process's resident set)."""
        mm = self.map
        if mm is None:
            return
        page = mmap.PAGESIZE
        start = -(-start // page) * page if advice == mmap.MADV_DONTNEED else start // page * page
        end = min(end, len(mm))
        if advice == mmap.MADV_DONTNEED:
            end = end // page * page
        if end > start:
            try:
                mm.madvise(advice, start, end - start)
            except (ValueError, OSError):   # pragma: no cover - closed meanwhile / not supported
                pass

    def close(self, sync: bool) -> None:
        """``PayloadStore.close``: the index closed (saved unless not ``sync``:
        no msync with ``sync="never"``, as in ``Writer.save_locked``), then
        ``release``, even when Ctrl-C lands in the first close."""
        close_index = self.index.close if sync else (lambda: close_unsynced(self.index))
        try:
            try:
                close_index()
            finally:
                close_index()   # (once closed, only finishes a release Ctrl-C cut short)
        finally:
            self.release()

    def release(self) -> None:
        """Close now (``PayloadStore.close``): the map unmapped, the descriptor
        pointed at /dev/null (its number stays reserved until the finaliser, so a
        racing reader never reads another file), so the file system is let go."""
        self.closed = True
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.release()
        view, self.view = self.view, None
        if view is not None:
            try:
                view.release()
            except BufferError:  # pragma: no cover - a slice alive in a racing thread
                pass
        mm, self.map = self.map, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # pragma: no cover - freed with the last slice
                pass
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.dup2(null, self.fd)
        finally:
            os.close(null)


def _release(fd: int, index: DiskHashIndex) -> None:
    try:
        index.close()
    except Exception:  # pragma: no cover - best effort in a finaliser
        pass
    finally:
        # (even after Ctrl-C in index.close(): the descriptor of a replaced,
        # unlinked data file would otherwise hold its blocks until exit)
        try:
            os.close(fd)
        except OSError:  # pragma: no cover
            pass


def write_header(fd: int, checkpoint: int, flags: int, fsync: bool) -> None:
    """Write the data file's header (checkpoint and flags); fdatasync it when ``fsync``."""
    os.pwrite(fd, fmt.pack_data_header(checkpoint, flags), 0)
    if fsync:
        fsync_data(fd)


def keep_resident(g: Generation, budget: "int | None") -> None:
    """Keep ``g``'s index in memory if the store asked for it (``resident_index=``,
    its budget checked): applied to every generation made current."""
    if budget is not None:
        g.index.set_resident(budget)
