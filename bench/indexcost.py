"""What one index row costs as the SQLite index grows: ``Catalog.apply`` over a synthetic
archive, with the node's settings for the index's writer beside SQLite's defaults.

Theory of operation: the records are :func:`bench.qrbench.synthetic_record`'s archive
(25 instances a study, 4 studies a patient), the studies in a shuffled order and
``--streams`` of them arriving at once, one instance of each in turn, as concurrent
associations deliver them: the UIDs, patient IDs, names, dates and accession numbers of
the studies in flight land anywhere in their indexes, while the reception time only
grows. They are applied in batches (``--batch``,
about what the indexer commits under load) to a fresh index on ``--dir``, and the
process CPU time of every slice of ``--slice`` rows is reported, for each variant:

- ``node``: a :class:`storage.SqliteCatalog` as the node's indexer opens it;
- ``sqlite-defaults``: the same, with the writer's page cache and WAL checkpoint set
  back to SQLite's compiled-in defaults (those of a plain connection).

The variants alternate slice by slice (two indexes growing side by side), so a change
in the machine's load touches both alike. Writes ``indexcost.md`` and
``indexcost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import msgspec

from bench.common import OneLineParser, positive_int
from bench.machine import checkout_commit, command_text, fs_type, machine_info
from bench.qrbench import _PER_STUDY, synthetic_record
from bench.servers import REPO
from storage import InstanceRecord, SqliteCatalog

VARIANTS = ("node", "sqlite-defaults")


def arrivals(rows: int, seed: int, streams: int = 1) -> list[int]:
    """Instance numbers in arrival order: the studies shuffled, ``streams`` of them
    arriving at once (as over that many associations), one instance of each in turn; a
    stream that finishes its study starts the next one."""
    studies = list(range(-(-rows // _PER_STUDY)))
    random.Random(seed).shuffle(studies)
    waiting = iter(studies)

    def instances(study: int) -> Iterator[int]:  # every study has at least one
        return iter(range(study * _PER_STUDY, min((study + 1) * _PER_STUDY, rows)))

    lanes = [instances(s) for s in itertools.islice(waiting, streams)]
    order: list[int] = []
    while lanes:
        going = []
        for lane in reversed(lanes):  # the last stream first, as the order was recorded
            i = next(lane, None)
            if i is None:
                study = next(waiting, None)
                if study is None:
                    continue  # this stream is done
                lane = instances(study)
                i = next(lane)
            order.append(i)
            going.append(lane)
        lanes = going[::-1]
    return order


def _defaults() -> tuple[int, int]:
    plain = sqlite3.connect(":memory:")
    try:
        return (plain.execute("PRAGMA cache_size").fetchone()[0],
                plain.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    finally:
        plain.close()


def _open(path: Path, variant: str) -> SqliteCatalog:
    catalog = SqliteCatalog(path)
    if variant == "sqlite-defaults":
        cache, checkpoint = _defaults()
        catalog._db.execute(f"PRAGMA cache_size = {cache}")
        catalog._db.execute(f"PRAGMA wal_autocheckpoint = {checkpoint}")
    return catalog


def measure(rows: int, batch: int, slice_rows: int, seed: int, streams: int, folder: Path) -> dict[str, Any]:
    order = arrivals(rows, seed, streams)
    catalogs = {v: _open(folder / f"{v}.sqlite", v) for v in VARIANTS}
    slices: dict[str, list[float]] = {v: [] for v in VARIANTS}
    started = time.monotonic()
    try:
        for first in range(0, rows, slice_rows):
            numbers = order[first:first + slice_rows]
            # Built before the clock starts: only apply() is measured.
            records: list[InstanceRecord] = [
                msgspec.structs.replace(synthetic_record(i), received_at=1_700_000_000.0 + first + k)
                for k, i in enumerate(numbers)]
            for variant in VARIANTS:
                catalog = catalogs[variant]
                cpu = time.process_time()
                for start in range(0, len(records), batch):
                    catalog.apply(records[start:start + batch], {"w0-1-1": first + start})
                slices[variant].append((time.process_time() - cpu) / len(records) * 1e6)
            print(f"  {first + len(numbers):,} rows: " + ", ".join(
                f"{v} {slices[v][-1]:.1f} us" for v in VARIANTS) + f" ({time.monotonic() - started:.0f} s)",
                file=sys.stderr)
        settings = {v: {"cache_size": c._db.execute("PRAGMA cache_size").fetchone()[0],
                        "wal_autocheckpoint": c._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                        "page_size": c._db.execute("PRAGMA page_size").fetchone()[0]}
                    for v, c in catalogs.items()}
    finally:
        for catalog in catalogs.values():
            catalog.close()
    return {"slices_us_per_row": slices, "settings": settings,
            "mean_us_per_row": {v: statistics.fmean(s) for v, s in slices.items()}}


def render(report: dict[str, Any]) -> str:
    r = report["result"]
    slices = r["slices_us_per_row"]
    step = report["slice"]
    lines = [
        "# Index row cost as the SQLite index grows",
        "",
        f"Generated by `{report['command']}` on {report['started']}.",
        "",
        f"- Machine: {report['machine']}.",
        f"- Index: scpfleet {report['commit']}, `Catalog.apply` in batches of {report['batch']} records "
        f"(with the journal offset, as the indexer commits), storage {report['dir_fs']}; the records of "
        f"`bench.qrbench`'s synthetic archive, the studies in shuffled order (seed {report['seed']}), "
        f"{report['streams']} arriving at once with their instances interleaved.",
        "- Settings: " + "; ".join(
            f"`{v}` cache_size {s['cache_size']}, wal_autocheckpoint {s['wal_autocheckpoint']}, "
            f"page_size {s['page_size']}" for v, s in r["settings"].items()) + ".",
        "- Process CPU time per row of each slice; the two indexes grow side by side, slice by slice.",
        "",
        "| rows | node, us/row | SQLite defaults, us/row | node / defaults |",
        "|---:|---:|---:|---:|",
    ]
    for k, (a, b) in enumerate(zip(slices["node"], slices["sqlite-defaults"])):
        lines.append(f"| {k * step:,}-{min((k + 1) * step, report['rows']):,} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    m = r["mean_us_per_row"]
    lines += ["", f"Mean over all {report['rows']:,} rows: node {m['node']:.1f} us, SQLite defaults "
              f"{m['sqlite-defaults']:.1f} us ({m['node'] / m['sqlite-defaults']:.2f}x).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.indexcost",
        description="CPU per index row as the SQLite index grows, the node's writer settings beside "
                    "SQLite's defaults; write indexcost.md and indexcost.json.")
    parser.add_argument("--rows", type=positive_int, default=500_000, help="rows in each index (default 500000)")
    parser.add_argument("--batch", type=positive_int, default=160,
                        help="records per apply(), about what the indexer commits under load (default 160)")
    parser.add_argument("--slice", type=positive_int, default=100_000, metavar="ROWS",
                        help="rows per reported slice (default 100000)")
    parser.add_argument("--streams", type=positive_int, default=32,
                        help="studies arriving at once, their instances interleaved, as over that many "
                             "associations (default 32; 1: one study after the other)")
    parser.add_argument("--seed", type=int, default=1, help="the study order's seed (default 1)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the two indexes are built (default: a temporary folder, removed after)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="where indexcost.md and indexcost.json go (default bench/results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.dir is not None and not opts.dir.is_dir():
        build_parser().error(f"--dir {opts.dir}: not a folder")
    m = machine_info()
    started = m["date"]
    with tempfile.TemporaryDirectory(prefix="scpfleet-indexcost-", dir=opts.dir) as work:
        folder = Path(work)
        result = measure(opts.rows, opts.batch, opts.slice, opts.seed, opts.streams, folder)
        fs = fs_type(folder)
    report = {
        "command": command_text("python -m bench.indexcost", list(argv if argv is not None else sys.argv[1:]),
                                ("--out", "--dir")),
        "started": started,
        "machine": f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['system']}, Python {m['python']}, "
                   f"SQLite {sqlite3.sqlite_version}, load average {m['loadavg_start']} at the start", "commit": checkout_commit(REPO) or "unknown commit",
        "rows": opts.rows, "batch": opts.batch, "slice": opts.slice, "seed": opts.seed, "streams": opts.streams,
        "dir_fs": fs,
        "result": result,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "indexcost.json").write_text(json.dumps(report, indent=1) + "\n")
    (opts.out / "indexcost.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
