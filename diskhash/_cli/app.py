"""The ``diskhash`` command line: ``diskhash {info,verify,repair,dump} PATH``.

Each subcommand is one function registered in ``COMMANDS`` with its
``@COMMANDS.command`` decorator (its name, one line of help, and the
functions adding its arguments; ``diskhash._cli.command``), so a new
subcommand is one more decorated function; ``diskhash store ...`` is the
table of ``diskhash._cli.store``.  A command returns its exit status; errors
it raises are turned into one line on stderr and a status by ``main``:

* 0 success;
* 1 the index is corrupt (``verify`` lists every defect) or locked, or any
  other diskhash error;
* 2 a usage error or a file-system error (missing path, a directory, no
  permission): nothing is created;
* 130 interrupted (Ctrl-C);
* 141 stdout was closed early (``dump | head``): quietly, as coreutils do
  (their status is 128 + SIGPIPE).

``dump`` writes the fixtures' TSV format (key, offset, length, compression,
uncompressed_length; key in decimal).  Long ``verify``/``repair``/``dump``
runs draw a progress bar (tqdm, the ``cli`` extra) on stderr when it is a
terminal, never on a pipe.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Sequence

from diskhash._cli import store
from diskhash._cli.command import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    Parser,
    UsageError,
    print_error,
    progress_argument,
    run,
    say,
    timeout_argument,
    write,
)
from diskhash._cli.progress import Progress
from diskhash._index.table import DiskHashIndex
from diskhash.errors import CorruptIndexError

__all__ = ["COMMANDS", "build_parser", "main", "prog_name"]

#: Entries between progress updates in ``dump``.
DUMP_STEP = 4096

#: The commands, in the order ``--help`` lists them.
COMMANDS = Commands("command", "COMMAND")


def index_argument(parser: argparse.ArgumentParser) -> None:
    """PATH and --timeout: what every command on one index file takes."""
    parser.add_argument("target", metavar="path", help="the index file")
    timeout_argument(parser)


def existing_file(path: str) -> str:
    """``path`` if it names an existing regular file; else ``UsageError`` naming it.

    Checked before opening, because a writable open creates a missing index
    (and its parent directories): a command that repairs or inspects must not.
    """
    if not path:
        raise UsageError("an empty path names no index file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory, not an index file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: not a regular file")
    return path


# -- the index commands -----------------------------------------------------------


@COMMANDS.command("info", "header and table statistics", index_argument)
def info(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.target), readonly=True, timeout=args.timeout) as idx:
        s = idx.stats()
        say(f"path           {idx.path}")
        say(f"entries        {s.entries}")
        say(f"slots          {s.slots}")
        say(f"load factor    {s.load_factor:.4f}")
        say(f"file bytes     {s.file_bytes}")
        say(f"longest probe  {s.longest_probe}")
        say(f"mean probe     {s.mean_probe:.3f}")
        say(f"seed           0x{idx.seed:016x}")
    return EXIT_OK


@COMMANDS.command("verify", "check the whole table; list every defect, one a line",
                  index_argument, progress_argument)
def verify(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.target), readonly=True, timeout=args.timeout) as idx:
        try:
            with Progress("verify", enabled=args.progress, heartbeat=True):
                idx.verify()
        except CorruptIndexError as exc:
            print_error(args.prog, f"{exc.path}: corrupt index, {len(exc.defects)} defect(s):")
            for defect in exc.defects:
                print(f"  {defect}", file=sys.stderr)
            return EXIT_ERROR
        say(f"{idx.path}: ok ({len(idx)} entries in {idx.num_slots} slots)")
    return EXIT_OK


@COMMANDS.command("repair", "rebuild a valid table from every readable entry",
                  index_argument, progress_argument)
def repair(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.target), timeout=args.timeout) as idx, \
            Progress("repair", enabled=args.progress, heartbeat=True):
        report = idx.repair()
    say(f"{args.target}: kept {report.kept} entries in {report.slots} slots, "
        f"dropped {len(report.dropped)}")
    for _slot, reason in report.dropped:      # each reason starts "slot N: "
        say(f"  dropped {reason}")
    return EXIT_OK


@COMMANDS.command("dump", "print every entry as TSV (key, offset, length, compression, "
                          "uncompressed_length)", index_argument, progress_argument)
def dump(args: argparse.Namespace) -> int:
    out = sys.stdout
    if out is None:             # started with stdout closed (`>&-`)
        raise UsageError("standard output is closed: nowhere to dump to")
    with DiskHashIndex(existing_file(args.target), readonly=True, timeout=args.timeout) as idx:
        with Progress("dump", len(idx), enabled=args.progress, unit="entries") as bar:
            pending = 0
            for key, m in idx.items():
                write(out, f"{key}\t{m.offset}\t{m.length}\t{int(m.compression)}\t"
                           f"{m.uncompressed_length}\n")
                pending += 1
                if pending == DUMP_STEP:
                    bar.update(pending)
                    pending = 0
    return EXIT_OK


COMMANDS.group("store", store.HELP, store.COMMANDS)     # diskhash store ...


# -- the driver ------------------------------------------------------------------


def prog_name(argv0: str) -> str:
    """What ``--help`` calls the program: ``diskhash`` when run as the installed
    script, ``python -m diskhash`` when run as a module."""
    base = os.path.basename(argv0)
    if base in ("__main__.py", "-m", "-c", ""):
        return "python -m diskhash"
    return base


def build_parser(prog: str | None = None) -> Parser:
    parser = Parser(
        prog=prog if prog is not None else prog_name(sys.argv[0] if sys.argv else ""),
        description="Inspect, check and repair SOCHIDX2 index files.",
        epilog=f"exit status: {EXIT_OK} ok, {EXIT_ERROR} corrupt or locked index, "
               f"{EXIT_USAGE} usage or file error, {EXIT_INTERRUPTED} interrupted, "
               f"{EXIT_BROKEN_PIPE} output closed early")
    parser.set_defaults(prog=parser.prog)
    COMMANDS.add_to(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    return run(build_parser().parse_args(argv))
