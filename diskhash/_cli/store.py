"""``diskhash store ...``: the PayloadStore commands of the command line.

One function per subcommand, registered in ``STORE_COMMANDS``; the main CLI
(``diskhash._cli.app``) registers one ``store`` command (``HELP``, ``run``)
whose arguments are these subcommands, so it needs a single line.  Exit status:

* 0 success;
* 1 the store is damaged (``verify`` lists every defect), locked, or any
  other diskhash error;
* 2 a usage error or a file-system error (missing directory, no permission);
* 3 ``get``: the key is not in the store;
* 130 interrupted (Ctrl-C).

Keys on the command line and in TSV/JSONL files: decimal, ``0x`` hex, or a
UUID.  Formats of ``import``/``export``:

* ``dir``: one file per payload, named by its key in decimal;
* ``tsv``: ``key<TAB>payload in base64`` per line (binary-safe);
* ``jsonl``: ``{"key": "<decimal>", "value": "<text>"}`` per line, or
  ``"base64"`` instead of ``"value"`` for bytes that are not UTF-8.

Progress bars (tqdm, ``pip install ".[cli]"``) appear on stderr when it
is a terminal, or with ``--progress``; never with ``--no-progress``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from diskhash._store.store import PayloadStore
from diskhash._types import Compression
from diskhash.errors import CorruptIndexError, CorruptPayloadError, DiskHashError

__all__ = ["HELP", "STORE_COMMANDS", "store_arguments", "run", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTERRUPTED = 130
#: Records per put_many in ``import``.
IMPORT_BATCH = 4096


class UsageError(Exception):
    """A command-line mistake found before the store is touched (exit 2)."""


@dataclass(frozen=True)
class StoreCommand:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]


STORE_COMMANDS: dict[str, StoreCommand] = {}


def _command(name: str, help: str, arguments: "Callable[[argparse.ArgumentParser], None] | None" = None
             ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        STORE_COMMANDS[name] = StoreCommand(name, help, run, arguments or (lambda p: None))
        return run
    return register


# -- helpers -------------------------------------------------------------------------

_DECIMAL_KEY = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"0[xX][0-9a-fA-F]+")
_UUID_KEY = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_key(text: str) -> int:
    """A key from the command line or a file: ASCII decimal digits, ``0x`` and
    hex digits, or a UUID in its 8-4-4-4-12 form; nothing else.

    Python's ``int()`` would also take other scripts' digits (``"١"`` is 1),
    underscores, signs and inner spaces: a key typed or exported wrongly
    must be refused, not read as another key."""
    t = text.strip(" \t\r\n")
    # Leading zeros dropped and long strings refused by length: int() of
    # thousands of digits is slow, and refused past 4300 on 3.11+.
    if _DECIMAL_KEY.fullmatch(t):
        digits = t.lstrip("0") or "0"
        key = int(digits, 10) if len(digits) <= 39 else 1 << 128
    elif _HEX_KEY.fullmatch(t):
        digits = t[2:].lstrip("0") or "0"
        key = int(digits, 16) if len(digits) <= 32 else 1 << 128
    elif _UUID_KEY.fullmatch(t):
        key = int(t.replace("-", ""), 16)
    else:
        raise UsageError(f"{text!r} is not a key (ASCII decimal digits, 0x and hex digits, "
                         f"or a UUID such as 12345678-1234-5678-1234-567812345678)")
    if key >> 128:
        raise UsageError(f"{text!r} is not a key: keys are in [0, 2**128)")
    return key


class _Bar:
    """A tqdm bar on stderr when wanted and available; otherwise nothing."""

    def __init__(self, enabled: "bool | None", total: "int | None", label: str, unit: str = "B") -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            try:
                tqdm = importlib.import_module("tqdm").tqdm     # optional: the cli extra
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, file=sys.stderr,
                             leave=False)

    def to(self, done: int, total: "int | None" = None) -> None:
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def add(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()


def _existing_store(directory: str) -> str:
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such store directory")
    if not os.path.exists(os.path.join(directory, "MANIFEST")):
        raise UsageError(f"{directory}: not a PayloadStore (no MANIFEST)")
    return directory


def _open(args: argparse.Namespace, readonly: bool, create: bool = False) -> PayloadStore:
    if not create:
        _existing_store(args.directory)
    kwargs: dict[str, Any] = {"readonly": readonly, "timeout": args.timeout}
    comp = getattr(args, "compression", None)
    if comp is not None and not readonly:
        kwargs["compression"] = Compression[comp.upper()]
    return PayloadStore(args.directory, **kwargs)


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="draw a progress bar on stderr (default: only on a terminal)")


def _compression_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compression", choices=[c.name.lower() for c in Compression], default=None,
                   help="codec for new payloads (default none)")


# -- the commands ---------------------------------------------------------------------

@_command("stats", "entries, bytes on disk, live bytes, garbage ratio")
def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        st = store.stats()
        print(f"directory           {store.directory}")
        for name, value in st._asdict().items():
            if isinstance(value, float):
                value = f"{value:.4f}"
            print(f"{name:<20}{value}")
    return EXIT_OK


@_command("verify", "check every record and the index; list every defect", _progress_arg)
def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        try:
            store.verify()
        except (CorruptPayloadError, CorruptIndexError) as exc:
            print(f"{exc.path}: {len(exc.defects)} defect(s)", file=sys.stderr)
            for d in exc.defects:
                print(f"  {d}", file=sys.stderr)
            return EXIT_ERROR
        print(f"{store.directory}: ok ({len(store)} entries)")
    return EXIT_OK


def _rebuild_args(p: argparse.ArgumentParser) -> None:
    _progress_arg(p)
    p.add_argument("--salvage", action="store_true",
                   help="drop the keys whose newest record is damaged (listed) instead of refusing")


@_command("rebuild", "rebuild the index from the data file alone", _rebuild_args)
def cmd_rebuild(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        with _Bar(args.progress, None, "rebuild") as bar:
            n = store.rebuild_index(progress=bar.to, salvage=args.salvage)
        report = store.last_salvage
        if report is not None:
            print(f"{store.directory}: passed over {report.frames} damaged stretch(es), "
                  f"{report.bytes} bytes; dropped {len(report.keys)} key(s)", file=sys.stderr)
            for key in report.keys:
                print(f"  dropped {key:#x}", file=sys.stderr)
        print(f"{store.directory}: index rebuilt, {n} entries")
    return EXIT_OK


def _compact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--salvage", action="store_true",
                   help="go on when live records are damaged: drop exactly those keys "
                        "(listed on stderr) instead of refusing")


@_command("compact", "rewrite the live records; give back the space of dead ones", _compact_args)
def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        before = store.stats().data_bytes
        store.compact(salvage=args.salvage)
        after = store.stats().data_bytes
        report = store.last_compaction or {}
        print(f"{store.directory}: {before} -> {after} bytes in {report.get('seconds', 0):.3f}s "
              f"(writers waited {report.get('puts_waited_seconds', 0) * 1000:.1f} ms)")
        salvage = store.last_salvage
        if salvage is not None:
            print(f"{store.directory}: passed over {salvage.frames} damaged stretch(es), "
                  f"{salvage.bytes} bytes; dropped {len(salvage.keys)} damaged live record(s)"
                  + "".join(f"\n  dropped edge id {k:#x}" for k in salvage.keys), file=sys.stderr)
    return EXIT_OK


def _get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="decimal, 0x hex, or a UUID")
    p.add_argument("-o", "--output", help="write the payload to this file (default: stdout)")


@_command("get", "write one payload to stdout or a file (exit 3 if absent)", _get_args)
def cmd_get(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    with _open(args, readonly=True) as store:
        data = store.get(key)
    if data is None:
        print(f"{getattr(args, 'prog', 'diskhash')}: {args.directory}: key {args.key} not found",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def _put_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="decimal, 0x hex, or a UUID")
    p.add_argument("file", nargs="?", default="-", help="the payload (default: stdin)")
    _compression_arg(p)


@_command("put", "store one payload read from a file or stdin (creates the store)", _put_args)
def cmd_put(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            data = f.read()
    with _open(args, readonly=False, create=True) as store:
        meta = store.put(key, data)
        store.save()
    print(f"{key}: {meta.uncompressed_length} bytes stored as {meta.length} "
          f"({Compression(meta.compression).name})")
    return EXIT_OK


def _io_args(p: argparse.ArgumentParser, exporting: bool = False) -> None:
    if exporting:
        p.add_argument("destination", help="where to write: a directory, a .tsv or .jsonl file, or - (stdout)")
    else:
        p.add_argument("source", help="what to read: a directory, a .tsv or .jsonl file, or - (stdin)")
    p.add_argument("--format", choices=("dir", "tsv", "jsonl"), default=None,
                   help="default: dir for a directory, else from the file name's extension")
    _progress_arg(p)


def _io_format(args: argparse.Namespace, exporting: bool) -> str:
    if args.format:
        return str(args.format)
    src = args.destination if exporting else args.source
    if src != "-" and (os.path.isdir(src) or (exporting and src.endswith(os.sep))):
        return "dir"
    for ext in ("tsv", "jsonl"):
        if src.endswith("." + ext):
            return ext
    raise UsageError(f"{src}: say --format dir, tsv or jsonl")


def _read_records(fmt_: str, source: str) -> Iterator[tuple[int, bytes]]:
    if fmt_ == "dir":
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    yield parse_key(name), f.read()
        return
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")
    try:
        for lineno, raw in enumerate(stream, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            where = f"{source}:{lineno}"
            if fmt_ == "tsv":
                parts = line.split(b"\t")
                if len(parts) != 2:
                    raise UsageError(f"{where}: expected key<TAB>base64 payload")
                try:
                    yield parse_key(parts[0].decode()), base64.b64decode(parts[1], validate=True)
                except (binascii.Error, UnicodeDecodeError):
                    raise UsageError(f"{where}: payload is not base64") from None
            else:
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise UsageError(f"{where}: not JSON ({exc})") from None
                if not isinstance(obj, dict) or "key" not in obj:
                    raise UsageError(f"{where}: expected an object with \"key\"")
                if "value" in obj and isinstance(obj["value"], str):
                    data = obj["value"].encode()
                elif "base64" in obj and isinstance(obj["base64"], str):
                    try:
                        data = base64.b64decode(obj["base64"], validate=True)
                    except binascii.Error:
                        raise UsageError(f"{where}: \"base64\" is not base64") from None
                else:
                    raise UsageError(f"{where}: expected a \"value\" string or a \"base64\" string")
                yield parse_key(str(obj["key"])), data
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _import_args(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    _compression_arg(p)


@_command("import", "load payloads from a directory, TSV or JSONL (creates the store)", _import_args)
def cmd_import(args: argparse.Namespace) -> int:
    fmt_ = _io_format(args, exporting=False)
    if fmt_ == "dir" and not os.path.isdir(args.source):
        raise UsageError(f"{args.source}: no such directory")
    if fmt_ != "dir" and args.source != "-" and not os.path.isfile(args.source):
        raise UsageError(f"{args.source}: no such file")
    total = 0
    with _open(args, readonly=False, create=True) as store:
        with _Bar(args.progress, None, "import", unit="rec") as bar:
            keys: list[int] = []
            values: list[bytes] = []
            for key, data in _read_records(fmt_, args.source):
                keys.append(key)
                values.append(data)
                if len(keys) >= IMPORT_BATCH:
                    store.put_many(keys, values)
                    bar.add(len(keys))
                    total += len(keys)
                    keys, values = [], []
            if keys:
                store.put_many(keys, values)
                bar.add(len(keys))
                total += len(keys)
        store.save()
    print(f"{args.directory}: imported {total} payloads", file=sys.stderr)
    return EXIT_OK


def _export_args(p: argparse.ArgumentParser) -> None:
    _io_args(p, exporting=True)


@_command("export", "write every payload to a directory, TSV or JSONL", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    fmt_ = _io_format(args, exporting=True)
    with _open(args, readonly=True) as store:
        keys = sorted(store)
        if fmt_ == "dir":
            os.makedirs(args.destination, exist_ok=True)
            out = None
        else:
            out = sys.stdout.buffer if args.destination == "-" else open(args.destination, "wb")
        try:
            with _Bar(args.progress, len(keys), "export", unit="rec") as bar:
                for k in keys:
                    data = store.get(k)
                    if data is None:
                        continue
                    if out is None:
                        with open(os.path.join(args.destination, str(k)), "wb") as f:
                            f.write(data)
                    elif fmt_ == "tsv":
                        out.write(b"%d\t%s\n" % (k, base64.b64encode(data)))
                    else:
                        try:
                            obj = {"key": str(k), "value": data.decode()}
                        except UnicodeDecodeError:
                            obj = {"key": str(k), "base64": base64.b64encode(data).decode()}
                        out.write(json.dumps(obj).encode() + b"\n")
                    bar.add(1)
        finally:
            if out is not None and out is not sys.stdout.buffer:
                out.close()
            elif out is not None:
                out.flush()
    if args.destination != "-":
        print(f"{args.directory}: exported {len(keys)} payloads", file=sys.stderr)
    return EXIT_OK


# -- wiring -----------------------------------------------------------------------------

def store_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``store`` subcommand's own subcommands (``diskhash store CMD DIRECTORY ...``)."""
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    for cmd in STORE_COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.add_argument("directory", help="the store's directory")
        p.add_argument("--timeout", type=float, default=0.0,
                       help="seconds to wait for another process's lock (default 0)")
        cmd.arguments(p)
        p.set_defaults(store_run=cmd.run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen store subcommand, turning errors into a message and an exit status.

    Messages start with the program's name, as the index commands' do
    (``diskhash: error: ...``).
    """
    prog = getattr(args, "prog", "diskhash")
    try:
        return int(args.store_run(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CorruptPayloadError, CorruptIndexError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except DiskHashError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        raise                       # the main CLI exits 141, quietly
    except (OSError, ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


#: The ``store`` command's line in ``diskhash --help`` (registered by ``diskhash._cli.app``).
HELP = "PayloadStore commands: stats, verify, rebuild, compact, get, put, import, export"


def main(argv: "Sequence[str] | None" = None) -> int:
    """``python -m diskhash._cli.store CMD DIRECTORY ...`` (the same as ``diskhash store ...``)."""
    parser = argparse.ArgumentParser(prog="diskhash store")
    store_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
