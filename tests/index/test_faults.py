"""A grow that fails (disk full, permission, I/O error) raises a clear OSError
and leaves the old index intact and usable; a later grow succeeds.

For real: a size-limited tmpfs (the suite runs as root on Linux) and a child
process that drops to an unprivileged user.  Everywhere: failures injected at
each call the grow makes (allocate, open, mmap, fsync, rename)."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers.processes import run_child
from helpers.records import fill_to_capacity, record
from helpers.spec_model import HEADER, file_size

from diskhash import DiskHashIndex, PayloadMeta
from diskhash._fs import files as _files


@pytest.fixture
def small_ext4():
    """A 20 MiB ext4 image mounted with -o loop (tmpfs hides sparse-file bugs)."""
    top = tempfile.mkdtemp(prefix="dh-ext4-")
    image, mnt = os.path.join(top, "img"), os.path.join(top, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(20 << 20)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", image], check=False, capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run(["mount", "-o", "loop", image, mnt], check=False, capture_output=True,
                           text=True)
    if r.returncode != 0:
        shutil.rmtree(top)
        pytest.skip(f"cannot make and loop-mount an ext4 image here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(top)



def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)

SPARSE_INSERT = r"""
import sys
from diskhash import DiskHashIndex
try:
    idx = DiskHashIndex(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno, exc)
    raise SystemExit(0)
for k in range(20000):
    idx.insert(k, (k, k, 1, 0, 1))
print("inserted all")
"""



def temporaries(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def assert_failed_grow_left_index_intact(idx, path, exc_info, expected_errno, n_keys, slots):
    err = exc_info.value
    assert err.errno == expected_errno
    text = str(err)
    assert str(path) in text and "growing the table" in text and "the index is unchanged" in text
    assert f"{slots * 2} slots" in text
    assert os.strerror(expected_errno) in text
    # Old table, every entry, nothing left behind.
    assert idx.num_slots == slots and len(idx) == n_keys
    assert n_keys not in idx
    assert temporaries(os.path.dirname(path)) == []
    for k in range(n_keys):
        assert idx[k] == record(k)
    idx.verify()
    # Still writable where no grow is needed: overwrite, delete, insert into the freed room.
    idx.insert(0, record(1)._replace(edge_id=0))
    assert idx[0] == (0, *record(1)[1:])
    idx.insert(0, record(0))
    assert idx.delete(1)
    idx.insert(n_keys, record(n_keys))
    assert idx.num_slots == slots and len(idx) == n_keys
    with pytest.raises(OSError) as again:          # needs the grow again: fails the same way
        idx.insert(1, record(1))
    assert again.value.errno == expected_errno and 1 not in idx
    idx.verify()


# -- injected failures, at every call a grow makes -------------------------------

def _fail_for_temp(real, exc_errno):
    def fake(*args, **kwargs):
        names = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if any(".grow-" in os.fsdecode(a) for a in names):
            raise OSError(exc_errno, os.strerror(exc_errno), os.fsdecode(names[0]))
        return real(*args, **kwargs)
    return fake


def _fail_fsync_of_temp(real):
    def fake(fd):
        if ".grow-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)
    return fake


def _fail_big_mmap(real, limit):
    def fake(fd, length, *args, **kwargs):
        if length > limit:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return real(fd, length, *args, **kwargs)
    return fake


def _no_space(fd, size):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


INJECTIONS = {
    "allocate-ENOSPC": (errno.ENOSPC, lambda mp: mp.setattr(_files, "_allocate", _no_space)),
    "open-EACCES": (errno.EACCES, lambda mp: mp.setattr(os, "open", _fail_for_temp(os.open, errno.EACCES))),
    "open-EROFS": (errno.EROFS, lambda mp: mp.setattr(os, "open", _fail_for_temp(os.open, errno.EROFS))),
    "mmap-ENOMEM": (errno.ENOMEM, lambda mp: mp.setattr(mmap, "mmap", _fail_big_mmap(mmap.mmap, file_size(4096)))),
    "fsync-EIO": (errno.EIO, lambda mp: mp.setattr(os, "fsync", _fail_fsync_of_temp(os.fsync))),
    "rename-EACCES": (errno.EACCES, lambda mp: mp.setattr(os, "replace", _fail_for_temp(os.replace, errno.EACCES))),
}


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_injected_grow_failure_leaves_the_index_intact(index_path, monkeypatch, name):
    expected_errno, inject = INJECTIONS[name]
    with DiskHashIndex(index_path) as idx:
        n = len(fill_to_capacity(idx))     # keys 0..n-1
        with monkeypatch.context() as mp:
            inject(mp)
            with pytest.raises(OSError) as info:
                idx.insert(n, record(n))
            assert_failed_grow_left_index_intact(idx, index_path, info, expected_errno, n, 4096)
            with pytest.raises(OSError):
                idx.reserve(10_000)                 # an explicit grow fails the same way
            assert idx.num_slots == 4096
        # The fault is gone: the next grow succeeds.
        idx.insert(n + 1, record(n + 1))
        assert idx.num_slots == 8192
        idx.verify()
        keys = set(idx)
    with DiskHashIndex(index_path, readonly=True) as idx:
        assert set(idx) == keys and len(idx) == n + 1
        idx.verify()
    assert temporaries(index_path.parent) == []


def test_failed_repair_rebuild_leaves_the_file_alone(index_path, monkeypatch):
    with DiskHashIndex(index_path) as idx:
        for k in range(100):
            idx.insert(k, record(k))
    before = index_path.read_bytes()
    monkeypatch.setattr(_files, "_allocate", _no_space)
    with DiskHashIndex(index_path) as idx:
        with pytest.raises(OSError, match="rebuilding the table") as info:
            idx.repair()
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(index_path)
        assert idx[42] == record(42) and len(idx) == 100
    assert index_path.read_bytes()[HEADER.size:] == before[HEADER.size:]
    assert temporaries(index_path.parent) == []


def test_creating_on_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_allocate", _no_space)
    path = tmp_path / "new.idx"
    with pytest.raises(OSError, match="creating the index file") as info:
        DiskHashIndex(path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert not path.exists() and temporaries(tmp_path) == []


# -- a real full disk: a 4 MiB tmpfs -----------------------------------------------

@pytest.fixture
def small_fs():
    """A size-limited tmpfs (needs root and a kernel that lets us mount)."""
    d = tempfile.mkdtemp(prefix="dh-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a size-limited tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "the injected ENOSPC tests cover the same path")
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_disk_full_while_growing_for_real(small_fs):
    path = os.path.join(small_fs, "edges.idx")
    ballast = os.path.join(small_fs, "ballast")
    with DiskHashIndex(path) as idx:
        k = 0
        # Grow for real until the file system cannot hold the old table and a new one.
        with open(ballast, "wb") as f:
            f.write(b"\1" * (2560 * 1024))    # leaves room for tables up to 16384 slots
        with pytest.raises(OSError) as info:
            while True:
                idx.insert(k, record(k))
                k += 1
        slots = idx.num_slots
        assert slots == 16384         # it did grow for real before the disk filled up
        assert len(idx) == k == idx.capacity
        assert_failed_grow_left_index_intact(idx, path, info, errno.ENOSPC, k, slots)
        idx.save()
    with DiskHashIndex(path) as idx:      # reopens on the full disk
        assert len(idx) == k and idx.recovery is None
        os.unlink(ballast)                # free space: the grow now succeeds
        idx.insert(1, record(1))             # (the helper left key 1 out, key k in)
        assert idx.num_slots == slots * 2 and len(idx) == k + 1
        idx.verify()
    assert temporaries(small_fs) == []
    with DiskHashIndex(path, readonly=True) as idx:
        assert len(idx) == k + 1 and all(idx[i] == record(i) for i in range(k + 1))


# -- a real permission failure: an unprivileged process, a read-only directory ---

def test_directory_not_writable_for_the_temporary_file():
    """Root ignores permissions, so a forked child drops to user nobody first."""
    nobody = 65534
    top = Path(tempfile.mkdtemp(prefix="dh-perm-"))   # pytest's tmp_path is root-only
    os.chmod(top, 0o755)
    d = top / "ro"
    d.mkdir()
    path = d / "edges.idx"
    with DiskHashIndex(path) as idx:
        n = len(fill_to_capacity(idx))     # keys 0..n-1
    for p in (d, path, d / "edges.idx.lock"):
        os.chown(p, nobody, nobody)
    os.chmod(d, 0o555)                         # files stay writable, the directory does not
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        out = "?"
        try:
            os.close(rfd)
            os.setgid(nobody)
            os.setuid(nobody)
            with DiskHashIndex(path) as idx:
                try:
                    idx.insert(n, record(n))
                    out = "grew: no error"
                except PermissionError as exc:
                    ok = (exc.errno == errno.EACCES and str(path) in str(exc)
                          and "the index is unchanged" in str(exc)
                          and idx.num_slots == 4096 and len(idx) == n and idx[5] == record(5)
                          and not temporaries(d))
                    idx.verify()
                    idx.insert(3, record(4)._replace(edge_id=3))    # writes that fit still work
                    out = "ok" if ok else f"bad state: {exc}"
        except BaseException as exc:
            import traceback
            out = f"child failed: {exc!r} {traceback.format_exc()}"
        finally:
            os.write(wfd, out.encode())
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as r:
        out = r.read()
    os.waitpid(pid, 0)
    os.chmod(d, 0o755)
    assert out == "ok"
    with DiskHashIndex(path) as idx:
        assert idx[3] == (3, *record(4)[1:]) and len(idx) == n
        idx.insert(n, record(n))                  # root: the grow works
        assert idx.num_slots == 8192
    shutil.rmtree(top)


def test_sparse_index_on_a_full_disk_is_an_os_error_not_sigbus(small_ext4):
    """A hostile pass found this: every call keeps its contract."""
    path = os.path.join(small_ext4, "sparse.idx")
    with DiskHashIndex(path, capacity=12000) as idx:       # 16384 slots, 640 KiB
        slots, seed = idx.num_slots, idx.seed
    # Rewrite it as the Rust original would: header only, sized by ftruncate.
    with open(path, "rb") as f:
        header = f.read(64)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(64 + 40 * slots)
    assert os.stat(path).st_blocks * 512 < 64 + 40 * slots        # really sparse
    with open(os.path.join(small_ext4, "ballast"), "wb") as f:     # fill the disk
        chunk = b"\1" * (1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                os.write(f.fileno(), b"\1" * 1024)
        except OSError:
            pass
    r = run_child(SPARSE_INSERT, path, timeout=60)
    assert r.returncode != -signal.SIGBUS, "killed by SIGBUS"
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"refused {errno.ENOSPC}"), r.stdout
    assert path in r.stdout and "allocating the blocks of the table" in r.stdout
    with open(path, "rb") as f:
        assert f.read(64) == header                                 # unchanged
    assert seed
    os.unlink(os.path.join(small_ext4, "ballast"))                  # room again: it opens
    with DiskHashIndex(path) as idx:
        idx.insert(1, rec(1))
        assert os.stat(path).st_blocks * 512 >= 64 + 40 * slots
