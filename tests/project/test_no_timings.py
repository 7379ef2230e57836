"""No measured timing in the package's sources: figures go stale in a
docstring or a comment, so they live in docs/performance.md (with the
command that measures them) and the source says why, without the number.

Reads the source folder beside tests/ (every .py, .pyi, .pyx, .pxd, .pxi
and .h file, docstrings, comments and messages alike).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = (".py", ".pyi", ".pyx", ".pxd", ".pxi", ".h")

#: A number with a unit of time or of throughput ("150-400 ms", "~300 ns",
#: "0.8 ns", "2.5 us", "243 MB/s", "3 s"), or a speed-up ("2x faster").
#: A bare "s" needs a space before it: "8s" is a struct format code; a bound
#: (">= 0 seconds") is not a figure.
TIMING = re.compile(
    r"(?<![<>=] )\b\d[\d,.]*(?:[-–]\d[\d,.]*)?"
    r"(?: ?(?:ns|us|µs|ms|[KMG]i?B/s|[KMG]B/s)| (?:s|secs?|seconds|minutes))(?!\w)"
    r"|\b\d[\d.]*x (?:faster|slower)\b")

#: (file, the text matched): figures that are not measurements.
ALLOWED: dict[tuple[str, str], str] = {
    ("diskhash/_threads.py", "5 ms"): "CPython's default switch interval (sys.getswitchinterval()), a setting",
}

#: Timings still in files another change owns; a removed one fails
#: ``test_known_timings_are_still_there``: delete its line.
KNOWN: dict[tuple[str, str], str] = {}


def timings(root: Path) -> list[tuple[str, str, int]]:
    """(file, matched text, line) of every timing in the sources under ``root``/diskhash."""
    found = []
    for path in sorted((root / "diskhash").rglob("*")):
        if path.suffix not in SOURCE_SUFFIXES or "__pycache__" in path.parts:
            continue
        text = path.read_text()
        for match in TIMING.finditer(text):
            found.append((path.relative_to(root).as_posix(), match.group(0),
                          text.count("\n", 0, match.start()) + 1))
    return found


def test_no_timing_in_the_sources():
    stale = [f"{name}:{line}: {text!r}" for name, text, line in timings(ROOT)
             if (name, text) not in ALLOWED and (name, text) not in KNOWN]
    assert stale == [], ("measured figures belong in docs/performance.md, not in the sources "
                         "(keep the why, drop the number):\n  " + "\n  ".join(stale))


def test_known_timings_are_still_there():
    still = {(name, text) for name, text, _ in timings(ROOT)}
    gone = [key for key in [*KNOWN, *ALLOWED] if key not in still]
    assert gone == [], f"no longer in the sources (delete from the list): {gone}"


@pytest.mark.parametrize("text, found", [
    ("    ``pread`` chunks took 150-400 ms, through the map's slices 85-100 ms.", ["150-400 ms", "85-100 ms"]),
    ("# ~300 ns a key, half of a put_many", ["300 ns"]),
    ("about 2.5 us through page faults, 0.3 us once", ["2.5 us", "0.3 us"]),
    ("compact 243 MB/s, a grow of 2 s, 1.5µs", ["243 MB/s", "2 s", "1.5µs"]),
    ("a 2x faster path", ["2x faster"]),
    ("#  0  8s  magic \"SOCHDATA\"", []),                  # a struct format code
    ("exit status: 0 ok, 2 usage or file error", []),
    ("timeout must be >= 0 seconds or None", []),
    ("a 16 MiB buffer, 1 << 16 slots, 64 bytes", []),
    ('f"{t:.3f}s (waited {w * 1000:.1f} ms)"', []),
])
def test_the_pattern(text, found):
    assert [m.group(0) for m in TIMING.finditer(text)] == found
