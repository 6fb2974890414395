"""The cluster benchmark: what a shared PostgreSQL index and a balancer cost and give.

Run ``python -m bench.clusterbench`` (``--quick`` for a smoke run). In one run, side by
side, on 127.0.0.1:

* **Indexing**: rows per second into each index the way indexers commit them
  (:meth:`storage.Catalog.apply` with the node's file check, batches of 2000 new
  records), by processes started together: SQLite with one indexer and with four (one
  file: they take turns), PostgreSQL with one indexer, four of one node (they take turns
  too: the node's advisory lock) and four nodes of one indexer each (in parallel). The
  PostgreSQL server is a temporary one (bench/postgres.py) with ``fsync`` and
  ``synchronous_commit`` on, like a real one; SQLite is in WAL mode with
  ``synchronous=NORMAL``, as the node runs it.
* **Throughput**: instances per second that 8 DCMTK ``storescu`` processes get through
  (associations of 50 instances, every file sent as stored, all on this machine):
  one node with two workers and its SQLite index; the same node on PostgreSQL; two
  nodes of one worker each behind HAProxy on PostgreSQL (what the balancer and the
  second supervisor cost, on the same CPUs); and DCMTK ``storescp --fork``. Every
  server starts fresh, durability ``none`` (storescp never syncs); a run passes only if
  every C-STORE was acknowledged and the server holds every file.

Repeats are interleaved (each repeat runs every configuration once, in rotated order)
and the tables show medians. It writes ``bench/results/cluster.md`` and ``cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import ClusterNode, Haproxy, Load, exact_profile
from bench.corpus import make_files
from bench.machine import machine_info
from bench.postgres import TemporaryPostgres
from bench.procs import Registry
from bench.servers import Launch, count_files, start_storescp

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
#: The indexer's batch (workers/indexer.py _BATCH_MAX).
INDEX_BATCH = 2000
LANES = 8
ASSOCIATION_FILES = 50


# ------------------------------------------------------------------------------ indexing


def _records(prefix: str, start: int, count: int) -> list[Any]:
    from storage import InstanceRecord

    out = []
    for n in range(start, start + count):
        study, series = n // 200, n // 20
        out.append(InstanceRecord(
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{prefix}.{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.{prefix}.9.{study}",
            series_instance_uid=f"1.2.826.0.1.3680043.8.498.{prefix}.9.{study}.{series}",
            patient_id=f"P{study % 97}", patient_name="DOE^JANE", modality="CT", study_date="20240102",
            instance_number=str(n % 20), transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"{study}/{series}/{n}.dcm", size=2048, digest="ab" * 32, calling_ae="MODALITY",
            called_ae="SCPFLEET", received_at=1.7e9 + n, generation=1_700_000_000_000_000_000 + n,
            study_time="093000", accession_number=f"A{study}", study_description="Chest CT",
        ))
    return out


def _apply_worker(location: str, node: str, prefix: str, batches: int, root: str, start: Any,
                  done: Any) -> None:
    from storage import FileCheck, open_catalog

    files = FileCheck(root)
    batch = [_records(prefix, b * INDEX_BATCH, INDEX_BATCH) for b in range(batches)]
    with open_catalog(location, node=node) as catalog:
        start.wait()
        for records in batch:
            catalog.apply(records, {f"w0-{prefix}": len(records)}, files)
    done.put(time.monotonic())


def index_rate(location: str, indexers: int, nodes: int, batches: int, folder: Path) -> float:
    """Rows per second for ``indexers`` processes (spread over ``nodes`` node ids)
    committing ``batches`` batches each into ``location``."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    done = ctx.Queue()
    procs = [ctx.Process(target=_apply_worker, args=(location, f"n{i % nodes}", f"{i}", batches, str(folder),
                                                     start, done)) for i in range(indexers)]
    for proc in procs:
        proc.start()
    time.sleep(1.0 + 0.5 * indexers)  # let every process build its batches and connect
    began = time.monotonic()
    start.set()
    ends = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            raise RuntimeError(f"an indexer process failed ({proc.exitcode})")
    return indexers * batches * INDEX_BATCH / (max(ends) - began)


INDEX_CONFIGS = (
    ("sqlite", 1, 1), ("sqlite", 4, 1),
    ("postgresql", 1, 1), ("postgresql", 4, 1), ("postgresql", 4, 4),
)


def _index_label(kind: str, indexers: int, nodes: int) -> str:
    if kind == "sqlite":
        return f"SQLite, {indexers} indexer{'s' if indexers > 1 else ''}"
    if indexers == 1:
        return "PostgreSQL, 1 indexer"
    if nodes == 1:
        return f"PostgreSQL, {indexers} indexers of one node"
    return f"PostgreSQL, {nodes} nodes x {indexers // nodes} indexer"


# ------------------------------------------------------------------------------ throughput


THROUGHPUT_CONFIGS = ("node-2w-sqlite", "node-2w-postgresql", "2-nodes-1w-haproxy", "storescp-fork")
THROUGHPUT_LABELS = {
    "node-2w-sqlite": "1 node x 2 workers, SQLite index",
    "node-2w-postgresql": "1 node x 2 workers, PostgreSQL index",
    "2-nodes-1w-haproxy": "2 nodes x 1 worker behind HAProxy, PostgreSQL index",
    "storescp-fork": "DCMTK storescp --fork",
}


def throughput(config: str, files: list[Path], folder: Path, pg: TemporaryPostgres, run: int) -> dict[str, Any]:
    """One run of one configuration: instances/s, or the reason it failed."""
    registry = Registry()
    folder.mkdir(parents=True)
    nodes: list[ClusterNode] = []
    haproxy = None
    storescp = None
    try:
        if config == "storescp-fork":
            storescp = start_storescp(Launch(folder, registry=registry))
            port, count = storescp.port, storescp.count_now
        elif config == "2-nodes-1w-haproxy":
            url = pg.create_database(f"tp{run}_{config.replace('-', '_')}")
            nodes = [ClusterNode(f"node{n}", folder / f"node{n}", url, registry=registry).start() for n in (1, 2)]
            haproxy = Haproxy(folder / "haproxy", [n.server for n in nodes], registry=registry).start()
            for node in nodes:
                haproxy.wait_state(node.name, "UP")
            port = haproxy.port
        else:
            url = "sqlite" if config.endswith("sqlite") else pg.create_database(f"tp{run}_{config.replace('-', '_')}")
            nodes = [ClusterNode("node1", folder / "node1", url, workers=2, registry=registry, balanced=False).start()]
            port = nodes[0].port
        if nodes:
            def count() -> int:
                return sum(count_files(n.storage, ".dcm") for n in nodes)
        load = Load(port, files, exact_profile(files, folder), lanes=LANES, batch=ASSOCIATION_FILES)
        began = time.monotonic()
        results = load.start().wait()
        elapsed = time.monotonic() - began
        failed = [r for r in results if not r.complete]
        if failed:
            return {"ok": False, "why": f"{len(failed)} association(s) failed: {failed[0].output[-300:]}"}
        deadline = time.monotonic() + 10
        while (stored := count()) < len(files) and time.monotonic() < deadline:
            time.sleep(0.05)
        if stored != len(files):
            return {"ok": False, "why": f"stored {stored} of {len(files)}"}
        return {"ok": True, "seconds": elapsed, "instances_per_s": len(files) / elapsed}
    finally:
        if haproxy is not None:
            haproxy.stop()
        for node in nodes:
            node.stop()
        if storescp is not None:
            storescp.stop()
        registry.stop_all()


# ------------------------------------------------------------------------------ the run


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clusterbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="small loads: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where cluster.md and cluster.json go")
    args = parser.parse_args(argv)
    for tool in ("haproxy", "storescu", "storescp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    tiny_count, ct_count, index_batches = (400, 60, 3) if args.quick else (3000, 300, 10)
    work = Path(tempfile.mkdtemp(prefix="scpfleet-clusterbench-"))
    info = machine_info()
    loads = {
        f"tiny (~2 kB) x {tiny_count}": make_files(work / "tiny", {"tiny": tiny_count}),
        f"CT (~0.5 MB) x {ct_count}": make_files(work / "ct", {"ct": ct_count}),
    }
    index_runs: dict[str, list[float]] = {_index_label(*c): [] for c in INDEX_CONFIGS}
    tp_runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pg = TemporaryPostgres(fsync=True).start()
    try:
        run = 0
        for repeat in range(args.repeat):
            configs = list(INDEX_CONFIGS)
            shift = repeat % len(configs)
            for kind, indexers, nodes in configs[shift:] + configs[:shift]:
                run += 1
                folder = work / f"index-{run}"
                folder.mkdir()
                location = str(folder / "index.sqlite") if kind == "sqlite" else pg.create_database(f"ix{run}")
                rate = index_rate(location, indexers, nodes, index_batches, folder)
                index_runs[_index_label(kind, indexers, nodes)].append(rate)
                print(f"indexing {_index_label(kind, indexers, nodes)}: {rate:,.0f} rows/s", flush=True)
            order = list(THROUGHPUT_CONFIGS)
            shift = repeat % len(order)
            for load, files in loads.items():
                for config in order[shift:] + order[:shift]:
                    run += 1
                    result = throughput(config, files, work / f"tp-{run}", pg, run)
                    tp_runs.setdefault((load, config), []).append(result)
                    shown = f"{result['instances_per_s']:,.0f} instances/s" if result["ok"] else result["why"]
                    print(f"{load}, {THROUGHPUT_LABELS[config]}: {shown}", flush=True)
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    report = _report(info, index_runs, tp_runs, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.md").write_text(report)
    (args.out / "cluster.json").write_text(json.dumps({
        "machine": info,
        "command": "python -m bench.clusterbench" + (" --quick" if args.quick else "") + f" --repeat {args.repeat}",
        "indexing_rows_per_s": index_runs,
        "throughput": [{"load": load, "config": config, "runs": runs} for (load, config), runs in tp_runs.items()],
    }, indent=2))
    print(report)
    return 0


def _report(info: dict[str, Any], index_runs: dict[str, list[float]],
            tp_runs: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [
        "# A cluster on one machine: the shared index and the balancer",
        "",
        f"Generated by `python -m bench.clusterbench{' --quick' if args.quick else ''} --repeat {args.repeat}` "
        f"on {info['date']}.",
        "",
        f"- Machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, {info['system']}; "
        f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']} (clients, servers and "
        "the database share the CPUs).",
        f"- Versions: scpfleet {info['scpfleet']} ({info['commit']}), Python {info['python']}, "
        f"DCMTK {info['dcmtk']}, PostgreSQL (Debian's, temporary server, fsync on), HAProxy (Debian's).",
        f"- {args.repeat} interleaved repeat(s); medians (min-max in brackets).",
        "",
        "## Indexing: rows per second into the index",
        "",
        f"Catalog.apply with the node's file check, batches of {INDEX_BATCH} new records, processes started "
        "together.",
        "",
        "| Index, writers | rows/s |",
        "|---|---:|",
    ]
    for label, rates in index_runs.items():
        if rates:
            lines.append(f"| {label} | {_median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) |")
    lines += [
        "",
        "## Throughput: instances per second through each setup",
        "",
        f"{LANES} DCMTK storescu at once, {ASSOCIATION_FILES} instances per association, durability `none`.",
        "",
    ]
    for load in dict.fromkeys(load for load, _ in tp_runs):
        lines += [f"### {load}", "", "| Setup | instances/s | vs 1 node x 2 workers (SQLite) | vs storescp --fork |",
                  "|---|---:|---:|---:|"]
        medians = {}
        for config in THROUGHPUT_CONFIGS:
            runs = tp_runs.get((load, config), [])
            rates = [r["instances_per_s"] for r in runs if r["ok"]]
            medians[config] = _median(rates)
        for config in THROUGHPUT_CONFIGS:
            runs = tp_runs.get((load, config), [])
            rates = [r["instances_per_s"] for r in runs if r["ok"]]
            failed = len(runs) - len(rates)
            if not rates:
                lines.append(f"| {THROUGHPUT_LABELS[config]} | failed | | |")
                continue
            med = medians[config]
            base, fork = medians["node-2w-sqlite"], medians["storescp-fork"]
            lines.append(
                f"| {THROUGHPUT_LABELS[config]} | {med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
                f"{f', {failed} failed' if failed else ''} | "
                f"{f'{med / base:.2f}x' if base else '-'} | {f'{med / fork:.2f}x' if fork else '-'} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
