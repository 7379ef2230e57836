"""Every callable of every extension type of the index's compiled modules
refuses a foreign ``self`` with ``TypeError``: never a crash.  Runs in a child
Python with a timeout."""

from __future__ import annotations

from helpers.crafted import FOREIGN_SELF
from helpers.processes import run_child

REPORTED_CALLS = r"""
from diskhash import DiskHashIndex
calls = {
    "get": lambda: DiskHashIndex.get("x", 1),
    "close": lambda: DiskHashIndex.close(object()),
    "delete": lambda: DiskHashIndex.delete(1, 2),
    "pop": lambda: DiskHashIndex.pop(None, 1),
    "reserve": lambda: DiskHashIndex.reserve(object(), 10),
    "_create": lambda: DiskHashIndex._create(object(), 4096),
    "_open_file": lambda: DiskHashIndex._open_file(object(), None),
    "_scan": lambda: DiskHashIndex._scan(object(), 0),
    "_release_resources": lambda: DiskHashIndex._release_resources(object(), True),
    "__len__": lambda: DiskHashIndex.__len__(object()),
    "closed": lambda: DiskHashIndex.closed.__get__(object()),
}
for name, call in calls.items():
    if not hasattr(DiskHashIndex, name):
        print(name, "not callable from Python")    # the helpers became C functions
        continue
    try:
        call()
    except TypeError as exc:
        print(name, "TypeError", "descriptor" in str(exc) or "requires" in str(exc))
"""



def test_foreign_self_raises_type_error_for_every_callable_of_every_extension_type():
    """A hostile pass found this: every call keeps its contract."""
    r = run_child(FOREIGN_SELF, timeout=120)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}"
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == []
    types = next(line for line in r.stdout.splitlines() if line.startswith("types")).split()[1:]
    assert "diskhash._index.table.DiskHashIndex" in types and "diskhash._index.table._Chunk" in types
    checked = int(r.stdout.split("checked ")[-1])
    assert checked > 2000          # every method, property and slot, with every foreign self


def test_the_reported_foreign_self_calls_raise_the_descriptor_type_error():
    """A hostile pass found this: every call keeps its contract."""
    r = run_child(REPORTED_CALLS, timeout=60)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert len(lines) == 11, lines
    for line in lines:
        name = line.split()[0]
        ok = line.endswith(" TypeError True") or (
            name.startswith("_") and line.endswith("not callable from Python"))
        assert ok, line
