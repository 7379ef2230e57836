"""python -m diskhash: info, verify, repair, dump."""

from __future__ import annotations

import subprocess
import sys

from conftest import DATA, load_tsv, subprocess_env
from spec_model import SLOT_FIELD, slot_key, slot_offset

from diskhash import DiskHashIndex


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diskhash", *args],
                          capture_output=True, text=True, timeout=120,
                          env=subprocess_env(), cwd=DATA.parent)


def test_dump_reproduces_the_fixture_tsv(fixture_copy):
    r = run("dump", str(fixture_copy("small")))
    assert r.returncode == 0, r.stderr
    got = {}
    for line in r.stdout.splitlines():
        key, *rest = (int(x) for x in line.split("\t"))
        got[key] = (key, *rest)
    assert got == load_tsv("small")


def test_info_and_verify_on_a_sound_file(fixture_copy):
    path = str(fixture_copy("threshold"))
    r = run("info", path)
    assert r.returncode == 0, r.stderr
    assert "entries        3072" in r.stdout and "slots          4096" in r.stdout
    r = run("verify", path)
    assert r.returncode == 0 and "ok (3072 entries" in r.stdout


def test_verify_and_repair_a_damaged_file(fixture_copy):
    path = fixture_copy("small")
    data = bytearray(path.read_bytes())
    # Put a bad compression byte in the first occupied slot.
    for i in range(4096):
        if data[slot_offset(i) + SLOT_FIELD["tag"]] == 1:
            data[slot_offset(i) + SLOT_FIELD["compression"]] = 200
            victim = slot_key(data, i)
            break
    path.write_bytes(bytes(data))
    r = run("verify", str(path))
    assert r.returncode == 1 and "unknown compression byte 200" in r.stderr
    r = run("repair", str(path))
    assert r.returncode == 0, r.stderr
    assert "kept 99 entries" in r.stdout and "dropped 1" in r.stdout
    with DiskHashIndex(path, readonly=True) as idx:
        idx.verify()
        assert victim not in idx and len(idx) == 99


def test_missing_file_is_a_clean_error(tmp_path):
    r = run("info", str(tmp_path / "nope.idx"))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
