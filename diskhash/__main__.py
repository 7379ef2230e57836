"""Command-line tool: ``python -m diskhash {info,verify,repair,dump} PATH``.

``dump`` writes the fixtures' TSV format (key, offset, length, compression,
uncompressed_length; key in decimal), so an index can be diffed or reloaded.
Exit status: 0 ok, 1 the index is corrupt or locked, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from diskhash._index import DiskHashIndex
from diskhash.errors import DiskHashError


def _info(args: argparse.Namespace) -> int:
    with DiskHashIndex(args.path, readonly=True, timeout=args.timeout) as idx:
        s = idx.stats()
        print(f"path           {idx.path}")
        print(f"entries        {s.entries}")
        print(f"slots          {s.slots}")
        print(f"load factor    {s.load_factor:.4f}")
        print(f"file bytes     {s.file_bytes}")
        print(f"longest probe  {s.longest_probe}")
        print(f"mean probe     {s.mean_probe:.3f}")
        print(f"seed           0x{idx.seed:016x}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    with DiskHashIndex(args.path, readonly=True, timeout=args.timeout) as idx:
        idx.verify()
        print(f"{idx.path}: ok ({len(idx)} entries in {idx.num_slots} slots)")
    return 0


def _repair(args: argparse.Namespace) -> int:
    with DiskHashIndex(args.path, timeout=args.timeout) as idx:
        report = idx.repair()
    print(f"{args.path}: kept {report.kept} entries in {report.slots} slots, dropped {len(report.dropped)}")
    for slot, reason in report.dropped:
        print(f"  dropped slot {slot}: {reason}")
    return 0


def _dump(args: argparse.Namespace) -> int:
    out = sys.stdout
    with DiskHashIndex(args.path, readonly=True, timeout=args.timeout) as idx:
        for key, m in idx.items():
            out.write(f"{key}\t{m.offset}\t{m.length}\t{int(m.compression)}\t{m.uncompressed_length}\n")
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diskhash", description="Inspect SOCHIDX2 index files.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("info", _info, "header and table statistics"),
        ("verify", _verify, "check the whole table; list every defect"),
        ("repair", _repair, "rebuild a valid table from every readable entry"),
        ("dump", _dump, "print every entry as TSV"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("path")
        p.add_argument("--timeout", type=float, default=0.0, help="seconds to wait for a lock")
        p.set_defaults(func=func)
    from diskhash._cli_store import add_parser as add_store_parser
    add_store_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DiskHashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
