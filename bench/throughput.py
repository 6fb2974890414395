"""``python -m bench.throughput``: instances per second of this node beside another
checkout's (the node before a change), on the same load in the same run.

Theory of operation: for each load (``tiny``: synthesized 2 KiB data sets; ``ct``: 512
KiB ones) and each of the two nodes (this checkout, and ``--scpfleet-checkout`` with its
``.venv`` python when it has one), a fresh ``scpfleet serve`` (``--workers``, durability
``none``, storage on tmpfs where there is one) takes ``--count`` instances from
``scpfleet load`` over ``--associations`` associations, one C-STORE outstanding on
each. The two nodes alternate, and their order is swapped each repeat, so drift on a
shared machine hits both alike. A run passes only if every C-STORE succeeded and the
node holds exactly the files acknowledged. Wall-clock throughput on a shared 2-core
machine moves from run to run; ``python -m bench.cpucost`` is the steadier number (CPU
per instance), this one is what a sender sees.

Output: a table (medians of the passing runs, min-max, this node over the other) on
stdout and in ``--out``/throughput.md, and throughput.json (every run, the machine).
Ctrl-C or SIGTERM stops every process started here and writes nothing. It only talks to
the servers it starts on 127.0.0.1; no machine path goes into its results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clients import load_problems, load_report
from bench.common import OneLineParser, positive_int
from bench.cpucost import tmpfs_folder
from bench.machine import checkout_commit, command_text, machine_info
from bench.procs import Registry
from bench.servers import HOST, REPO, Launch, Node, RunError, start_scpfleet

__all__ = ["main", "build_parser", "summarize", "render_markdown"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Load name -> (data set bytes, instances per run by default).
LOADS = {"tiny": (2048, 20000), "ct": (524288, 2000)}
NODES = ("this", "other")
#: Seconds a load may take before its run is failed.
LOAD_TIMEOUT_S = 300.0

LIVE = Registry()


class Interrupted(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _node(which: str, opts: argparse.Namespace) -> Node:
    if which == "this":
        return Node(workers=opts.workers, durability="none")
    checkout = opts.scpfleet_checkout.resolve()
    python = sys.executable
    if (checkout / ".venv/bin/python").exists():
        python = str(checkout / ".venv/bin/python")  # not resolved: a venv's python is a link
    return Node(python=python, checkout=checkout, workers=opts.workers, durability="none")


def _load(folder: Path, port: int, size: int, count: int, opts: argparse.Namespace) -> dict[str, Any]:
    """Run ``scpfleet load`` against ``port``; its JSON report and exit status."""
    return load_report([HOST, port, "--aec", "SCPFLEET", "--associations", opts.associations,
                        "--count", count, "--size", size, "--timeout", 60], folder, LOAD_TIMEOUT_S, LIVE)


def measure(which: str, load: str, repeat: int, folder: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """One fresh node, one load: one record."""
    size, default_count = LOADS[load]
    rec: dict[str, Any] = {"node": which, "load": load, "repeat": repeat, "ok": False, "reason": None,
                           "instances": None, "instances_per_s": None, "mb_per_s": None,
                           "loadavg": round(os.getloadavg()[0], 2)}
    folder.mkdir(parents=True)
    store = opts.storage_root / f"{which}-{load}-{repeat}"
    running = None
    try:
        running = start_scpfleet(Launch(folder, storage=store, registry=LIVE), _node(which, opts))
        summary = _load(folder, running.port, size, opts.count or default_count, opts)
        stored = running.count_stored(summary["instances"])
        rec.update(instances=summary["instances"], instances_per_s=summary["instances_per_s"],
                   mb_per_s=summary["mb_per_s"])
        rec["reason"] = load_problems(summary, stored)
        rec["ok"] = rec["reason"] is None
    except RunError as exc:
        rec["reason"] = str(exc).replace(str(opts.work), "<work>")[:400]
    finally:
        if running is not None:
            running.stop()
        shutil.rmtree(store, ignore_errors=True)
    return rec


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per load: each node's median (min, max) instances/s and MB/s, and this
    node's median over the other's."""
    rows = []
    for load in [name for name in LOADS if any(r["load"] == name for r in records)]:
        row: dict[str, Any] = {"load": load}
        for which in NODES:
            runs = [r for r in records if r["load"] == load and r["node"] == which and r["ok"]]
            rates = [r["instances_per_s"] for r in runs]
            row[which] = {
                "runs": len(runs),
                "instances_per_s": round(statistics.median(rates), 1) if rates else None,
                "min": round(min(rates), 1) if rates else None,
                "max": round(max(rates), 1) if rates else None,
                "mb_per_s": round(statistics.median(r["mb_per_s"] for r in runs), 1) if runs else None,
            }
        this, other = row["this"]["instances_per_s"], row["other"]["instances_per_s"]
        row["ratio"] = round(this / other, 2) if this and other else None
        rows.append(row)
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Throughput: this node beside another checkout's",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"- Machine: {meta['machine']}.",
        f"- This node: {meta['this']}; the other: {meta['other']}. Both `scpfleet serve --workers "
        f"{meta['workers']} --durability none`, storage on {meta['storage']}.",
        f"- Load: `scpfleet load`, synthesized data sets (fresh UIDs), {meta['associations']} "
        f"associations, one C-STORE outstanding on each; {meta['repeat']} repeat(s), the nodes "
        "alternating (order swapped each repeat); medians of the passing runs (min-max).",
        "- A run passes only if no C-STORE failed and the node holds exactly the files acknowledged.",
        "",
        "| load | instances per run | this: instances/s | other: instances/s | this / other | this: MB/s | other: MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        this, other = row["this"], row["other"]

        def rate(cell: dict[str, Any]) -> str:
            if cell["instances_per_s"] is None:
                return "-"
            return f"{cell['instances_per_s']:,.0f} ({cell['min']:,.0f}-{cell['max']:,.0f})"

        count = meta["count"] or LOADS[row["load"]][1]
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        lines.append(f"| {row['load']} ({LOADS[row['load']][0]:,} B) | {count:,} | {rate(this)} | "
                     f"{rate(other)} | {ratio} | {this['mb_per_s'] or '-'} | {other['mb_per_s'] or '-'} |")
    failed = [r for r in result["runs"] if not r["ok"]]
    lines += ["", "Failures: " + ("none." if not failed else "")]
    lines += [f"- {r['node']} {r['load']} repeat {r['repeat']}: {r['reason']}" for r in failed]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.throughput",
        description="Instances per second of this checkout's scpfleet serve beside another "
                    "checkout's, the same synthesized loads in the same run; write throughput.md "
                    "and throughput.json.",
    )
    parser.add_argument("--scpfleet-checkout", type=Path, required=True, metavar="DIR",
                        help="the other node's checkout (its .venv's python when it has one)")
    parser.add_argument("--loads", default=",".join(LOADS), metavar="LIST",
                        help=f"comma-separated loads (default: {','.join(LOADS)})")
    parser.add_argument("--count", type=positive_int, metavar="N",
                        help="instances per run (default: tiny 20000, ct 2000)")
    parser.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="runs of each (load, node) (default 3)")
    parser.add_argument("--workers", type=positive_int, default=2, metavar="N",
                        help="worker processes of each node (default 2)")
    parser.add_argument("--associations", type=positive_int, default=8, metavar="N",
                        help="concurrent associations of the load (default 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where throughput.md and throughput.json go (default bench/results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    loads = [name.strip() for name in opts.loads.split(",") if name.strip()]
    unknown = [name for name in loads if name not in LOADS]
    if unknown or not loads:
        print(f"bench.throughput: error: unknown load(s) {', '.join(unknown) or '(none)'}; "
              f"known: {', '.join(LOADS)}", file=sys.stderr)
        return 2
    if not (opts.scpfleet_checkout / "workers" / "cli.py").is_file():
        print(f"bench.throughput: error: {opts.scpfleet_checkout} is not an scpfleet checkout",
              file=sys.stderr)
        return 2
    tmpfs, storage = tmpfs_folder()
    signal.signal(signal.SIGTERM, _on_sigterm)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scpfleet-throughput-") as work, \
            tempfile.TemporaryDirectory(prefix="scpfleet-throughput-", dir=tmpfs) as storage_root:
        opts.work = Path(work)
        opts.storage_root = Path(storage_root)
        try:
            for repeat in range(1, opts.repeat + 1):
                for load in loads:
                    order = NODES if repeat % 2 else NODES[::-1]
                    for which in order:
                        rec = measure(which, load, repeat, opts.work / f"{which}-{load}-{repeat}", opts)
                        records.append(rec)
                        rate = f"{rec['instances_per_s']:,.0f}/s" if rec["ok"] else f"FAILED: {rec['reason']}"
                        _progress(f"repeat {repeat}: {load} {which}: {rate}")
        except (KeyboardInterrupt, Interrupted):
            LIVE.stop_all()
            print("bench.throughput: interrupted, nothing written", file=sys.stderr)
            return 130
    m = machine_info()
    result = {
        "meta": {
            "command": command_text("python -m bench.throughput", list(argv if argv is not None else sys.argv[1:]),
                                    ("--scpfleet-checkout", "--out")),
            "date": m["date"],
            "machine": f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['system']}, "
                       f"load average {m['loadavg_start']} at the end (client and servers share the CPUs)",
            "this": f"this checkout ({checkout_commit(REPO)})",
            "other": f"another checkout ({checkout_commit(opts.scpfleet_checkout.resolve())})",
            "workers": opts.workers, "associations": opts.associations, "repeat": opts.repeat,
            "count": opts.count, "storage": storage,
        },
        "rows": summarize(records),
        "runs": records,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render_markdown(result)
    (opts.out / "throughput.md").write_text(text)
    print(text)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
