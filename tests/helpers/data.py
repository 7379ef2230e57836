"""The index files the Rust implementation wrote (``tests/data/``) and the
entries each holds (the ``.tsv`` beside it)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
FIXTURES = ("empty", "small", "threshold")


def load_tsv(name: str) -> dict[int, tuple[int, int, int, int, int]]:
    """The entries a fixture holds, as key -> (key, offset, length, compression, ulen)."""
    rows = {}
    text = (DATA / f"{name}.tsv").read_text()
    for line in text.splitlines():
        key, offset, length, comp, ulen = (int(x) for x in line.split("\t"))
        rows[key] = (key, offset, length, comp, ulen)
    return rows
