"""Charts of the peer benchmarks: PNGs in docs/img/, from saved JSON results.

    pip install ".[bench]"
    python benchmarks/report.py            # draws from docs/img/store_peers.json and index_peers.json
    python benchmarks/report.py --run      # runs store_peers.py and index_peers.py first (minutes)
    python benchmarks/report.py --run --quick   # a smoke run of both, charts into --out

Writes ``peers_ops.png`` (the README's headline: ns per operation per
backend, grouped bars, log scale, at the smallest size), ``peers_ops_<n>.png``
for each other size, ``peers_scaling.png`` (cost per entry against entries,
log-log), ``peers_disk_open.png`` (bytes on disk per entry, open time) and
``index_peers.png`` (DiskHashIndex against luispedro/diskhash).  Each chart
carries the machine, the versions and the commit the results came from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IMG = os.path.join(os.path.dirname(HERE), "docs", "img")

COLORS = {"diskhash": "#d62728", "lmdb": "#1f77b4", "rocksdb": "#ff7f0e", "leveldb": "#2ca02c",
          "diskcache": "#9467bd", "sqlite3": "#8c564b", "dbm.gnu": "#7f7f7f",
          "luispedro/diskhash": "#1f77b4"}
OPS = [("get", "get"), ("get_miss", "get absent"), ("put", "put (one each)\n+ durable save"),
       ("put_many", "put_many\n(batch API)"), ("get_many", "get_many\n(bytes)")]


def footer(fig: plt.Figure, meta: dict, sizes: "dict | None" = None) -> None:
    v = meta.get("versions", {})
    load = f", load average {meta['load']} at the start" if "load" in meta else ""
    text = (f"{meta.get('cpu', '?')}, {meta.get('cores', '?')} cores ({meta.get('note') or 'machine'}{load}); "
            f"{meta.get('os', '')}; commit {meta.get('commit', '?')}\n"
            + ", ".join(f"{k} {x}" for k, x in v.items()))
    for n, size in (sizes or {}).items():
        own = size.get("meta")      # (a size measured in a run of its own)
        if own:
            text += f"\n{int(n):,} entries: commit {own.get('commit', '?')}, {own.get('note', '')}"
    fig.text(0.01, 0.005, text, fontsize=6.5, color="#555555", va="bottom", ha="left", wrap=True)


def grouped(ax: plt.Axes, rows: dict, ops: list[tuple[str, str]], extra_arrow: bool) -> None:
    names = list(rows)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ys = [], []
        for i, (op, _label) in enumerate(ops):
            if op in rows[name]:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(rows[name][op])
        ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
    if extra_arrow and "get_many_arrow" in rows.get("diskhash", {}):
        i = [op for op, _ in ops].index("get_many")
        x = i + (len(names) - 1) / 2 * width + width
        ax.bar([x], [rows["diskhash"]["get_many_arrow"]], width, color=COLORS["diskhash"], hatch="//",
               edgecolor="white", label="diskhash get_many_arrow")
    ax.set_yscale("log")
    ax.set_xticks(range(len(ops)), [label for _, label in ops], fontsize=8)
    ax.set_ylabel("ns per entry (log scale; lower is better)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=4)


def ops_chart(data: dict, n: str, path: str) -> None:
    size = data["sizes"][n]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    grouped(ax, size["results"], OPS, True)
    ax.set_title(f"diskhash PayloadStore against its peers: {int(n):,} entries of "
                 f"{size['payload']} random bytes, warm page cache", fontsize=10)
    fig.subplots_adjust(bottom=0.2)
    footer(fig, data["meta"], {n: size})
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_chart(data: dict, path: str) -> None:
    sizes = sorted(data["sizes"], key=int)
    panels = OPS + [("disk", "bytes on disk")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    names: list[str] = []
    for rows in (data["sizes"][n]["results"] for n in sizes):
        names += [x for x in rows if x not in names]
    for ax, (op, label) in zip(axes.flat, panels):
        for name in names:
            pts = [(int(n), data["sizes"][n]["results"][name][op]) for n in sizes
                   if op in data["sizes"][n]["results"].get(name, {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, color=COLORS.get(name),
                        linewidth=2.5 if name == "diskhash" else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label.replace("\n", " "), fontsize=9)
        ax.set_ylabel("bytes per entry" if op == "disk" else "ns per entry", fontsize=8)
        ax.set_xlabel("entries", fontsize=8)
        ax.grid(which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    pay = ", ".join(f"{int(n):,}: {data['sizes'][n]['payload']} B" for n in sizes)
    fig.suptitle(f"Cost per entry against entries (log-log; payload sizes {pay})", fontsize=10)
    fig.subplots_adjust(bottom=0.13, hspace=0.35, wspace=0.3)
    footer(fig, data["meta"], data["sizes"])
    fig.savefig(path, dpi=100)
    plt.close(fig)


def disk_open_chart(data: dict, path: str) -> None:
    sizes = sorted(data["sizes"], key=int)
    panels = [("disk", n) for n in sizes] + [("open_ms", sizes[-1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (key, n) in zip(axes[0], panels):
        rows = data["sizes"][n]["results"]
        payload = data["sizes"][n]["payload"]
        names = [x for x in rows if key in rows[x]]
        bars = ax.bar(names, [rows[x][key] for x in names], color=[COLORS.get(x) for x in names])
        ax.bar_label(bars, fmt="%.0f" if key == "disk" else "%.2g", fontsize=7)
        ax.tick_params(axis="x", labelsize=8, rotation=25)
        ax.grid(axis="y", which="both", alpha=0.3)
        if key == "disk":
            ax.axhline(payload, color="black", linewidth=0.8, linestyle="--")
            ax.text(-0.4, payload * 1.02, "the payload", fontsize=7)
            ax.set_title(f"bytes on disk per entry\n{int(n):,} entries of {payload} B (linear)", fontsize=9)
        else:
            ax.set_yscale("log")
            ax.set_title(f"open + one get, ms (log)\n{int(n):,} entries of {payload} B", fontsize=9)
    fig.subplots_adjust(bottom=0.22, top=0.86, wspace=0.3)
    footer(fig, data["meta"], data["sizes"])
    fig.savefig(path, dpi=100)
    plt.close(fig)


def index_chart(data: dict, path: str) -> None:
    sizes = sorted(data["sizes"], key=int)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes) + 1, 4.6), squeeze=False)
    ops = [("insert", "insert"), ("get", "get"), ("get_miss", "get absent"), ("disk", "bytes on disk\nper entry")]
    for ax, n in zip(axes[0], sizes):
        grouped(ax, data["sizes"][n]["results"], ops, False)
        ax.set_ylabel("ns per entry; bytes (log)")
        ax.set_title(f"{int(n):,} entries: 16-byte keys, 40-byte values", fontsize=9)
    fig.suptitle("DiskHashIndex against luispedro/diskhash (PyPI diskhash 0.4.2), separate processes",
                 fontsize=10)
    fig.subplots_adjust(bottom=0.22)
    footer(fig, data["meta"])
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the benchmarks first (JSON saved next to the charts)")
    ap.add_argument("--quick", action="store_true", help="with --run: smoke runs of both")
    ap.add_argument("--out", default=IMG, help="where the JSON and PNGs go (default docs/img)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    store_json = os.path.join(args.out, "store_peers.json")
    index_json = os.path.join(args.out, "index_peers.json")
    if args.run:
        quick = ["--quick"] if args.quick else []
        for script, out in (("store_peers.py", store_json), ("index_peers.py", index_json)):
            subprocess.run([sys.executable, os.path.join(HERE, script), "--json", out, *quick], check=True)
    written = []
    if os.path.exists(store_json):
        with open(store_json) as f:
            data = json.load(f)
        sizes = sorted(data["sizes"], key=int)
        ops_chart(data, sizes[0], os.path.join(args.out, "peers_ops.png"))
        written.append("peers_ops.png")
        for n in sizes[1:]:
            ops_chart(data, n, os.path.join(args.out, f"peers_ops_{n}.png"))
            written.append(f"peers_ops_{n}.png")
        if len(sizes) > 1:
            scaling_chart(data, os.path.join(args.out, "peers_scaling.png"))
            written.append("peers_scaling.png")
        disk_open_chart(data, os.path.join(args.out, "peers_disk_open.png"))
        written.append("peers_disk_open.png")
    if os.path.exists(index_json):
        with open(index_json) as f:
            index_chart(json.load(f), os.path.join(args.out, "index_peers.png"))
        written.append("index_peers.png")
    if not written:
        raise SystemExit(f"no results in {args.out}: run with --run")
    print("written in", args.out + ":", ", ".join(written))


if __name__ == "__main__":
    main()
