"""The ``diskhash`` command line: ``diskhash {info,verify,repair,dump} PATH``.

Each subcommand is one function registered in ``COMMANDS`` with the
``@command`` decorator (its name, one line of help, and a function adding
its arguments), so a new subcommand is one more decorated function.  A
command returns its exit status; errors it raises are turned into one line
on stderr and a status by ``main``:

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
runs draw a progress bar on stderr when it is a terminal, never on a pipe.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from diskhash._cli import store as store_commands
from diskhash._cli.progress import Progress
from diskhash._index.table import DiskHashIndex
from diskhash.errors import CorruptIndexError, DiskHashError

__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]

EXIT_OK = 0
EXIT_INDEX_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

#: Entries between progress updates in ``dump``.
DUMP_STEP = 4096


class UsageError(Exception):
    """A command-line mistake found before any file is touched (exit 2)."""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(args) -> exit status``; ``arguments`` adds its options."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def seconds(text: str) -> float | None:
    """``--timeout``'s value: seconds >= 0, or ``inf``/``none`` to wait as long as it takes."""
    if text.strip().lower() in ("inf", "none", "forever"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"seconds must be a finite number >= 0 (or inf), not {text!r}")
    return value


def index_arguments(parser: argparse.ArgumentParser) -> None:
    """PATH and --timeout: what every command on one index file takes."""
    parser.add_argument("path", help="the index file")
    parser.add_argument("--timeout", type=seconds, default=0.0, metavar="SECONDS",
                        help="how long to wait for another process's lock: seconds, or inf "
                             "(default: 0, fail at once)")


def long_index_arguments(parser: argparse.ArgumentParser) -> None:
    """index_arguments plus the progress switch of commands that walk the table."""
    index_arguments(parser)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="draw a progress bar on stderr (default: only when it is a terminal)")


def command(name: str, help: str,
            arguments: Callable[[argparse.ArgumentParser], None] = index_arguments,
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated function as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"diskhash command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, run, arguments)
        return run

    return register


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


def _progress(args: argparse.Namespace, label: str, total: int | None = None) -> Progress:
    return Progress(label, total, enabled=args.progress)


# -- the commands --------------------------------------------------------------


@command("info", "header and table statistics")
def info(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.path), readonly=True, timeout=args.timeout) as idx:
        s = idx.stats()
        _say(f"path           {idx.path}")
        _say(f"entries        {s.entries}")
        _say(f"slots          {s.slots}")
        _say(f"load factor    {s.load_factor:.4f}")
        _say(f"file bytes     {s.file_bytes}")
        _say(f"longest probe  {s.longest_probe}")
        _say(f"mean probe     {s.mean_probe:.3f}")
        _say(f"seed           0x{idx.seed:016x}")
    return EXIT_OK


@command("verify", "check the whole table; list every defect, one a line", long_index_arguments)
def verify(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.path), readonly=True, timeout=args.timeout) as idx:
        try:
            with _progress(args, "verify"):
                idx.verify()
        except CorruptIndexError as exc:
            print(f"{args.prog}: error: {exc.path}: corrupt index, {len(exc.defects)} defect(s):",
                  file=sys.stderr)
            for defect in exc.defects:
                print(f"  {defect}", file=sys.stderr)
            return EXIT_INDEX_ERROR
        _say(f"{idx.path}: ok ({len(idx)} entries in {idx.num_slots} slots)")
    return EXIT_OK


@command("repair", "rebuild a valid table from every readable entry", long_index_arguments)
def repair(args: argparse.Namespace) -> int:
    with DiskHashIndex(existing_file(args.path), timeout=args.timeout) as idx, \
            _progress(args, "repair"):
        report = idx.repair()
    _say(f"{args.path}: kept {report.kept} entries in {report.slots} slots, "
         f"dropped {len(report.dropped)}")
    for _slot, reason in report.dropped:      # each reason starts "slot N: "
        _say(f"  dropped {reason}")
    return EXIT_OK


@command("dump", "print every entry as TSV (key, offset, length, compression, "
                 "uncompressed_length)", long_index_arguments)
def dump(args: argparse.Namespace) -> int:
    out = sys.stdout
    if out is None:             # started with stdout closed (`>&-`)
        raise UsageError("standard output is closed: nowhere to dump to")
    with DiskHashIndex(existing_file(args.path), readonly=True, timeout=args.timeout) as idx:
        with _progress(args, "dump", len(idx)) as bar:
            pending = 0
            for key, m in idx.items():
                _write(out, f"{key}\t{m.offset}\t{m.length}\t{int(m.compression)}\t"
                            f"{m.uncompressed_length}\n")
                pending += 1
                if pending == DUMP_STEP:
                    bar.update(pending)
                    pending = 0
        _flush(out)
    return EXIT_OK


STDOUT_NAME = "standard output"


def _write(out: TextIO, text: str) -> None:
    """``out.write``, an error naming standard output (not the index) on failure."""
    try:
        out.write(text)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), STDOUT_NAME) from None


def _say(line: str) -> None:
    """Print ``line`` to standard output (nowhere if it is closed); a write
    error names standard output, not the index."""
    if sys.stdout is not None:
        _write(sys.stdout, line + "\n")


def _flush(out: TextIO | None) -> None:
    """Flush ``out`` (if open); a write error names standard output."""
    if out is None:
        return
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), STDOUT_NAME) from None


command("store", store_commands.HELP, store_commands.store_arguments)(store_commands.run)   # diskhash store ...


# -- the driver ------------------------------------------------------------------


def prog_name(argv0: str) -> str:
    """What ``--help`` calls the program: ``diskhash`` when run as the installed
    script, ``python -m diskhash`` when run as a module."""
    base = os.path.basename(argv0)
    if base in ("__main__.py", "-m", "-c", ""):
        return "python -m diskhash"
    return base


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog if prog is not None else prog_name(sys.argv[0] if sys.argv else ""),
        description="Inspect, check and repair SOCHIDX2 index files.",
        epilog="exit status: 0 ok, 1 corrupt or locked index, 2 usage or file error, "
               "130 interrupted, 141 output closed early")
    parser.set_defaults(prog=parser.prog)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        status = int(args.run(args))
        _flush(sys.stdout)      # a full disk or closed pipe shows here, not at exit
        return status
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DiskHashError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_INDEX_ERROR
    except OSError as exc:
        where = exc.filename if exc.filename is not None else args.path
        print(f"{prog}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the interpreter's
    final flush raises no second BrokenPipeError (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
