"""``diskhash store ...``: every command, its output and exit status."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from helpers.processes import subprocess_env

from diskhash import PayloadStore


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "diskhash", "store", *args], input=stdin,
                          capture_output=True, timeout=120, env=subprocess_env())


def test_put_get_stats_verify(tmp_path):
    d = str(tmp_path / "s")
    r = run("put", d, "42", "--compression", "zstd", stdin=b"hello " * 100)
    assert r.returncode == 0, r.stderr
    assert b"600 bytes stored as" in r.stdout and b"ZSTD" in r.stdout
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300))
    assert run("put", d, "0x10", str(src)).returncode == 0
    r = run("get", d, "42")
    assert r.returncode == 0 and r.stdout == b"hello " * 100
    out = tmp_path / "out.bin"
    assert run("get", d, "16", "-o", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    r = run("get", d, "7")
    assert r.returncode == 3 and b"not found" in r.stderr
    assert r.stderr.split(b": ")[0].endswith(b"diskhash"), r.stderr   # the program's name first, as every message
    r = run("stats", d)
    assert r.returncode == 0 and b"entries             2" in r.stdout
    r = run("verify", d)
    assert r.returncode == 0 and b"ok (2 entries)" in r.stdout


def test_usage_and_missing_store_errors(tmp_path):
    r = run("get", str(tmp_path / "none"), "1")
    assert r.returncode == 2 and b"no such store" in r.stderr
    assert not (tmp_path / "none").exists()
    d = str(tmp_path / "s")
    run("put", d, "1", stdin=b"x")
    r = run("get", d, "not-a-key")
    assert r.returncode == 2 and b"not a key" in r.stderr
    r = run("get", d, str(1 << 128))
    assert r.returncode == 2
    r = run("bogus", d)
    assert r.returncode == 2


def test_verify_reports_damage_exit_1(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        m = s.put(5, b"A" * 200)
        path = s.data_path
    with open(path, "r+b") as f:
        f.seek(m.offset + 3)
        f.write(b"Z")
    r = run("verify", str(d))
    assert r.returncode == 1 and b"defect" in r.stderr and b"0x5" in r.stderr
    assert r.stderr.startswith(b"python -m diskhash: error: "), r.stderr     # as the index's verify
    r = run("get", str(d), "5")
    assert r.returncode == 1 and b"checksum" in r.stderr


def test_rebuild_and_compact(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        for v in range(3):
            s.put_many(range(100), [b"%d-%d" % (k, v) * 10 for k in range(100)])
    r = run("rebuild", str(d), "--no-progress")
    assert r.returncode == 0 and b"100 entries" in r.stdout, r.stderr
    r = run("compact", str(d))
    assert r.returncode == 0 and b"writers waited" in r.stdout
    with PayloadStore(d, readonly=True) as s:
        assert s.get(99) == b"99-2" * 10 and s.stats().garbage_ratio == 0.0


def test_import_export_round_trips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    payloads = {i: os.urandom(i * 10) for i in range(1, 30)}
    payloads[1000] = "text ünïcode".encode()
    for k, v in payloads.items():
        (src / str(k)).write_bytes(v)
    d = str(tmp_path / "s")
    r = run("import", d, str(src), "--compression", "lz4")
    assert r.returncode == 0, r.stderr
    for fmt in ("tsv", "jsonl"):
        out = tmp_path / f"dump.{fmt}"
        r = run("export", d, str(out))
        assert r.returncode == 0, r.stderr
        d2 = str(tmp_path / f"s-{fmt}")
        assert run("import", d2, str(out)).returncode == 0
        with PayloadStore(d2, readonly=True) as s:
            assert {k: s.get(k) for k in s} == payloads
    lines = (tmp_path / "dump.jsonl").read_text().splitlines()
    objs = [json.loads(x) for x in lines]
    assert {"key": "1000", "value": "text ünïcode"} in objs
    first = (tmp_path / "dump.tsv").read_bytes().splitlines()[0].split(b"\t")
    assert base64.b64decode(first[1]) == payloads[int(first[0])]
    out_dir = tmp_path / "exported"
    assert run("export", d, str(out_dir) + "/", "--format", "dir").returncode == 0
    assert {int(p.name): p.read_bytes() for p in out_dir.iterdir()} == payloads
    r = run("export", d, "-", "--format", "tsv")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(payloads)


def test_export_names_its_output_destination_and_import_its_input_source():
    export = run("export", "--help")
    assert export.returncode == 0, export.stderr
    usage = export.stdout.decode().split("\n\n")[0]
    assert "destination" in usage and "source" not in usage, usage
    assert b"where to write" in export.stdout
    imp = run("import", "--help")
    assert imp.returncode == 0 and b"source" in imp.stdout.split(b"\n\n")[0] and b"what to read" in imp.stdout


def test_store_errors_start_like_the_index_commands_errors(tmp_path):
    """One prefix for every error message: ``PROG: error: ...``, as ``diskhash info`` prints."""
    index_error = subprocess.run([sys.executable, "-m", "diskhash", "info", str(tmp_path / "none.idx")],
                                 capture_output=True, timeout=120, env=subprocess_env())
    assert index_error.returncode == 2 and index_error.stderr.startswith(b"python -m diskhash: error: "), \
        index_error.stderr
    d = str(tmp_path / "s")
    for args, status in [(("get", str(tmp_path / "none"), "1"), 2),        # usage
                         (("export", d, str(tmp_path / "out.xyz")), 2)]:   # no format
        if args[0] == "export":
            run("put", d, "1", stdin=b"x")
        r = run(*args)
        assert r.returncode == status and r.stderr.startswith(b"python -m diskhash: error: "), r.stderr
    manifest = os.path.join(d, "MANIFEST")
    with open(manifest, "r+b") as f:                                       # a DiskHashError
        f.write(b"garbage!")
    r = run("stats", d)
    assert r.returncode == 1 and r.stderr.startswith(b"python -m diskhash: error: "), r.stderr


def test_import_bad_lines_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "1", "value": "ok"}\nnot json\n')
    d = str(tmp_path / "s")
    r = run("import", d, str(bad))
    assert r.returncode == 2 and b"bad.jsonl:2" in r.stderr
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t!!!\n")
    r = run("import", d, str(bad))
    assert r.returncode == 2 and b"base64" in r.stderr


def test_cli_reads_a_store_another_process_writes(tmp_path):
    """The commands open the store beside a writer (it once exited 1: "locked")."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(7, b"seven")
        r = run("stats", str(d))
        assert r.returncode == 0 and b"entries" in r.stdout, r.stderr
        r = run("get", str(d), "7")
        assert r.returncode == 0 and r.stdout.rstrip(b"\n") == b"seven", r.stderr


def test_keys_are_exactly_what_the_docs_say():
    # int() also reads other scripts' digits ("١" is 1), underscores, signs and
    # inner spaces: such a "key" named another record.  docs/guide/store.md: ASCII
    # decimal, 0x hex or a UUID; nothing else.
    import pytest

    from diskhash._cli.store import UsageError, parse_key

    good = {"0": 0, "42": 42, " 42\n": 42, "007": 7, "0x10": 16, "0XfF": 255,
            "0x" + "f" * 32: 2**128 - 1, str(2**128 - 1): 2**128 - 1, "0" * 5000 + "5": 5,
            "12345678-1234-5678-1234-567812345678": 0x12345678123456781234567812345678}
    for text, key in good.items():
        assert parse_key(text) == key, text
    bad = ["١", "٤٢", "４２", "1_000", "0x_10", "+5", "-1", "1 2", "", "0x", "1e3", "0b101", "0o7",
           "1.0", "{12345678-1234-5678-1234-567812345678}",
           "urn:uuid:12345678-1234-5678-1234-567812345678", "1234567-81234-5678-1234-567812345678",
           "12345678-1234-5678-1234-56781234567٨", str(2**128), "0x1" + "0" * 32, "9" * 5000]
    for text in bad:
        with pytest.raises(UsageError, match="is not a key"):
            parse_key(text)


def test_a_unicode_digit_key_is_a_usage_error(tmp_path):
    d = str(tmp_path / "s")
    with PayloadStore(d) as s:
        s.put(1, b"one")
    r = run("get", d, "١")
    assert r.returncode == 2 and b"is not a key" in r.stderr and r.stdout == b"", r
    assert run("get", d, "1").stdout == b"one"


def test_timeout_takes_what_the_index_commands_take(tmp_path):
    d = str(tmp_path / "s")
    run("put", d, "1", stdin=b"x")
    r = run("stats", d, "--timeout", "inf")
    assert r.returncode == 0, r.stderr
    for bad in ("nan", "-1", "soon"):
        r = run("stats", d, "--timeout", bad)
        assert r.returncode == 2 and b"--timeout" in r.stderr and b"Traceback" not in r.stderr, r.stderr
