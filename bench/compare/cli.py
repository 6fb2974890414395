"""``python -m bench.compare``'s command line: options, the run from start to finish.

Theory of operation: :func:`main` parses the options (one-line usage errors, status 2),
prepares the files, runs the matrix (bench.compare.run), writes latest.json, latest.png
and latest.md to ``--out`` and prints the markdown. Ctrl-C or SIGTERM stops every
process the run started (each runs in its own process group) and writes nothing; the
temporary folder goes in every case. Exit status 1 if any cell failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import OneLineParser, choice_list, positive_int
from bench.compare.matrix import ASSOCIATIONS, CLIENTS, LOADS, plan, server_specs
from bench.compare.report import render_chart, render_markdown, summarize
from bench.compare.run import CELL_TIMEOUT_S, LIVE, prepare_data, run_matrix
from bench.machine import command_text, machine_info
from bench.servers import MAX_PDU

__all__ = ["main", "build_parser", "DEFAULT_OUT"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"


class Interrupted(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def build_parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    servers = [s.key for s in server_specs(cpus)]
    parser = OneLineParser(
        prog="python -m bench.compare",
        description="Benchmark scpfleet serve side by side with DCMTK storescp --fork, "
        "pynetdicom's storescp and Orthanc, with DCMTK storescu and scpfleet load as "
        "clients; write latest.md, latest.json and latest.png.",
        epilog=f"servers: {', '.join(servers)}. loads: {', '.join(LOADS)}.")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: " + ", ".join(f"{l.key} {l.quick}" for l in
                                                         LOADS.values()) + " instances a cell")
    parser.add_argument("--full", action="store_true",
                        help="also the cells the default leaves out (80 MB x 16 "
                        "associations; Orthanc on 1 association)")
    parser.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="repeats of the whole matrix (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where latest.md/json/png go (default bench/results)")
    parser.add_argument("--servers", type=choice_list(servers), default=servers,
                        metavar="LIST", help="comma-separated servers (default: all)")
    parser.add_argument("--loads", type=choice_list(list(LOADS)), default=list(LOADS),
                        metavar="LIST", help="comma-separated loads (default: all)")
    parser.add_argument("--associations", type=choice_list(
        [str(a) for a in range(1, 257)], int), default=list(ASSOCIATIONS), metavar="LIST",
        help="comma-separated concurrent associations (default 1,4,16)")
    parser.add_argument("--clients", type=choice_list(CLIENTS), default=list(CLIENTS),
                        metavar="LIST", help="comma-separated clients (default: storescu,load)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, metavar="S",
                        help=f"seconds one client run may take (default {CELL_TIMEOUT_S:.0f})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    opts.workers = os.cpu_count() or 1
    opts.max_pdu = MAX_PDU
    specs = [s for s in server_specs(opts.workers) if s.key in opts.servers]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    opts.work = Path(tempfile.mkdtemp(prefix="scpfleet-compare-"))
    started = time.monotonic()
    try:
        machine = machine_info()
        if not plan(opts.loads, opts.associations, opts.clients, specs, opts.full):
            print("nothing to run: no server takes these loads and clients", file=sys.stderr)
            return 2
        datasets = prepare_data(opts)
        records = run_matrix(opts, specs, datasets)
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result = {
            "machine": machine,
            "config": {
                "command": command_text("python -m bench.compare", argv, ("--out",)),
                "repeat": opts.repeat, "quick": opts.quick, "full": opts.full,
                "workers": opts.workers, "max_pdu": opts.max_pdu,
                "servers": [s.key for s in specs], "clients": opts.clients,
                "associations": opts.associations,
                "loads": {k: [d.count, d.bytes] for (k, _), d in datasets.items()},
                "elapsed_s": round(time.monotonic() - started, 1),
            },
            "cells": records,
            "summary": summarize(records, opts.workers),
        }
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
        chart_note = render_chart(result, opts.out / "latest.png")
        text = render_markdown(result)
        if chart_note:
            text += f"\n(No chart: {chart_note}.)\n"
        else:
            text += "\n![instances/s per load and server](latest.png)\n"
        (opts.out / "latest.md").write_text(text)
        print(text)
        failed = sum(1 for r in records if not r["ok"])
        print(f"{len(records)} cells, {failed} failed, {time.monotonic() - started:.0f} s; "
              f"results in {opts.out}", file=sys.stderr)
        return 1 if failed else 0
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: every server and client stopped; no results written",
              file=sys.stderr)
        return 130
    finally:
        LIVE.stop_all()
        shutil.rmtree(opts.work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
