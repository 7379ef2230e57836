"""Build the Cython extensions.

``DISKHASH_DEBUG=1`` turns bounds checks and line tracing back on;
``DISKHASH_ANNOTATE=1`` writes the ``cython -a`` HTML next to each module.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DISKHASH_DEBUG") == "1"

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
    "diskhash._index.convert",
    "diskhash._index.table",
    "diskhash._index.batch",
    "diskhash._store.read",
    "diskhash._store.write",
]
CRC32C = "diskhash/_format/crc32c.h"     # the store's compiled modules: cdef extern in _format/frame.pxd
extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        define_macros=macros,
        extra_compile_args=compile_args,
        include_dirs=[os.path.dirname(CRC32C)],
        depends=[CRC32C] if name.startswith("diskhash._store") else [],
    )
    for name in modules
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("DISKHASH_ANNOTATE") == "1",
    ),
)
