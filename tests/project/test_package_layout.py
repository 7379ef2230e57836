"""docs/development.md's Layout block names every file of the package, and
only files that exist: the map of the tree cannot go stale.

Reads the source folder of the repository (beside tests/), not the installed
package: the block describes the sources.  Generated files (cython's .c and
.html, built .so, bytecode) are not sources and are not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "development.md"
GENERATED = {".c", ".so", ".html", ".pyc"}


def _layout_block() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```\n(diskhash/\n.*?)```", section, re.S)
    assert match, "docs/development.md: no ``` block starting with diskhash/ in the Layout section"
    return match.group(1).splitlines()


def documented_paths(lines: list[str]) -> list[str]:
    """The relative paths the block lists under diskhash/ (files and folders),
    from its indentation: two spaces a level, a folder ends in /."""
    assert lines[0] == "diskhash/"
    paths: list[str] = []
    stack: list[str] = ["diskhash"]
    for number, line in enumerate(lines[1:], start=2):
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            break                            # tests/, benchmarks/, ...: past the package
        assert indent % 2 == 0, f"line {number}: odd indentation: {line!r}"
        depth = indent // 2
        assert depth <= len(stack), f"line {number}: indented past its folder: {line!r}"
        del stack[depth:]
        name = line.split()[0]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            paths.append("/".join(stack) + "/")
        else:
            paths.append("/".join([*stack, name]))
    return paths


def source_paths() -> list[str]:
    found = []
    for path in (ROOT / "diskhash").rglob("*"):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or path.suffix in GENERATED:
            continue
        found.append(rel.as_posix() + ("/" if path.is_dir() else ""))
    return sorted(found)


def test_every_listed_file_exists():
    listed = documented_paths(_layout_block())
    missing = [p for p in listed if not (ROOT / p).exists()]
    assert missing == [], f"docs/development.md lists files that do not exist: {missing}"
    assert len(listed) == len(set(listed)), "docs/development.md lists a file twice"


def test_every_source_file_is_listed():
    listed = set(documented_paths(_layout_block()))
    unlisted = [p for p in source_paths() if p not in listed]
    assert unlisted == [], f"docs/development.md's Layout does not list: {unlisted}"


def test_every_listed_file_says_what_it_holds():
    for line in _layout_block()[1:]:
        if line.startswith("  "):
            assert len(line.split(None, 1)) == 2, f"no description: {line!r}"


def test_the_parser_reads_nesting():
    # A folder's files are its own; a dedent leaves the folder.
    lines = ["diskhash/", "  a.py    x", "  sub/    y", "    b.py  z", "  c.py    w", "tests/  v"]
    assert documented_paths(lines) == ["diskhash/a.py", "diskhash/sub/", "diskhash/sub/b.py", "diskhash/c.py"]
