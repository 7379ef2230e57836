"""DiskHashIndex against its closest relative, luispedro/diskhash, each in its own process.

    python benchmarks/index_peers.py [--sizes 100000,1000000] [--ldh-venv DIR] [--quick] [--json out.json]

luispedro/diskhash (PyPI ``diskhash`` 0.4.2) is a C memory-mapped hash table
with fixed-size keys and values.  Its import name is also ``diskhash``, so it
runs from its own virtual environment (``--ldh-venv``, made there with PyPI's
``diskhash==0.4.2`` on first use; never install it beside this project: the
two share a folder), in a child process; DiskHashIndex runs in another child
of this interpreter.  The same keys for both: 16 random
ASCII characters (the peer takes NUL-terminated ``str`` keys, so its key
size is 17), for DiskHashIndex the same 16 bytes as a 128-bit int; a
40-byte value (a ``PayloadMeta``; for the peer 40 bytes through its C type
``Diskhash`` directly, a prebuilt memoryview each, skipping the
``StructHash`` packing wrapper its docs show).

Measured per entry: ``insert`` (one call each into a new table, no
reservation), ``get`` of present keys and of absent ones over a shuffled
sample (in parts of 2,000 keys, each the fastest of ``--repeat`` runs,
summed: a loaded machine's preemptions stay out), and bytes on disk.  The peer has no save or
sync call: neither side's insert includes one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _backends import chunked  # noqa: E402  (the standard library only: the other venv imports it too)

HERE = os.path.dirname(os.path.abspath(__file__))
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def make_keys(n: int, lookups: int) -> "tuple[list[str], list[int], list[str]]":
    rng = random.Random(19)
    keys = list({"".join(rng.choices(ALPHABET, k=16)) for _ in range(n)})
    while len(keys) < n:
        keys.append("".join(rng.choices(ALPHABET, k=16)))
    keys = list(dict.fromkeys(keys))[:n]
    sample = [rng.randrange(n) for _ in range(min(lookups, n))]
    present = set(keys)
    absent: list[str] = []
    while len(absent) < len(sample):
        k = "".join(rng.choices(ALPHABET, k=16))
        if k not in present:
            absent.append(k)
    return keys, sample, absent


def parts_of(keys: list, size: int = 2_000) -> list:
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def du(path: str) -> int:
    return os.stat(path).st_blocks * 512


def worker(kind: str, n: int, lookups: int, repeat: int, directory: str) -> dict:
    keys, sample, absent = make_keys(n, lookups)
    path = os.path.join(directory, kind + ".idx")
    res: dict = {}
    if kind == "sochidx":
        from diskhash import DiskHashIndex, PayloadMeta

        ks = [int.from_bytes(k.encode(), "little") for k in keys]
        metas = [PayloadMeta(k, i * 100, 100, 0, 100) for i, k in enumerate(ks)]
        ab = [int.from_bytes(k.encode(), "little") for k in absent]
        idx = DiskHashIndex(path)
        ins = idx.insert
        gc.disable()
        t = time.perf_counter()
        for k, m in zip(ks, metas):
            ins(k, m)
        res["insert"] = (time.perf_counter() - t) / n * 1e9
        gc.enable()
        idx.close()
        idx = DiskHashIndex(path, readonly=True)
        get = idx.get
        hit = [ks[i] for i in sample]
        assert get(hit[0]) is not None and get(ab[0]) is None
    else:
        from diskhash import _diskhash

        vals = [memoryview(i.to_bytes(8, "little") * 5) for i in range(n)]
        db = _diskhash.Diskhash(path, 17, 40, "rw", 0)
        ins = db.insert
        gc.disable()
        t = time.perf_counter()
        for k, v in zip(keys, vals):
            ins(k, v)
        res["insert"] = (time.perf_counter() - t) / n * 1e9
        gc.enable()
        del db, ins
        db = _diskhash.Diskhash(path, 17, 40, "r", 0)
        get = db.lookup
        hit = [keys[i] for i in sample]
        ab = absent
        assert get(hit[0]) is not None and get(ab[0]) is None

    def gets(part: list) -> None:
        for k in part:
            get(k)

    res["get"] = chunked(gets, parts_of(hit), repeat) / len(hit) * 1e9
    res["get_miss"] = chunked(gets, parts_of(ab), repeat) / len(ab) * 1e9
    res["disk"] = du(path) / n
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ldh-venv", default=os.path.join(tempfile.gettempdir(), "venv-luispedro-diskhash"),
                    help="a virtual environment holding PyPI's diskhash 0.4.2 alone (made if missing)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20,000 entries")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if args.worker:
        n = int(args.sizes)
        print(json.dumps(worker(args.worker, n, args.lookups, args.repeat, args.dir)))
        return
    sys.path.insert(0, HERE)
    from _backends import machine_info

    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.lookups, args.repeat = 5_000, 1
    meta = machine_info(["numpy"])
    import diskhash
    meta["versions"]["diskhash"] = diskhash.__version__
    ldh_python = os.path.join(args.ldh_venv, "bin", "python")
    if not os.path.exists(ldh_python):
        print(f"making {args.ldh_venv} with PyPI's diskhash 0.4.2 (luispedro/diskhash)")
        subprocess.run([sys.executable, "-m", "venv", args.ldh_venv], check=True)
        subprocess.run([ldh_python, "-m", "pip", "install", "--quiet", "diskhash==0.4.2"], check=True)
    ldh = subprocess.run([ldh_python, "-c", "import diskhash; print(diskhash.__version__)"],
                         capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    have_ldh = ldh.returncode == 0
    if have_ldh:
        meta["versions"]["luispedro/diskhash"] = ldh.stdout.strip()
    else:
        print(f"luispedro/diskhash not runnable with {ldh_python}: skipped")
    meta["note"] = "loaded 2-core VM shared with other jobs" if os.cpu_count() == 2 else ""
    print(meta)
    out: dict = {"meta": meta, "sizes": {}}
    for n in sizes:
        rows = {}
        with tempfile.TemporaryDirectory(prefix="index_peers-") as tmp:
            runs = [("sochidx", sys.executable, dict(os.environ))]
            if have_ldh:
                runs.append(("luispedro", ldh_python,
                             {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}))
            for kind, python, env in runs:
                cmd = [python, os.path.join(HERE, "index_peers.py"), "--worker", kind, "--sizes", str(n),
                       "--lookups", str(args.lookups), "--repeat", str(args.repeat), "--dir", tmp]
                # The peer's child runs outside the repository and without PYTHONPATH:
                # its `import diskhash` must find PyPI's package, not this one.
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
                if r.returncode:
                    raise SystemExit(f"{kind} worker failed:\n{r.stderr}")
                rows["diskhash" if kind == "sochidx" else "luispedro/diskhash"] = json.loads(r.stdout)
        out["sizes"][str(n)] = {"results": rows}
        for name, r in rows.items():
            print(f"{n:>9} {name:<20} " + "  ".join(f"{k} {v:,.0f}" for k, v in r.items()), flush=True)
        if len(rows) == 2:
            dh, peer = rows["diskhash"], rows["luispedro/diskhash"]
            for op in ("insert", "get", "get_miss", "disk"):
                ok = dh[op] <= peer[op]
                print(f"  {'PASS' if ok else 'MISS'}  {op:<9} {peer[op] / dh[op]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
