"""``diskhash store ...``: the PayloadStore commands of the command line.

One function per subcommand, registered in ``COMMANDS`` as the index
commands are (``diskhash._cli.command``); the main CLI (``diskhash._cli.app``)
registers this table as its ``store`` command.  Exit status:

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
  ``"base64"`` instead of ``"value"`` for bytes that are not UTF-8;
* ``parquet``: a ``key`` (16-byte fixed-size binary) and a ``payload``
  column, streamed in batches (``diskhash.export_parquet``/``import_parquet``;
  pyarrow, the ``arrow`` extra); ``export --raw`` keeps the stored bytes and
  adds their codec.

Progress bars (tqdm, the ``cli`` extra) appear on stderr when it is a
terminal, or with ``--progress``; never with ``--no-progress``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
from typing import Any, Iterator

from diskhash._cli.command import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    STDOUT_NAME,
    Commands,
    UsageError,
    flush,
    print_error,
    progress_argument,
    say,
    timeout_argument,
    write,
)
from diskhash._cli.progress import Progress
from diskhash._store.arrow import pyarrow_module
from diskhash._store.parquet import PARQUET_CODECS, export_parquet, import_parquet
from diskhash._store.store import PayloadStore
from diskhash._types import Compression
from diskhash.errors import CorruptIndexError, CorruptPayloadError

__all__ = ["COMMANDS", "HELP", "parse_key"]

#: The ``store`` command's line in ``diskhash --help``.
HELP = "PayloadStore commands: stats, verify, rebuild, compact, get, put, import, export"
#: File name endings read as Parquet.
PARQUET_ENDINGS = (".parquet", ".pq")
#: Records per put_many in ``import``.
IMPORT_BATCH = 4096

#: The store commands, in the order ``diskhash store --help`` lists them.
COMMANDS = Commands("store_command", "STORE_COMMAND")


def store_argument(parser: argparse.ArgumentParser) -> None:
    """DIRECTORY and --timeout: what every store command takes first."""
    parser.add_argument("target", metavar="directory", help="the store's directory")
    timeout_argument(parser)


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


def _existing_store(directory: str) -> str:
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such store directory")
    if not os.path.exists(os.path.join(directory, "MANIFEST")):
        raise UsageError(f"{directory}: not a PayloadStore (no MANIFEST)")
    return directory


def _open(args: argparse.Namespace, readonly: bool, create: bool = False) -> PayloadStore:
    if not create:
        _existing_store(args.target)
    kwargs: dict[str, Any] = {"readonly": readonly, "timeout": args.timeout}
    comp = getattr(args, "compression", None)
    if comp is not None and not readonly:
        kwargs["compression"] = Compression[comp.upper()]
    return PayloadStore(args.target, **kwargs)


def _compression_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compression", choices=[c.name.lower() for c in Compression], default=None,
                   help="codec for new payloads (default none)")


# -- the commands ---------------------------------------------------------------------

@COMMANDS.command("stats", "entries, bytes on disk, live bytes, garbage ratio", store_argument)
def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        st = store.stats()
        say(f"directory           {store.directory}")
        for name, value in st._asdict().items():
            if isinstance(value, float):
                value = f"{value:.4f}"
            say(f"{name:<20}{value}")
    return EXIT_OK


@COMMANDS.command("verify", "check every record and the index; list every defect",
                  store_argument, progress_argument)
def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        try:
            with Progress("verify", enabled=args.progress, heartbeat=True):
                store.verify()
        except (CorruptPayloadError, CorruptIndexError) as exc:
            print_error(args.prog, f"{exc.path}: {len(exc.defects)} defect(s):")
            for d in exc.defects:
                print(f"  {d}", file=sys.stderr)
            return EXIT_ERROR
        say(f"{store.directory}: ok ({len(store)} entries)")
    return EXIT_OK


def _rebuild_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--salvage", action="store_true",
                   help="drop the keys whose newest record is damaged (listed) instead of refusing")


@COMMANDS.command("rebuild", "rebuild the index from the data file alone",
                  store_argument, progress_argument, _rebuild_args)
def cmd_rebuild(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        with Progress("rebuild", enabled=args.progress, unit="B") as bar:
            n = store.rebuild_index(progress=bar.to, salvage=args.salvage)
        report = store.last_salvage
        if report is not None:
            print(f"{store.directory}: passed over {report.frames} damaged stretch(es), "
                  f"{report.bytes} bytes; dropped {len(report.keys)} key(s)", file=sys.stderr)
            for key in report.keys:
                print(f"  dropped {key:#x}", file=sys.stderr)
        say(f"{store.directory}: index rebuilt, {n} entries")
    return EXIT_OK


def _compact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--salvage", action="store_true",
                   help="go on when live records are damaged: drop exactly those keys "
                        "(listed on stderr) instead of refusing")


@COMMANDS.command("compact", "rewrite the live records; give back the space of dead ones",
                  store_argument, _compact_args)
def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        before = store.stats().data_bytes
        store.compact(salvage=args.salvage)
        after = store.stats().data_bytes
        report = store.last_compaction or {}
        say(f"{store.directory}: {before} -> {after} bytes in {report.get('seconds', 0):.3f}s "
            f"(writers waited {report.get('puts_waited_seconds', 0) * 1000:.1f} ms)")
        salvage = store.last_salvage
        if salvage is not None:
            print(f"{store.directory}: passed over {salvage.frames} damaged stretch(es), "
                  f"{salvage.bytes} bytes; dropped {len(salvage.keys)} damaged live record(s)"
                  + "".join(f"\n  dropped edge id {k:#x}" for k in salvage.keys), file=sys.stderr)
    return EXIT_OK


def _key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="decimal, 0x hex, or a UUID")


def _get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write the payload to this file (default: stdout)")


@COMMANDS.command("get", "write one payload to stdout or a file (exit 3 if absent)",
                  store_argument, _key_arg, _get_args)
def cmd_get(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    with _open(args, readonly=True) as store:
        data = store.get(key)
    if data is None:
        print(f"{args.prog}: {args.target}: key {args.key} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
    else:
        write(sys.stdout.buffer, data)
    return EXIT_OK


def _put_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="the payload (default: stdin)")
    _compression_arg(p)


@COMMANDS.command("put", "store one payload read from a file or stdin (creates the store)",
                  store_argument, _key_arg, _put_args)
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
    say(f"{key}: {meta.uncompressed_length} bytes stored as {meta.length} "
        f"({Compression(meta.compression).name})")
    return EXIT_OK


def _io_args(p: argparse.ArgumentParser, exporting: bool = False) -> None:
    if exporting:
        p.add_argument("destination", help="where to write: a directory, a .tsv, .jsonl or .parquet "
                                           "file, or - (stdout)")
    else:
        p.add_argument("source", help="what to read: a directory, a .tsv, .jsonl or .parquet file, "
                                      "or - (stdin)")
    p.add_argument("--format", choices=("dir", "tsv", "jsonl", "parquet"), default=None,
                   help="default: dir for a directory, else from the file name's extension")


def _io_format(args: argparse.Namespace, exporting: bool) -> str:
    if args.format:
        return str(args.format)
    src = args.destination if exporting else args.source
    if src != "-" and (os.path.isdir(src) or (exporting and src.endswith(os.sep))):
        return "dir"
    for ext in ("tsv", "jsonl"):
        if src.endswith("." + ext):
            return ext
    if src.endswith(PARQUET_ENDINGS):
        return "parquet"
    raise UsageError(f"{src}: say --format dir, tsv, jsonl or parquet")


def _parquet_file(args: argparse.Namespace, path: str) -> None:
    """Parquet needs a file (not stdin/stdout) and pyarrow."""
    if path == "-":
        raise UsageError("parquet needs a file name, not - (stdin/stdout)")
    try:
        pyarrow_module()
    except ImportError as exc:
        raise UsageError(str(exc)) from None


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


@COMMANDS.command("import", "load payloads from a directory, TSV, JSONL or Parquet (creates the store)",
                  store_argument, _import_args, progress_argument, _compression_arg)
def cmd_import(args: argparse.Namespace) -> int:
    fmt_ = _io_format(args, exporting=False)
    if fmt_ == "dir" and not os.path.isdir(args.source):
        raise UsageError(f"{args.source}: no such directory")
    if fmt_ != "dir" and args.source != "-" and not os.path.isfile(args.source):
        raise UsageError(f"{args.source}: no such file")
    if fmt_ == "parquet":
        _parquet_file(args, args.source)
        with _open(args, readonly=False, create=True) as store:
            with Progress("import", enabled=args.progress, unit="rec") as bar:
                total = import_parquet(args.source, store, progress=bar.to)
            store.save()
        print(f"{args.target}: imported {total} payloads", file=sys.stderr)
        return EXIT_OK
    total = 0
    with _open(args, readonly=False, create=True) as store:
        with Progress("import", enabled=args.progress, unit="rec") as bar:
            keys: list[int] = []
            values: list[bytes] = []
            for key, data in _read_records(fmt_, args.source):
                keys.append(key)
                values.append(data)
                if len(keys) >= IMPORT_BATCH:
                    store.put_many(keys, values)
                    bar.update(len(keys))
                    total += len(keys)
                    keys, values = [], []
            if keys:
                store.put_many(keys, values)
                bar.update(len(keys))
                total += len(keys)
        store.save()
    print(f"{args.target}: imported {total} payloads", file=sys.stderr)
    return EXIT_OK


def _export_args(p: argparse.ArgumentParser) -> None:
    _io_args(p, exporting=True)
    p.add_argument("--raw", action="store_true",
                   help="parquet: the stored bytes with their codec column, not the payloads")
    p.add_argument("--parquet-compression", default="none", choices=PARQUET_CODECS,
                   help="parquet: the file's own codec (default none)")


@COMMANDS.command("export", "write every payload to a directory, TSV, JSONL or Parquet",
                  store_argument, _export_args, progress_argument)
def cmd_export(args: argparse.Namespace) -> int:
    fmt_ = _io_format(args, exporting=True)
    if args.raw and fmt_ != "parquet":
        raise UsageError("--raw is for --format parquet")
    if fmt_ == "parquet":
        _parquet_file(args, args.destination)
        with _open(args, readonly=True) as store:
            with Progress("export", len(store), enabled=args.progress, unit="rec") as bar:
                count = export_parquet(store, args.destination, raw=args.raw,
                                       compression=args.parquet_compression, progress=bar.to)
        print(f"{args.target}: exported {count} payloads", file=sys.stderr)
        return EXIT_OK
    with _open(args, readonly=True) as store:
        keys = sorted(store)
        if fmt_ == "dir":
            os.makedirs(args.destination, exist_ok=True)
            out = None
        else:
            out = sys.stdout.buffer if args.destination == "-" else open(args.destination, "wb")
        where = STDOUT_NAME if args.destination == "-" else args.destination
        try:
            with Progress("export", len(keys), enabled=args.progress, unit="rec") as bar:
                for k in keys:
                    data = store.get(k)
                    if data is None:
                        continue
                    if out is None:
                        with open(os.path.join(args.destination, str(k)), "wb") as f:
                            f.write(data)
                    elif fmt_ == "tsv":
                        write(out, b"%d\t%s\n" % (k, base64.b64encode(data)), where)
                    else:
                        try:
                            obj = {"key": str(k), "value": data.decode()}
                        except UnicodeDecodeError:
                            obj = {"key": str(k), "base64": base64.b64encode(data).decode()}
                        write(out, json.dumps(obj).encode() + b"\n", where)
                    bar.update(1)
        finally:
            if out is sys.stdout.buffer:
                flush(out, where)
            elif out is not None:
                with out:
                    flush(out, where)
    if args.destination != "-":
        print(f"{args.target}: exported {len(keys)} payloads", file=sys.stderr)
    return EXIT_OK
