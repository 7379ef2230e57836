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

modules = ["_format", "_convert", "_index", "_batch", "_store_read", "_store_write"]
extensions = [
    Extension(
        f"diskhash.{name}",
        [f"diskhash/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=compile_args,
        include_dirs=["diskhash"],      # _store_read, _store_write: diskhash/_crc32c.h
        depends=["diskhash/_crc32c.h"] if name.startswith("_store_") else [],
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
