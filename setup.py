"""Build the Cython extensions.

``DISKHASH_DEBUG=1`` turns bounds checks and line tracing back on;
``DISKHASH_ANNOTATE=1`` writes the ``cython -a`` HTML next to each module.

Two things keep a build short.  The eight modules are translated and compiled
in parallel, one job per core (``-j N`` on the command line still wins).  And
a module is translated again only when its own sources changed: Cython counts
its bundled ``.pxd`` files as dependencies, and pip's isolated build installs
them afresh for every ``pip install``, so its own check found every ``.c``
file stale and every extra installed afterwards rebuilt the whole package.
Here a ``.c`` file is kept when it is newer than the project's ``.pyx``,
``.pxd`` and ``.pxi`` files it depends on and was made by the same Cython
with the same directives (``build/cython-stamp.json``); setuptools then skips
compiling an extension whose built module is newer than its sources.
"""
import json
import os

import Cython
from Cython.Build import cythonize
from Cython.Build.Dependencies import create_dependency_tree
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DISKHASH_DEBUG") == "1"
ANNOTATE = os.environ.get("DISKHASH_ANNOTATE") == "1"
JOBS = os.cpu_count() or 1

directives = {
    "language_level": "3",
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}
macros = []
if DEBUG:
    directives["linetrace"] = True
    macros.append(("CYTHON_TRACE_NOGIL", "1"))

compile_args = ["-O3", "-fno-strict-aliasing"] if not DEBUG else ["-O0", "-g"]

modules = [
    "diskhash._format.sochidx2",
    "diskhash._format.frame",
    "diskhash._index.convert",
    "diskhash._index.table",
    "diskhash._index.batch",
    "diskhash._store.shared",
    "diskhash._store.read",
    "diskhash._store.write",
    "diskhash._store.arrow_fill",
]
CRC32C = "diskhash/_format/crc32c.h"     # cdef extern in _format/frame.pxd: the modules that cimport it
USES_CRC32C = ("diskhash._format.frame", "diskhash._store.")
STAMP = os.path.join("build", "cython-stamp.json")
stamp = {"cython": Cython.__version__, "directives": directives, "debug": DEBUG}


def path(name, suffix):
    """diskhash._index.table -> diskhash/_index/table.pyx"""
    return name.replace(".", "/") + suffix


def extension(name, source):
    return Extension(
        name,
        [source],
        define_macros=macros,
        extra_compile_args=compile_args,
        include_dirs=[os.path.dirname(CRC32C)],
        depends=[CRC32C] if name.startswith(USES_CRC32C) else [],
    )


def translated(name, tree):
    """Whether the module's .c file is up to date: newer than the project files it depends on."""
    c_file = path(name, ".c")
    if not os.path.exists(c_file):
        return False
    own = [d for d in tree.all_dependencies(path(name, ".pyx"))
           if os.path.abspath(d).startswith(HERE + os.sep)]
    c_time = os.path.getmtime(c_file)
    return all(os.path.getmtime(d) < c_time for d in own)


def translate():
    """Each extension's C sources, the stale ones translated by Cython first, in parallel."""
    try:
        with open(STAMP) as f:
            same_options = json.load(f) == stamp
    except (OSError, ValueError):
        same_options = False
    tree = create_dependency_tree()
    keep = set() if ANNOTATE or not same_options else {m for m in modules if translated(m, tree)}
    stale = [extension(m, path(m, ".pyx")) for m in modules if m not in keep]
    if stale and os.path.exists(STAMP):
        os.remove(STAMP)        # an interrupted translation leaves no stamp: all are redone next time
    done = cythonize(stale, compiler_directives=directives, annotate=ANNOTATE, force=True,
                     nthreads=min(JOBS, len(stale))) if stale else []
    os.makedirs("build", exist_ok=True)
    with open(STAMP, "w") as f:
        json.dump(stamp, f)
    sources = {e.name: e.sources for e in done}
    sources.update({m: [path(m, ".c")] for m in keep})
    return sources


class ParallelBuildExt(build_ext):
    """build_ext that translates only stale modules and compiles one extension per core.

    Cython runs here, not when setup.py is read, so building an sdist (or
    reading the metadata) translates nothing.  ``-j N`` still wins.
    """

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = JOBS

    def run(self):
        sources = translate()
        for ext in self.extensions:
            ext.sources = sources[ext.name]
        super().run()


setup(
    ext_modules=[extension(m, path(m, ".pyx")) for m in modules],
    cmdclass={"build_ext": ParallelBuildExt},
)
