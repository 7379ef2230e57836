"""``diskhash store export DIR out.parquet`` and ``diskhash store import DIR in.parquet``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.processes import subprocess_env

from diskhash import Compression, PayloadStore

pq = pytest.importorskip("pyarrow.parquet")


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "diskhash", "store", *args],
                          capture_output=True, timeout=120, env=subprocess_env())


@pytest.mark.parametrize("raw", [[], ["--raw"]], ids=["payloads", "raw"])
def test_export_import_round_trip(tmp_path, raw):
    values = {i * 977: bytes([i % 256]) * (i % 700) for i in range(400)}
    with PayloadStore(tmp_path / "s", compression=Compression.ZSTD) as store:
        store.put_many(list(values), list(values.values()))
    out = str(tmp_path / "out.parquet")
    r = run("export", str(tmp_path / "s"), out, "--progress", "--parquet-compression", "snappy", *raw)
    assert r.returncode == 0, r.stderr
    assert b"exported 400 payloads" in r.stderr
    assert pq.read_table(out).num_rows == 400
    r = run("import", str(tmp_path / "d"), out, "--compression", "lz4", "--progress")
    assert r.returncode == 0, r.stderr
    assert b"imported 400 payloads" in r.stderr
    with PayloadStore(tmp_path / "d", readonly=True) as store:
        assert store.get_many(list(values)) == list(values.values())


def test_usage_errors(tmp_path):
    PayloadStore(tmp_path / "s").close()
    r = run("export", str(tmp_path / "s"), "-", "--format", "parquet")
    assert r.returncode == 2 and b"needs a file name" in r.stderr
    r = run("export", str(tmp_path / "s"), str(tmp_path / "o.tsv"), "--raw")
    assert r.returncode == 2 and b"--raw is for --format parquet" in r.stderr
    r = run("export", str(tmp_path / "s"), str(tmp_path / "o.parquet"), "--parquet-compression", "x")
    assert r.returncode == 2
    r = run("import", str(tmp_path / "d"), str(tmp_path / "missing.parquet"))
    assert r.returncode == 2 and b"no such file" in r.stderr
