"""What every command of the command line shares: the registry, the parser, the exit statuses, errors.

The index commands (``diskhash._cli.app``) and the store commands
(``diskhash._cli.store``) register the same way: a ``Commands`` table and
its ``@command(name, help, *arguments)`` decorator, the arguments given as
functions that add options to the command's parser.  ``diskhash store`` is
itself a command of the top table whose arguments are the store table.

A command receives the parsed ``argparse.Namespace`` and returns its exit
status; ``run`` turns what it raises into one line on stderr and a status,
so every message starts the same way (``PROG: error: ...``), argparse's own
included (``Parser``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, AnyStr, NoReturn

from diskhash.errors import DiskHashError

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK",
    "EXIT_USAGE", "STDOUT_NAME", "Command", "Commands", "Parser", "UsageError", "error_line", "flush",
    "print_error", "progress_argument", "run", "say", "seconds", "timeout_argument", "write",
]

EXIT_OK = 0
#: A damaged or locked index or store, or any other diskhash error.
EXIT_ERROR = 1
#: A usage or file-system error: nothing was created.
EXIT_USAGE = 2
#: ``diskhash store get``: the key is not in the store.
EXIT_NOT_FOUND = 3
#: Ctrl-C, the status a shell reports for a program SIGINT ended.
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: Standard output closed early (``dump | head``): coreutils' status, quietly.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

Run = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]


class UsageError(Exception):
    """A command-line mistake found before any file is touched (exit 2)."""


def error_line(prog: str, message: str) -> str:
    """The one form of an error message: ``PROG: error: MESSAGE``."""
    return f"{prog}: error: {message}"


def print_error(prog: str, message: str) -> None:
    print(error_line(prog, message), file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse's parser whose own errors (a bad option, a missing argument)
    start with the program's name, as every other message does: argparse
    would name the subcommand chain (``diskhash store get: error: ...``).

    ``program`` is the name messages start with; subcommand parsers get
    their parent's (``Commands.add_to``).
    """

    def __init__(self, *args: Any, program: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.program = program if program is not None else self.prog

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, error_line(self.program, message) + "\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(args) -> exit status``, or ``None`` for a command
    whose arguments are subcommands of their own (``diskhash store``)."""

    name: str
    help: str
    run: Run | None
    arguments: tuple[Arguments, ...]


class Commands:
    """A table of subcommands, in the order ``--help`` lists them."""

    def __init__(self, dest: str, metavar: str) -> None:
        self.dest = dest
        self.metavar = metavar
        self._commands: dict[str, Command] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._commands)

    def add(self, cmd: Command) -> None:
        if cmd.name in self._commands:
            raise ValueError(f"diskhash command {cmd.name!r} is registered twice")
        self._commands[cmd.name] = cmd

    def command(self, name: str, help: str, *arguments: Arguments) -> Callable[[Run], Run]:
        """Register the decorated function as subcommand ``name``; each of
        ``arguments`` adds options to its parser, in order."""

        def register(run: Run) -> Run:
            self.add(Command(name, help, run, arguments))
            return run

        return register

    def group(self, name: str, help: str, commands: Commands) -> None:
        """Register ``name`` as a command whose subcommands are ``commands``."""
        self.add(Command(name, help, None, (commands.add_to,)))

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Give ``parser`` one subcommand per registered command."""
        program = parser.program if isinstance(parser, Parser) else parser.prog
        sub = parser.add_subparsers(dest=self.dest, required=True, metavar=self.metavar)
        for cmd in self._commands.values():
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, program=program)
            for add in cmd.arguments:
                add(p)
            if cmd.run is not None:
                p.set_defaults(run=cmd.run)


# -- options more than one command takes -------------------------------------------


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


def timeout_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=seconds, default=0.0, metavar="SECONDS",
                        help="how long to wait for another process's lock: seconds, or inf "
                             "(default: 0, fail at once)")


def progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="draw a progress bar on stderr (default: only when it is a terminal)")


# -- standard output ------------------------------------------------------------------

STDOUT_NAME = "standard output"


def write(out: IO[AnyStr], data: AnyStr, name: str = STDOUT_NAME) -> None:
    """``out.write``; a write error names ``name`` (standard output), not the
    file the command works on (``diskhash dump x.idx >/dev/full`` is not x.idx's fault)."""
    try:
        out.write(data)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), name) from None


def say(line: str) -> None:
    """Print ``line`` to standard output (nowhere if it is closed), as ``write``."""
    if sys.stdout is not None:
        write(sys.stdout, line + "\n")


def flush(out: IO[AnyStr] | None, name: str = STDOUT_NAME) -> None:
    """Flush ``out`` (if open); a write error names ``name``."""
    if out is None:
        return
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), name) from None


# -- running a command ----------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; what it raises becomes one line on stderr and
    an exit status (see ``diskhash._cli.app``)."""
    prog: str = args.prog
    try:
        status = int(args.run(args))
        flush(sys.stdout)       # a full disk or closed pipe shows here, not at exit
        return status
    except UsageError as exc:
        print_error(prog, str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DiskHashError as exc:
        print_error(prog, str(exc))
        return EXIT_ERROR
    except OSError as exc:
        where = exc.filename if exc.filename is not None else args.target
        print_error(prog, f"{where}: {exc.strerror or exc}")
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:      # a value the core refused (e.g. a key too big)
        print_error(prog, str(exc))
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
