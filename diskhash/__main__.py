"""``python -m diskhash``: the command line (see ``diskhash._cli`` and docs/reference/cli.md)."""

import sys

from diskhash._cli import main

if __name__ == "__main__":
    sys.exit(main())
