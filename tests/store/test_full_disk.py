"""A full disk (a 20 MB ext4 image mounted with -o loop; tmpfs would hide sparse-file
bugs): puts fail with ENOSPC before writing, nothing stored is lost, compaction
leaves the old generation, the store reopens whole.  Needs root and mount."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from diskhash import PayloadStore


@pytest.fixture
def small_ext4(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4")
    img = tmp_path / "img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(20 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True, timeout=60)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, timeout=60)
    if r.returncode:
        pytest.skip(f"cannot mount a loop device: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], timeout=60).returncode:
            subprocess.run(["umount", "-l", str(mnt)], timeout=60)     # never leave it mounted


def test_full_disk(small_ext4):
    d = small_ext4 / "s"
    s = PayloadStore(d)
    payloads = {}
    i = 0
    with pytest.raises(OSError) as ei:
        while True:
            p = os.urandom(4000)
            s.put(i, p)
            payloads[i] = p
            i += 1
            if i % 500 == 0:
                s.save()
    assert ei.value.errno == errno.ENOSPC
    assert len(s) == len(payloads) and i not in s
    with pytest.raises(OSError):
        s.compact()                                  # no room for a second copy
    assert s.stats().data_generation == 1
    s.verify()
    s.close()
    with PayloadStore(d) as s2:
        assert s2.recovery is None
        assert len(s2) == len(payloads)
        assert all(s2.get(k) == v for k, v in payloads.items())
        s2.verify()
    assert sorted(os.listdir(d)) == ["MANIFEST", "data-000001.dat", "index-000001.idx",
                                     "index-000001.idx.lock", "store.lock"]
