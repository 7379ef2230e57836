"""docs/guide/dask.md's first example runs as written: a LocalCluster, a Bag built in
the snippet, build_store, LookupService.get_many, the set reopened as a
ShardedStore.  The code is read out of the page, so it cannot drift; what it
prints must be what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers.packaging import ROOT
from helpers.processes import subprocess_env

pytest.importorskip("distributed")
pytest.importorskip("dask.bag")

PAGE = ROOT / "docs" / "guide" / "dask.md"


def first_python_block() -> str:
    if not PAGE.exists():
        pytest.skip("not a source checkout: no docs/guide/dask.md")
    match = re.search(r"^```python\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.M | re.S)
    assert match is not None
    return match.group(1)


def test_first_example_runs_and_prints_what_its_comments_say(tmp_path):
    block = first_python_block()
    for needed in ("LocalCluster(", "build_store(", "LookupService(", ".get_many(", "ShardedStore("):
        assert needed in block, needed
    expected = [line.split("#", 1)[1].strip() for line in block.splitlines() if line.lstrip().startswith("print(")]
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=subprocess_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == expected == ["[b'payload 0', b'payload 42', None]", "10000 b'payload 42'"]
    assert (tmp_path / "edges.set" / "manifest.json").is_file()
