"""Why ``import diskhash`` fails in a source checkout, said plainly."""

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
