"""What is wrong with the folder ``import diskhash`` found, said plainly: a
source checkout without its compiled modules, or files of the unrelated
PyPI project that shares the import name."""

import importlib.machinery as _machinery
import os as _os


def missing_extensions() -> "ImportError | None":
    """An ImportError saying what to do, if this folder lacks its compiled modules.

    That is the case when Python runs in the repository root: the source
    folder ``diskhash/`` comes first on ``sys.path`` and shadows the installed
    package, and importing it would otherwise end in a confusing
    "partially initialized module" (circular import) error.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    missing = [name for name in ("_index/convert", "_format/sochidx2", "_index/table")
               if not any(_os.path.exists(_os.path.join(here, *name.split("/")) + suffix)
                          for suffix in _machinery.EXTENSION_SUFFIXES)]
    if not missing:
        return None
    return ImportError(
        f"diskhash was imported from {here}, a source folder whose compiled extensions "
        f"({', '.join(missing)}) are not built. This happens when Python runs in the "
        "repository root, where the source folder shadows the installed package. "
        "Run from another directory (the installed package is used there), or build "
        "the extensions in place: pip install -e . (or python setup.py build_ext --inplace).",
        name="diskhash", path=here)


#: Files of PyPI's unrelated ``diskhash`` (luispedro/diskhash), which
#: installs into the same ``diskhash/`` folder.
FOREIGN_FILES = ("diskhash_version.py", "str2int_tool.py")


def foreign_files(here: "str | None" = None) -> "list[str]":
    """The other ``diskhash``'s files in this folder, if pip installed both
    projects into one environment (it warns about neither).  Ours works then,
    but ``pip uninstall diskhash`` removes our ``__init__.py`` too."""
    here = here or _os.path.dirname(_os.path.abspath(__file__))
    found = [n for n in FOREIGN_FILES if _os.path.exists(_os.path.join(here, n))]
    found += sorted(n for n in _os.listdir(here) if n.startswith("_diskhash.") and n.endswith(".so"))
    return found


FOREIGN_MESSAGE = (
    "{here} also holds files of PyPI's unrelated 'diskhash' project ({files}), which "
    "shares this import name: its API is not there, and 'pip uninstall diskhash' would "
    "delete this package's files too. Use separate environments; to repair this one, "
    "'pip uninstall diskhash diskhash-sochidx', then reinstall this project "
    "('pip install .' in its checkout).")
