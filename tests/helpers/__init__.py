"""Helpers the tests import (``from helpers.records import record``): plain
functions, crafted files, the children the crash tests start.  Fixtures live in
``tests/conftest.py``; ``pythonpath = ["tests"]`` in pyproject.toml puts this
package on ``sys.path``."""
