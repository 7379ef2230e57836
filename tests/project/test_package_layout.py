"""The package's shape, checked from its sources.

docs/development.md's Layout block names every file of the package, and only
files that exist: the map of the tree cannot go stale.  And the imports run
one way, down the layers (``LAYERS``): no module imports one of a higher
layer, so each layer can be read, tested and changed knowing only the layers
below it.

Reads the source folder of the repository (beside tests/), not the installed
package: the block describes the sources.  Generated files (cython's .c and
.html, built .so, bytecode) are not sources and are not listed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

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



# -- the import arrows -------------------------------------------------------

#: The layers from the bottom up; a module may import its own layer and the
#: ones below.  The bottom holds what imports nothing of the package: the
#: record types, the errors, the worker-thread helper of the async twins and
#: the check of a source checkout.  The public modules sit on top.
LAYERS: list[tuple[str, ...]] = [
    ("diskhash._types", "diskhash.errors", "diskhash._threads", "diskhash._checkout"),
    ("diskhash._format",),
    ("diskhash._fs",),
    ("diskhash._index",),
    ("diskhash._store",),
    ("diskhash._shards",),
    ("diskhash._cli",),
    ("diskhash.__init__", "diskhash.__main__", "diskhash.aio", "diskhash.dask"),
]

#: Upward imports still in the tree, in files another change owns: each names
#: the importing module, the imported one and why it is here.  A fixed one
#: fails ``test_known_upward_imports_are_still_there``: delete its line.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

SOURCE_SUFFIXES = (".py", ".pyi", ".pyx", ".pxd", ".pxi")
# A Cython import line: ``from diskhash.x cimport a`` / ``from diskhash.x import (`` /
# ``cimport diskhash.x`` / ``import diskhash.x``, at any indentation.
_CYTHON_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+c?import[ \t]+([^#\n]*)"
                            r"|c?import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*))", re.M)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of a ``diskhash`` module (a package: its ``__init__``)."""
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return best[0]


def module_name(path: Path, root: Path) -> str:
    """diskhash/_index/table_open.pxi -> diskhash._index.table_open; a package is its __init__."""
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts)


def _resolve(root: Path, package: str, module: str, level: int, names: list[str]) -> list[str]:
    """The diskhash modules a ``from module import names`` (``level`` dots) reaches."""
    if level:
        base = package.split(".")[: len(package.split(".")) - level + 1]
        module = ".".join(base + ([module] if module else []))
    if module != "diskhash" and not module.startswith("diskhash."):
        return []
    out = []
    for name in names:
        sub = root.joinpath(*module.split("."), name.strip())
        if name.strip() and (sub.is_dir() or any(sub.with_suffix(s).exists() for s in SOURCE_SUFFIXES)):
            out.append(f"{module}.{name.strip()}")       # a submodule: from diskhash._index import convert
        else:
            out.append(module)
    return [m + ".__init__" if root.joinpath(*m.split(".")).is_dir() else m for m in dict.fromkeys(out)]


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a ``diskhash`` module in one source
    file: every ``import``, ``from ... import`` and ``cimport``, at module level
    or inside a function (a lazy import is an arrow too), and
    ``importlib.import_module("diskhash...")`` in Python files."""
    me = module_name(path, root)
    package = me if path.stem == "__init__" else me.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    text = path.read_text()
    found: list[tuple[int, str]] = []
    if path.suffix in (".py", ".pyi"):
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                found += [(node.lineno, m) for a in node.names
                          for m in _resolve(root, package, a.name, 0, [""])]
            elif isinstance(node, ast.ImportFrom):
                found += [(node.lineno, m) for m in
                          _resolve(root, package, node.module or "", node.level, [a.name for a in node.names])]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                found += [(node.lineno, m) for m in _resolve(root, package, node.args[0].value, 0, [""])]
    else:
        for match in _CYTHON_IMPORT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if match.group(1) is not None:
                dots = len(match.group(1)) - len(match.group(1).lstrip("."))
                names = [n.split(" as ")[0] for n in match.group(2).strip("() \t").split(",")]
                found += [(line, m) for m in _resolve(root, package, match.group(1).lstrip("."), dots, names)]
            else:
                found += [(line, m) for name in match.group(3).split(",")
                          for m in _resolve(root, package, name.strip(), 0, [""])]
    return found


def upward_imports(root: Path) -> list[tuple[str, str, str]]:
    """(importer, imported, "file:line") of every import of a higher layer under ``root``/diskhash."""
    out = []
    for path in sorted((root / "diskhash").rglob("*")):
        if path.suffix not in SOURCE_SUFFIXES or "__pycache__" in path.parts:
            continue
        me = module_name(path, root)
        for line, target in imports_of(path, root):
            if layer_of(target) > layer_of(me):
                out.append((me, target, f"{path.relative_to(root)}:{line}"))
    return out


def test_imports_run_down_the_layers():
    found = [(me, target, where) for me, target, where in upward_imports(ROOT) if (me, target) not in KNOWN_UPWARD]
    assert found == [], ("imports of a higher layer (layers, bottom up: "
                         f"{[p[0].split('.')[-1] for p in LAYERS]}):\n"
                         + "\n".join(f"  {where}: {me} imports {target}" for me, target, where in found))


def test_known_upward_imports_are_still_there():
    still = {(me, target) for me, target, _ in upward_imports(ROOT)}
    fixed = [pair for pair in KNOWN_UPWARD if pair not in still]
    assert fixed == [], f"fixed (delete from KNOWN_UPWARD): {fixed}"


def test_the_shards_import_the_store_from_its_layer():
    # Was ``from diskhash import PayloadStore`` in _shards/sharded.py: the top
    # package imported from a lower layer.
    assert ("diskhash._shards.sharded", "diskhash._store.store") in {
        (me, target) for me, target, _ in upward_imports(ROOT) + _all_imports(ROOT)}


def _all_imports(root: Path) -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((root / "diskhash").rglob("*.py")):
        me = module_name(path, root)
        out += [(me, target, f"{path.relative_to(root)}:{line}") for line, target in imports_of(path, root)]
    return out


def test_every_module_is_in_a_layer():
    for path in (ROOT / "diskhash").rglob("*"):
        if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
            layer_of(module_name(path, ROOT))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("source, arrow", [
    # An upward arrow in each form the checker reads; each must be found.
    ("from diskhash._store.read import checksum\n", "diskhash._store.read"),
    ("from diskhash._store import read\n", "diskhash._store.read"),
    ("import diskhash._index.convert as c\n", "diskhash._index.convert"),
    ("def f():\n    from diskhash import PayloadStore\n", "diskhash.__init__"),
    ("from .. import _index\n", "diskhash._index.__init__"),
    ("import importlib\nm = importlib.import_module('diskhash._cli.app')\n", "diskhash._cli.app"),
])
def test_the_checker_finds_an_upward_import_in_python(tmp_path, source, arrow):
    root = _tree(tmp_path, {"diskhash/__init__.py": "", "diskhash/_format/__init__.py": "",
                            "diskhash/_format/payload.py": source, "diskhash/_store/__init__.py": "",
                            "diskhash/_store/read.pyx": "", "diskhash/_index/__init__.py": "",
                            "diskhash/_index/convert.pyx": "", "diskhash/_cli/__init__.py": "",
                            "diskhash/_cli/app.py": ""})
    assert [(me, target) for me, target, _ in upward_imports(root)] == [("diskhash._format.payload", arrow)]


@pytest.mark.parametrize("source, arrow", [
    ("from diskhash._index.convert cimport key_to_u128\n", "diskhash._index.convert"),
    ("from diskhash._index.table cimport (\n    DiskHashIndex,\n)\n", "diskhash._index.table"),
    ("    from diskhash._store import read as r\n", "diskhash._store.read"),
    ("cimport diskhash._index.table\n", "diskhash._index.table"),
])
def test_the_checker_finds_an_upward_import_in_cython(tmp_path, source, arrow):
    root = _tree(tmp_path, {"diskhash/__init__.py": "", "diskhash/_format/__init__.py": "",
                            "diskhash/_format/frame.pyx": "from diskhash._format.sochidx2 cimport X\n" + source,
                            "diskhash/_format/sochidx2.pxd": "", "diskhash/_index/__init__.py": "",
                            "diskhash/_index/convert.pxd": "", "diskhash/_index/table.pxd": "",
                            "diskhash/_store/__init__.py": "", "diskhash/_store/read.pyx": ""})
    assert [(me, target) for me, target, _ in upward_imports(root)] == [("diskhash._format.frame", arrow)]



# -- sizes -------------------------------------------------------------------

#: A class is one concept; past this many lines it is doing several jobs.
MAX_CLASS_LINES = 450
#: A hand-written source file past this many lines wants a table of contents: it is two files.
MAX_FILE_LINES = 800
#: A Cython or Python class statement at the start of a line.
_CLASS = re.compile(r"^(?:cdef\s+(?:public\s+)?)?class\s+(\w+)")

#: Classes over the limit in files another change owns, with why; a class
#: brought under it fails ``test_known_big_classes_are_still_big``: delete its line.
KNOWN_BIG_CLASSES: dict[tuple[str, str], str] = {}


def hand_written_sources(root: Path) -> list[Path]:
    """Every source file of the package (generated .c, .so and .html excluded)."""
    return [p for p in sorted((root / "diskhash").rglob("*"))
            if p.suffix in (*SOURCE_SUFFIXES, ".h") and "__pycache__" not in p.parts]


def class_sizes(path: Path) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every class in one source file, nested ones
    too: from its ``class`` line to the last line of its indented body."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        match = _CLASS.match(stripped)
        if match is None:
            continue
        indent = len(line) - len(stripped)
        last = i
        for j in range(i + 1, len(lines)):
            text = lines[j]
            if not text.strip():
                continue
            if len(text) - len(text.lstrip()) <= indent:
                if text.lstrip().startswith("#"):
                    continue                # a comment at the margin: the body may go on after it
                break
            last = j
        out.append((match.group(1), i + 1, last - i + 1))
    return out


def big_classes(root: Path) -> list[tuple[str, str, int]]:
    return [(path.relative_to(root).as_posix(), name, size) for path in hand_written_sources(root)
            for name, _, size in class_sizes(path) if size > MAX_CLASS_LINES]


def test_no_class_over_the_limit():
    found = [f"{where} {name}: {size} lines" for where, name, size in big_classes(ROOT)
             if (where, name) not in KNOWN_BIG_CLASSES]
    assert found == [], (f"classes over {MAX_CLASS_LINES} lines (hand a job to a collaborator, "
                         "docs/internals/design.md):\n  " + "\n  ".join(found))


def test_known_big_classes_are_still_big():
    still = {(where, name) for where, name, _ in big_classes(ROOT)}
    fixed = [key for key in KNOWN_BIG_CLASSES if key not in still]
    assert fixed == [], f"under the limit now (delete from KNOWN_BIG_CLASSES): {fixed}"


def test_no_source_file_over_the_limit():
    found = [f"{p.relative_to(ROOT)}: {n} lines" for p in hand_written_sources(ROOT)
             if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert found == [], f"source files over {MAX_FILE_LINES} lines (split by concern):\n  " + "\n  ".join(found)


def test_the_class_measure_reads_python_and_cython(tmp_path):
    path = tmp_path / "m.pyx"
    path.write_text("cdef class A:\n    x = 1\n\n    # note\n    def f(self):\n        pass\n"
                    "# a comment at the margin, inside nothing\nclass B:\n    class C:\n        y = 2\n"
                    "    z = 3\ndef g():\n    pass\n")
    assert class_sizes(path) == [("A", 1, 6), ("B", 8, 4), ("C", 9, 2)]


# -- no reach-through --------------------------------------------------------

#: The public methods of NamedTuple, whose names start with one underscore.
NAMEDTUPLE_API = {"_asdict", "_replace", "_fields", "_make", "_field_defaults"}

#: (file, name): underscored names used across modules on purpose, with why.
#: A removed one fails ``test_known_private_uses_are_still_there``: delete its line.
KNOWN_PRIVATE: dict[tuple[str, str], str] = {}


def _own_names(tree: ast.Module) -> set[str]:
    """The names a module defines: functions, classes, assigned names, the
    attributes its classes set on ``self``/``cls`` and their ``__slots__``."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            own.add(node.attr)
        elif (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                    for t in node.targets)):
            own.update(c.value for c in ast.walk(node.value)
                       if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return own


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API


def private_uses(root: Path) -> list[tuple[str, str, int]]:
    """(file, name, line) of every use of another module's underscored name in
    the package's Python files: ``obj._name`` where ``obj`` is not
    ``self``/``cls`` and the module does not define ``_name`` itself, and
    ``from diskhash... import _name`` of anything but a submodule.  (The
    compiled modules meet through their ``.pxd`` declarations, not here.)"""
    out = []
    for path in sorted((root / "diskhash").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), rel)
        own = _own_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr not in own:
                    out.append((rel, node.attr, node.lineno))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diskhash"):
                base = root.joinpath(*(node.module or "").split("."))
                for alias in node.names:
                    sub = base / alias.name
                    if _private(alias.name) and not (
                            sub.is_dir() or any(sub.with_suffix(x).exists() for x in SOURCE_SUFFIXES)):
                        out.append((rel, alias.name, node.lineno))
    return out


def test_no_module_uses_another_modules_private_names():
    found = [f"{where}:{line}: {name}" for where, name, line in private_uses(ROOT)
             if (where, name) not in KNOWN_PRIVATE]
    assert found == [], ("underscored names of another module or object (give the interface "
                         "a public name inside the private module, or pass a small helper "
                         "object):\n  " + "\n  ".join(found))


def test_known_private_uses_are_still_there():
    still = {(where, name) for where, name, _ in private_uses(ROOT)}
    gone = [key for key in KNOWN_PRIVATE if key not in still]
    assert gone == [], f"no longer used (delete from KNOWN_PRIVATE): {gone}"


def test_the_reach_through_check_finds_each_form(tmp_path):
    root = _tree(tmp_path, {
        "diskhash/__init__.py": "", "diskhash/_store/__init__.py": "", "diskhash/_store/read.pyx": "",
        "diskhash/_store/a.py": (
            "from diskhash._store.b import _helper, public\n"   # a private function: found
            "from diskhash._store import read\n"                 # a submodule: fine
            "from diskhash import _store\n"                      # a private package: fine
            "class A:\n"
            "    def __init__(self, other):\n"
            "        self._mine = 1\n"                            # own
            "        other._mine = 2\n"                           # an own name on another object: fine
            "        other.sync._route()\n"                       # found
            "        self._x.__len__()\n"                         # dunder: fine
            "        return other.stats()._asdict()\n"            # NamedTuple API: fine
            "def f(mod):\n"
            "    return mod._lz4\n"),                              # found
        "diskhash/_store/b.py": "def _helper():\n    pass\npublic = 1\n"})
    assert sorted((name, line) for _, name, line in private_uses(root)) == [
        ("_helper", 1), ("_lz4", 12), ("_route", 8)]
