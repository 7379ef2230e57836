"""The command line (python -m diskhash, the diskhash script): index commands, store commands, progress.

``main`` is the entry point installed scripts name (``diskhash._cli:main``).
"""

from diskhash._cli.app import main

__all__ = ["main"]
