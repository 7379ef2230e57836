"""The README's main job (examples/demo.py) runs and checks what it builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.processes import subprocess_env

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_builds_reopens_and_checks_every_entry(tmp_path):
    r = subprocess.run([sys.executable, str(DEMO), "--entries", "30000", "--payloads", "5000", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "all 30,000 entries read back exactly" in r.stdout
    assert "entries                  30,000" in r.stdout
    assert "all 5,000 payloads read back exactly" in r.stdout
    assert list(tmp_path.iterdir()) == []   # its temporary directory is gone


def test_demo_help_gives_the_whole_description_and_every_option():
    r = subprocess.run([sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=60,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    # the docstring's whole first paragraph (its first line used to end at "check")
    assert "reopen both, check every entry and every payload byte, print throughput." in text, text
    options = text.split("options:", 1)[1]
    for option in ("--entries", "--payloads", "--dir", "--keep"):
        after = options.split(f"{option} ", 1)[1].split(" --")[0]
        assert len(after.split()) > 2, (option, after)        # a help text, not just the metavar
