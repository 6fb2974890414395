"""``python -m bench.durability``: durability ``batch`` beside ``fsync``, on disk.

Theory of operation: ``batch`` promises what ``fsync`` promises (every acknowledged
instance's file, directory entries and journal frame are on stable storage) while
sharing the syncs of instances that finish together, so it must never be slower. This
measures it: for each association count (default 1, 4, 16, 64) and each durability, a
fresh ``scpfleet serve`` node (``--workers``; this checkout or ``--scpfleet-checkout``)
stores on the repository's file system (a real disk, never tmpfs: ``--storage-dir``
elsewhere) while ``scpfleet load`` pushes synthesized tiny instances (``--size``,
fresh UIDs each) for ``--duration`` seconds over that many associations, one C-STORE
outstanding on each. The load reports instances/s and the C-STORE latency
percentiles; a run passes only if no C-STORE failed and the node holds exactly the
files acknowledged. The durabilities alternate, and their order is swapped each
repeat, so drift on a shared machine hits both alike.

Output: a table (throughput and p50/p99 latency of each durability side by side, batch
over fsync by medians and within each repeat, whose two runs ran back to back) on stdout
and in ``--out``/durability.md, and durability.json (every run,
the medians, the machine). Ctrl-C or SIGTERM stops every process started here and
writes nothing. It only talks to the servers it starts on 127.0.0.1; no machine path
goes into its results.
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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clients import load_problems, load_report, load_shape
from bench.common import OneLineParser, positive_float, positive_int
from bench.machine import checkout_commit, command_text, fs_type, machine_info
from bench.procs import Registry
from bench.servers import HOST, REPO, Launch, Node, RunError, start_scpfleet

__all__ = ["main", "build_parser", "summarize", "render_markdown"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DURABILITIES = ("fsync", "batch")
ASSOCIATIONS = (1, 4, 16, 64)
#: Seconds of load per run: long enough for a p99 over thousands of stores.
DURATION_S = 10.0
#: A tiny instance: the case where the per-instance cost of syncing shows most.
SIZE = 2048
#: Associations at most: bench.servers starts nodes with --max-associations 200.
MAX_ASSOCIATIONS = 200
#: Seconds past --duration a load may take before the run is failed (start-up, the
#: last responses, a stalled node).
LOAD_GRACE_S = 120.0


class Interrupted(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


LIVE = Registry()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _node(opts: argparse.Namespace, durability: str) -> Node:
    checkout = opts.scpfleet_checkout.resolve() if opts.scpfleet_checkout else REPO
    python = sys.executable
    if opts.scpfleet_checkout and (checkout / ".venv/bin/python").exists():
        python = str(checkout / ".venv/bin/python")  # not resolved: a venv's python is a link
    return Node(python=python, checkout=checkout, workers=opts.workers, durability=durability)


def _load(folder: Path, port: int, associations: int, opts: argparse.Namespace) -> dict[str, Any]:
    """Run ``scpfleet load`` against ``port``; its JSON report."""
    processes, per = load_shape(associations, os.cpu_count() or 1)
    return load_report([HOST, port, "--aec", "SCPFLEET", "--processes", processes, "--associations", per,
                        "--duration", opts.duration, "--size", opts.size, "--timeout", 60],
                       folder, opts.duration + LOAD_GRACE_S, LIVE)


def measure(durability: str, associations: int, repeat: int, folder: Path,
            opts: argparse.Namespace) -> dict[str, Any]:
    """One fresh node, one load: one record."""
    rec: dict[str, Any] = {
        "repeat": repeat, "durability": durability, "associations": associations,
        "ok": False, "reason": None, "instances": None, "instances_per_s": None,
        "latency_ms": None, "stored": None, "loadavg": round(os.getloadavg()[0], 2),
    }
    folder.mkdir(parents=True)
    store = opts.storage_root
    running = None
    try:
        launch = Launch(folder, storage=store, registry=LIVE)
        running = start_scpfleet(launch, _node(opts, durability))
        summary = _load(folder, running.port, associations, opts)
        stored = running.count_stored(summary["instances"])
        rec.update(instances=summary["instances"], instances_per_s=summary["instances_per_s"],
                   latency_ms=summary["latency_ms"], stored=stored)
        rec["reason"] = load_problems(summary, stored)
        rec["ok"] = rec["reason"] is None
    except RunError as exc:
        rec["reason"] = str(exc).replace(str(opts.work), "<work>")[:400]
    finally:
        if running is not None:
            running.stop()
        _clear(store)
    return rec


def _clear(store: Path) -> None:
    """Empty the storage root for the next run, keeping its ``.tmp`` folder: every
    file is created there first, and on ext4 a new file's inode is taken near its
    folder's, whose luck (a full inode group costs each creation up to a millisecond
    of CPU) must be the same for every run compared. Then flush the file systems, so
    that the removal's writes do not land on the next run."""
    for entry in store.iterdir() if store.is_dir() else ():
        if entry.name == ".tmp":
            for leftover in entry.iterdir():
                leftover.unlink(missing_ok=True)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    os.sync()


def creation_cost_us(folder: Path, n: int = 1000) -> float:
    """CPU microseconds to create a file in ``folder`` that stays (as a stored instance
    does): a property of the file system and of where the folder's inode lies, which
    can differ fifty-fold on one ext4 file system; reported with the results."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"probe-{i}.part" for i in range(n)]
    started = time.process_time()
    for path in paths:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    spent = time.process_time() - started
    for path in paths:
        path.unlink()
    return round(spent / n * 1e6, 1)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per association count: each durability's medians, batch over fsync."""
    rows = []
    for associations in sorted({r["associations"] for r in records}):
        row: dict[str, Any] = {"associations": associations}
        for durability in DURABILITIES:
            runs = [r for r in records if r["associations"] == associations
                    and r["durability"] == durability]
            good = [r for r in runs if r["ok"]]
            row[durability] = {
                "runs": len(runs), "passed": len(good),
                "instances_per_s": _median([r["instances_per_s"] for r in good]),
                "p50_ms": _median([r["latency_ms"]["p50"] for r in good]),
                "p99_ms": _median([r["latency_ms"]["p99"] for r in good]),
                "reasons": sorted({r["reason"] for r in runs if r["reason"]}),
            }
        fsync, batch = row["fsync"], row["batch"]
        row["throughput_batch_over_fsync"] = (
            round(batch["instances_per_s"] / fsync["instances_per_s"], 3)
            if batch["instances_per_s"] and fsync["instances_per_s"] else None)
        row["p99_batch_over_fsync"] = (
            round(batch["p99_ms"] / fsync["p99_ms"], 3)
            if batch["p99_ms"] and fsync["p99_ms"] else None)
        # Runs of one repeat ran back to back: their ratio is freer of the machine's drift.
        pairs = []
        for repeat in sorted({r["repeat"] for r in records}):
            both = {r["durability"]: r for r in records if r["repeat"] == repeat
                    and r["associations"] == associations and r["ok"]}
            if len(both) == 2 and both["fsync"]["instances_per_s"]:
                pairs.append(both["batch"]["instances_per_s"] / both["fsync"]["instances_per_s"])
        row["pairs"] = len(pairs)
        row["pairs_batch_ahead"] = sum(1 for ratio in pairs if ratio >= 1)
        row["paired_ratio_median"] = _median(pairs)
        rows.append(row)
    return rows


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def render_markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    out: list[str] = []
    w = out.append
    w("# Durability batch beside fsync, on disk")
    w("")
    w(f"Generated by `{cfg['command']}` on {m['date']}.")
    w("")
    w(f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['system']}; "
      f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')} "
      "(client and server share the CPUs).")
    w(f"- Node: {cfg['node']}, {cfg['workers']} workers, storage on {cfg['storage']} "
      f"(the repository's file system unless --storage-dir), one storage folder for every "
      f"run, emptied in between; creating a file in its .tmp costs "
      f"{cfg['file_creation_cpu_us']} us of CPU.")
    w(f"- Load: `scpfleet load`, synthesized {cfg['size']}-byte instances (fresh UIDs each), "
      f"{cfg['duration_s']:.0f} s per run, one C-STORE outstanding per association; "
      f"{cfg['repeat']} repeat(s), durabilities alternating, medians of the passing runs.")
    w("- A run passes only if no C-STORE failed and the node holds exactly the files "
      "acknowledged.")
    w("")
    w("| associations | fsync inst/s | batch inst/s | batch / fsync | same repeat: batch / fsync "
      "(median), batch ahead | fsync p50 ms | batch p50 ms | fsync p99 ms | batch p99 ms |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["summary"]:
        f, b = row["fsync"], row["batch"]
        ratio, paired = row["throughput_batch_over_fsync"], row.get("paired_ratio_median")
        pairs = (f"{paired:.2f}x, {row['pairs_batch_ahead']} of {row['pairs']}"
                 if paired is not None else "-")
        w(f"| {row['associations']} | {_num(f['instances_per_s'])} | {_num(b['instances_per_s'])} | "
          f"{'-' if ratio is None else f'{ratio:.2f}x'} | {pairs} | {_num(f['p50_ms'])} | "
          f"{_num(b['p50_ms'])} | {_num(f['p99_ms'])} | {_num(b['p99_ms'])} |")
    w("")
    failed = [r for r in result["runs"] if not r["ok"]]
    w("Failures: " + ("none." if not failed else ""))
    for r in failed:
        w(f"- repeat {r['repeat'] + 1}, {r['durability']}, {r['associations']} associations: "
          f"{r['reason']}")
    w("")
    return "\n".join(out)


def _counts(text: str) -> list[int]:
    """A comma-separated list of association counts (1 to 200, the node's limit here)."""
    values = [positive_int(v.strip()) for v in text.split(",") if v.strip()]
    if not values or max(values) > MAX_ASSOCIATIONS:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts from 1 to {MAX_ASSOCIATIONS}")
    return list(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.durability",
        description="Throughput and C-STORE latency of scpfleet serve with durability batch "
        "beside fsync, storage on disk, at several association counts; write durability.md "
        "and durability.json.")
    parser.add_argument("--associations", type=_counts,
                        default=list(ASSOCIATIONS), metavar="LIST",
                        help="comma-separated association counts (default 1,4,16,64)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="workers of the node (default: one per CPU, the node's default)")
    parser.add_argument("--duration", type=positive_float, default=DURATION_S, metavar="S",
                        help=f"seconds of load per run (default {DURATION_S:.0f})")
    parser.add_argument("--size", type=positive_int, default=SIZE, metavar="BYTES",
                        help=f"bytes of pixel data per instance (default {SIZE})")
    parser.add_argument("--repeat", type=positive_int, default=2, metavar="N",
                        help="runs of each (associations, durability); an even number "
                        "puts each durability first as often (default 2)")
    parser.add_argument("--storage-dir", type=Path, metavar="DIR",
                        help="where the nodes store (default: a temporary folder in the "
                        "repository, i.e. on its file system)")
    parser.add_argument("--scpfleet-checkout", type=Path, metavar="DIR",
                        help="run this checkout's node (its .venv's python when it has one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where durability.md and durability.json go (default bench/results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.scpfleet_checkout and not (opts.scpfleet_checkout / "workers" / "cli.py").is_file():
        parser.error(f"--scpfleet-checkout {opts.scpfleet_checkout}: not an scpfleet checkout")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    opts.work = Path(tempfile.mkdtemp(prefix="scpfleet-durability-"))
    base = opts.storage_dir if opts.storage_dir is not None else REPO
    base.mkdir(parents=True, exist_ok=True)
    opts.storage_root = Path(tempfile.mkdtemp(prefix=".durability-", dir=base))
    started = time.monotonic()
    try:
        machine = machine_info()
        storage = fs_type(opts.storage_root)
        if storage == "tmpfs":
            _progress("warning: the storage folder is on tmpfs, where syncing costs nothing")
        create_us = creation_cost_us(opts.storage_root / ".tmp")
        records: list[dict[str, Any]] = []
        total = opts.repeat * len(opts.associations) * len(DURABILITIES)
        seq = iter(range(1 << 30))
        for repeat in range(opts.repeat):
            order = DURABILITIES if repeat % 2 == 0 else DURABILITIES[::-1]
            for associations in opts.associations:
                for durability in order:
                    rec = measure(durability, associations, repeat,
                                  opts.work / f"{next(seq):04d}", opts)
                    records.append(rec)
                    head = f"[{len(records)}/{total}] {durability}, {associations} assoc.:"
                    if rec["ok"]:
                        lat = rec["latency_ms"]
                        _progress(f"{head} {rec['instances_per_s']:,.0f} inst/s, p50 "
                                  f"{lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")
                    else:
                        _progress(f"{head} FAILED: {rec['reason']}")
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        checkout = opts.scpfleet_checkout.resolve() if opts.scpfleet_checkout else REPO
        result = {
            "machine": machine,
            "config": {
                "command": command_text("python -m bench.durability", argv,
                                        ("--out", "--storage-dir", "--scpfleet-checkout")),
                "node": f"scpfleet serve ({checkout_commit(checkout) or 'unknown commit'})",
                "workers": opts.workers, "duration_s": opts.duration, "size": opts.size,
                "repeat": opts.repeat, "storage": storage, "file_creation_cpu_us": create_us,
                "elapsed_s": round(time.monotonic() - started, 1),
            },
            "runs": records,
            "summary": summarize(records),
        }
        text = render_markdown(result)
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "durability.json").write_text(json.dumps(result, indent=1) + "\n")
        (opts.out / "durability.md").write_text(text)
        print(text)
        failed = sum(1 for r in records if not r["ok"])
        _progress(f"{len(records)} runs, {failed} failed, {time.monotonic() - started:.0f} s; "
                  f"results in {opts.out}")
        return 1 if failed else 0
    except (KeyboardInterrupt, Interrupted):
        _progress("\ninterrupted: every server and client stopped; no results written")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        LIVE.stop_all()
        shutil.rmtree(opts.storage_root, ignore_errors=True)
        shutil.rmtree(opts.work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
