"""Kill a diskhash writer with SIGKILL many times and check every promise each time.

    python benchmarks/crash_stress.py --kills 1000 [--seed N] [--dir DIR]

The same rounds as tests/index/test_crash.py (see tests/helpers/crash_harness.py), many
more of them.  Imports the installed diskhash (run it from any directory with
the package installed; the child processes import the same one).  Exit status
0 when every round passed; the first failing round raises with the details.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))                   # the harness; diskhash itself comes from site-packages

from helpers import crash_harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", type=Path, default=None, help="where to put the index (default: a temp dir)")
    args = parser.parse_args()

    import diskhash

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(diskhash.__file__).resolve().parent.parent)
    t0 = time.monotonic()

    def progress(done: int, stats: crash_harness.Stats) -> None:
        if done % 50 == 0 or done == args.kills:
            print(f"{done:5d} kills  {time.monotonic() - t0:7.1f}s  mid-grow {stats.mid_grow}  "
                  f"grew {stats.grew}  after-checkpoint {stats.checkpoints}", flush=True)

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        print(f"diskhash {diskhash.__file__}  seed {args.seed}  kills {args.kills}", flush=True)
        stats = crash_harness.run(Path(d), args.kills, args.seed, env, progress=progress)
    print(f"OK: {stats.rounds} kills, every check passed in {time.monotonic() - t0:.1f}s; "
          f"{stats.mid_grow} killed mid-grow (temporary file left), {stats.grew} rounds grew the table, "
          f"{stats.healed} writable opens healed the count/table, largest table {max(stats.slots)} slots, "
          f"{stats.touched_keys} keys checked as touched after their checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
