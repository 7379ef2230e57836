"""python -m diskhash: info, verify, repair, dump."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.data import DATA, load_tsv
from helpers.processes import subprocess_env
from helpers.spec_model import SLOT_FIELD, slot_key, slot_offset

import diskhash
from diskhash import DiskHashIndex, PayloadMeta


def cli(*args: str, cwd: Path, stdout=subprocess.PIPE, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diskhash", *args], check=False,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          env=subprocess_env(), cwd=cwd, **kwargs)



def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diskhash", *args],
                          check=False, capture_output=True, text=True, timeout=120,
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


# -- issue 9, defect 11 ----------------------------------------------------------

PACKAGE = Path(diskhash.__file__).parent
ROOT = Path(__file__).resolve().parents[2]


def big_index(path: Path, n: int = 20_000) -> Path:
    with DiskHashIndex(path) as idx:
        for k in range(n):
            idx.insert(k, PayloadMeta(k, k, 1, 0, 1))
    return path


def damage(path: Path, how_many: int) -> list[int]:
    """Bad compression bytes in the first ``how_many`` occupied slots; their slot numbers."""
    data = bytearray(path.read_bytes())
    slots = []
    for i in range((len(data) - 64) // 40):
        if data[64 + 40 * i] == 1:
            data[64 + 40 * i + 1] = 200
            slots.append(i)
            if len(slots) == how_many:
                break
    path.write_bytes(bytes(data))
    return slots


def test_source_folder_shadowing_the_package_fails_with_a_clear_message(tmp_path):
    # The repository root as a user's shell sees it: a diskhash/ folder of
    # sources without compiled extensions, first on sys.path (-S: and no
    # installed package behind it).
    src = tmp_path / "diskhash"
    src.mkdir()
    for f in PACKAGE.iterdir():
        if f.suffix in (".py", ".pyx", ".pxd", ".pyi"):
            shutil.copy(f, src / f.name)
    for argv in (["-m", "diskhash", "info", "x.idx"], ["-c", "import diskhash"]):
        r = subprocess.run([sys.executable, "-S", *argv], check=False, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
        assert r.returncode != 0
        assert "source folder" in r.stderr and "shadows the installed package" in r.stderr, r.stderr
        assert "pip install -e ." in r.stderr and "another directory" in r.stderr
        assert "circular import" not in r.stderr and "partially initialized" not in r.stderr
    assert "Traceback" not in subprocess.run(
        [sys.executable, "-S", "-m", "diskhash", "info", "x.idx"], check=False, capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env={"PATH": os.environ["PATH"]}).stderr
    assert not (tmp_path / "x.idx").exists()


def test_dump_into_a_closed_pipe_exits_quietly(tmp_path):
    path = big_index(tmp_path / "big.idx")
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-m', 'diskhash', 'dump', sys.argv[1]],\n"
            "                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
            "p.stdout.readline(); p.stdout.close()\n"
            "err = p.stderr.read().decode(); rc = p.wait()\n"
            "print(rc); print(err)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True,
                       timeout=120, env=subprocess_env(), cwd=tmp_path)
    rc, _, err = r.stdout.partition("\n")
    assert int(rc) == 141, r.stdout + r.stderr          # 128 + SIGPIPE, as `seq 1e9 | head` reports
    assert err.strip() == "", err                        # no "Broken pipe", no traceback


def test_dump_into_head_in_a_shell_pipeline(tmp_path):
    if shutil.which("sh") is None or shutil.which("head") is None:
        pytest.skip("no sh/head")
    path = big_index(tmp_path / "big.idx")
    r = subprocess.run(["sh", "-c", f'"{sys.executable}" -m diskhash dump "{path}" | head -n 3'],
                       check=False, capture_output=True, text=True, timeout=120, env=subprocess_env(),
                       cwd=tmp_path)
    assert len(r.stdout.splitlines()) == 3 and r.stderr == "", r.stderr


def test_repair_of_a_missing_path_is_an_error_that_creates_nothing(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "x.idx"
    r = run("repair", str(target))
    assert r.returncode == 2 and f"{target}: no such file" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run("repair", str(tmp_path / "x.idx"))
    assert r.returncode == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["info", "verify", "repair", "dump"])
def test_a_directory_path_is_named_in_the_error(tmp_path, cmd):
    d = tmp_path / "a dir"
    d.mkdir()
    r = run(cmd, str(d))
    assert r.returncode == 2 and f"{d}: is a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and list(d.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a dir"]


@pytest.mark.parametrize("cmd", ["info", "verify", "dump"])
def test_a_non_index_file_is_named_in_the_error(tmp_path, cmd):
    f = tmp_path / "notes.txt"
    f.write_text("not an index\n" * 10)
    r = run(cmd, str(f))
    assert r.returncode == 1 and str(f) in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_verify_prints_every_defect_on_its_own_line(tmp_path):
    path = big_index(tmp_path / "big.idx", 2000)
    slots = damage(path, 30)
    r = run("verify", str(path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == f"python -m diskhash: error: {path}: corrupt index, 30 defect(s):", lines[0]
    assert lines[1:] == [f"  slot {s}: unknown compression byte 200" for s in slots]


def test_repair_names_each_dropped_slot_once(tmp_path):
    path = big_index(tmp_path / "big.idx", 2000)
    slots = damage(path, 3)
    r = run("repair", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{path}: kept 1997 entries in 4096 slots, dropped 3"
    assert lines[1:] == [f"  dropped slot {s}: unknown compression byte 200" for s in slots]
    assert r.stdout.count(f"slot {slots[0]}:") == 1


def test_help_names_the_program_as_it_was_run(tmp_path):
    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m diskhash "), r.stdout
    for name in ("info", "verify", "repair", "dump"):
        assert name in r.stdout
    script = shutil.which("diskhash", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the diskhash console script is not installed beside this python")
    r = subprocess.run([script, "--help"], check=False, capture_output=True, text=True, timeout=60,
                       env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: diskhash "), r.stdout


def test_prog_name_from_argv0():
    from diskhash._cli.app import prog_name

    assert prog_name("/usr/local/bin/diskhash") == "diskhash"
    assert prog_name("/site-packages/diskhash/__main__.py") == "python -m diskhash"


def _run_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; (status, stdout, terminal output)."""
    master, slave = pty.openpty()
    seen: list[bytes] = []

    def drain() -> None:                    # keep the terminal's buffer from filling
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:                 # the other end is closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    # (cwd: not the repository root, whose source folder would shadow the package)
    with subprocess.Popen([sys.executable, "-m", "diskhash", *args], stdout=subprocess.PIPE,
                          stderr=slave, env=subprocess_env(), cwd=DATA.parent) as p:
        os.close(slave)
        out, _ = p.communicate(timeout=120)
        code = p.wait()
    reader.join(timeout=30)
    os.close(master)
    return code, out.decode(), b"".join(seen).decode(errors="replace")


def test_dump_on_a_terminal_keeps_stdout_clean_and_on_a_pipe_draws_nothing(tmp_path):
    path = big_index(tmp_path / "big.idx", 100_000)
    code, out, term = _run_on_a_terminal(["dump", str(path)])
    assert code == 0 and len(out.splitlines()) == 100_000 and "[" not in out
    assert "Traceback" not in term
    r = run("dump", str(path))                       # stderr is a pipe: never a bar
    assert r.returncode == 0 and r.stderr == ""
    r = run("verify", str(path))
    assert r.returncode == 0 and r.stderr == ""


def test_demo_can_keep_the_index_it_builds(tmp_path):
    keep = tmp_path / "kept"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--entries", "2000", "--payloads", "2000",
                        "--keep", str(keep)], check=False, capture_output=True, text=True, timeout=300,
                       env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    kept = keep / "edges.idx"
    assert kept.is_file() and f"kept {kept}" in r.stdout
    r = run("verify", str(kept))
    assert r.returncode == 0 and "ok (2000 entries" in r.stdout


@pytest.mark.parametrize("value", ["nan", "-1", "abc", "-inf"])
def test_a_bad_timeout_is_a_usage_error(tmp_path, value):
    path = big_index(tmp_path / "x.idx", 10)
    r = run("info", "--timeout", value, str(path))
    assert r.returncode == 2 and "--timeout" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_timeout_inf_waits_and_numbers_are_seconds():
    from diskhash._cli.command import seconds

    assert seconds("inf") is None and seconds("2.5") == 2.5 and seconds("0") == 0.0


@pytest.mark.parametrize("make", ["empty", "fifo", "dangling"])
def test_odd_paths_are_named_errors_that_create_nothing(tmp_path, make):
    if make == "empty":
        target = ""
    elif make == "fifo":
        target = str(tmp_path / "pipe")
        os.mkfifo(target)
    else:
        target = str(tmp_path / "link")
        os.symlink(tmp_path / "nowhere.idx", target)
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in ("info", "verify", "repair", "dump"):
        r = run(cmd, target)                        # a FIFO must not block the open
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert (target and target in r.stderr) or "empty path" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dump_with_stdout_closed_is_an_error_not_a_traceback(small_index, tmp_path):
    """A hostile pass over the index, its files and the CLI found this."""
    r = cli("dump", str(small_index), cwd=tmp_path, stdout=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(1))
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2
    assert "standard output is closed" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["info", "verify", "repair", "dump"])
def test_a_full_stdout_names_standard_output_not_the_index(small_index, tmp_path, command):
    # "diskhash: error: x.idx: No space left on device" blamed the index.
    """A hostile pass over the index, its files and the CLI found this."""
    with open("/dev/full", "w") as full:
        r = cli(command, str(small_index), cwd=tmp_path, stdout=full)
    assert r.returncode == 2, r.stderr
    assert "standard output: No space left on device" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    with DiskHashIndex(small_index, readonly=True) as idx:
        idx.verify()
        assert len(idx) == 100
