"""Instructions per PayloadStore put or get, for comparing two trees of the code
on a loaded machine (instruction counts do not depend on what else runs).

Run under callgrind once with the operation and once without, and divide
the difference by the count::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/put_instructions.py --tree . --op put --count 20000
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/put_instructions.py --tree . --op none --count 20000

("Collected" on each run's last line; (put - none) / count.  ``--op get``
reads every key three times: divide by 3 x count.)  Both runs first store
``count`` payloads of 100 bytes, so the timed puts overwrite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=".", help="the checkout whose diskhash to import (built in place)")
    parser.add_argument("--op", choices=("none", "put", "get"), required=True)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    sys.path.insert(0, args.tree)
    from diskhash import PayloadStore

    payload = b"x" * 100
    with tempfile.TemporaryDirectory() as d, PayloadStore(d) as s:
        for k in range(args.count):
            s.put(k, payload)
        if args.op == "put":
            for k in range(args.count):
                s.put(k, payload)
        elif args.op == "get":
            get = s.get
            for _ in range(3):
                for k in range(args.count):
                    get(k)


if __name__ == "__main__":
    main()
