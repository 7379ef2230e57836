"""Odd paths where a store's files should be: FIFOs in place of the data file
or the manifest, a directory in place of the manifest, a read-only directory,
paths of odd types.  Each is a clear error; nothing is created or lost."""

from __future__ import annotations

import os
import stat

import pytest

from diskhash import (
    DiskHashError,
    PayloadStore,
)


def test_odd_paths(tmp_path, monkeypatch):
    """A hostile pass over PayloadStore found this."""
    with pytest.raises(ValueError):
        PayloadStore("")
    monkeypatch.chdir(tmp_path)
    with PayloadStore(".") as s:              # the current directory is a store
        s.put(1, b"here")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with PayloadStore(tmp_path / "link") as s:
        assert s.directory == str(real)
        s.put(2, b"via link")
    with PayloadStore(real, readonly=True) as r:
        assert r.get(2) == b"via link"


def test_fifo_as_data_file(tmp_path):
    """A hostile pass over PayloadStore found this."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
        path = s.data_path
    os.unlink(path)
    os.mkfifo(path)
    for readonly in (True, False):
        with pytest.raises(DiskHashError, match="regular file"):
            PayloadStore(d, readonly=readonly, timeout=1)     # and no hang


def test_fifo_as_manifest(tmp_path):
    """A hostile pass over PayloadStore found this."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
    (d / "MANIFEST").unlink()
    os.mkfifo(d / "MANIFEST")
    for readonly in (True, False):
        with pytest.raises(DiskHashError, match="regular file"):
            PayloadStore(d, readonly=readonly)


def test_directory_in_place_of_manifest(tmp_path):
    """A hostile pass over PayloadStore found this."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "MANIFEST").mkdir()
    with pytest.raises(DiskHashError, match="regular file"):
        PayloadStore(d)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory(tmp_path):  # pragma: no cover - CI runs as a user
    """A hostile pass over PayloadStore found this."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
    os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(PermissionError):
            PayloadStore(d)
        with PayloadStore(d, readonly=True) as r:
            assert r.get(1) == b"x"
    finally:
        os.chmod(d, 0o755)
