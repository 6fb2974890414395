"""Running ``bench.compare``'s matrix: one server start per cell, its clients, the checks.

Theory of operation: for each repeat, for each (load, associations), every server in
turn (rotated by one each repeat, so drift on a shared machine hits all servers alike).
Each server is started fresh, with empty storage (bench.servers), for its load; every
client that takes part runs against it in turn (their order swapped each repeat), the
first one's stored files deleted before the second starts; then it is stopped, its whole
process group killed. After each client run the stored files are counted: a record
passes only when the client saw no failure and exactly the expected number of instances
is stored (nothing silently dropped). Wall time is the client's (bench.clients). A
server that does not start or a client that errs or overruns makes a failed record with
its reason, scrubbed of machine paths. Every process started here is registered in
:data:`LIVE`, which the command line stops on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import servers
from bench.clients import Prepared, prepare, run_load, run_storescu
from bench.compare.matrix import LOADS, ServerSpec, in_matrix, plan
from bench.procs import Registry
from bench.servers import REPO, Running, RunError

__all__ = ["LIVE", "CELL_TIMEOUT_S", "prepare_data", "run_server", "run_matrix"]

#: Seconds one client run may take (a hang ends the cell, not the benchmark).
CELL_TIMEOUT_S = 240.0
#: Every process group this benchmark started and has not stopped yet.
LIVE = Registry()


def prepare_data(opts: argparse.Namespace) -> dict[tuple[str, str], Prepared]:
    """One set of files per (load, client), under ``opts.work``."""
    datasets = {}
    for key in opts.loads:
        load = LOADS[key]
        count = load.quick if opts.quick else load.count
        for client in opts.clients:
            print(f"preparing {count} {load.label} files for {client} ...",
                  file=sys.stderr, flush=True)
            datasets[(key, client)] = prepare(key, count, opts.work / "data" / f"{key}-{client}")
    return datasets


def _scrub(text: str, work: Path) -> str:
    """No machine paths in results: the work folder and the repository become names."""
    return " ".join(text.replace(str(work), "<work>").replace(str(REPO), "<repo>").split())


def _new_record(spec: ServerSpec, data: Prepared, associations: int, client: str,
                repeat: int) -> dict[str, Any]:
    return {
        "repeat": repeat, "load": data.kind, "associations": associations,
        "client": client, "server": spec.key, "expected": data.count, "ok": False,
        "reason": None, "stored": None, "acknowledged": None, "failures": None,
        "wall_s": None, "instances_per_s": None, "mb_per_s": None, "latency_ms": None,
        "start_s": None, "loadavg": round(os.getloadavg()[0], 2),
    }


def _run_client(record: dict[str, Any], running: Running, data: Prepared, client: str,
                cell: Path, opts: argparse.Namespace) -> None:
    """One client run against a running server; fills ``record``."""
    if running.clear is not None:
        try:
            running.clear()  # the previous client's files: no dirty pages left to flush
        except OSError as exc:
            raise RunError(f"cannot remove the previous run's files: {exc}") from None
    before = running.count_now()
    if client == "load":
        run = run_load(data, running, record["associations"], cell, opts.workers,
                       opts.max_pdu, opts.cell_timeout, LIVE)
    else:
        run = run_storescu(data, running, record["associations"], cell, opts.max_pdu,
                           opts.cell_timeout, LIVE)
    stored = running.count_stored(before + data.count) - before
    if running.proc.poll() is not None:
        run.error = run.error or (f"server exited during the run (status "
                                  f"{running.proc.poll()}): {running.tail(200)}")
    record.update(
        stored=stored, acknowledged=run.acknowledged,
        failures=max(run.failures, data.count - stored), wall_s=round(run.wall_s, 4),
        instances_per_s=round(data.count / run.wall_s, 2),
        mb_per_s=round(data.bytes / 1e6 / run.wall_s, 2), latency_ms=run.latency_ms,
    )
    if run.error:
        record["reason"] = run.error
    elif stored != data.count:
        record["reason"] = f"stored {stored} files, expected {data.count}"
    else:
        record["ok"] = True


def run_server(spec: ServerSpec, load: str, associations: int, clients: Sequence[str],
               datasets: dict[tuple[str, str], Prepared], cell: Path, repeat: int,
               opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Start ``spec`` once, run each client against it (each with its own files), stop
    it; one record per client. A server that does not start fails every record."""
    records = [_new_record(spec, datasets[(load, c)], associations, c, repeat)
               for c in clients]
    cell.mkdir(parents=True)
    running = None
    try:
        t0 = time.monotonic()
        try:
            launch = servers.Launch(cell, opts.max_pdu, registry=LIVE)
            running = servers.start(spec.kind, launch, servers.Node(
                workers=spec.workers, durability=spec.durability))
        except RunError as exc:
            for record in records:
                record["reason"] = str(exc)
            return records
        started = round(time.monotonic() - t0, 3)
        for record, client in zip(records, clients):
            record["start_s"] = started
            try:
                _run_client(record, running, datasets[(load, client)], client, cell, opts)
            except RunError as exc:
                record["reason"] = str(exc)
            if running.proc.poll() is not None:
                break  # the rest cannot run; say so below
        for record in records:
            if record["stored"] is None and not record["reason"]:
                record["reason"] = "not run: the server had exited"
    finally:
        if running is not None:
            running.stop()
        shutil.rmtree(cell, ignore_errors=True)
        for record in records:
            if record["reason"]:
                record["reason"] = _scrub(record["reason"], opts.work)[:400]
    return records


def _progress(i: int, total: int, rec: dict[str, Any]) -> None:
    head = (f"[{rec['repeat'] + 1}:{i}/{total}] {rec['load']} x{rec['associations']} "
            f"{rec['client']} -> {rec['server']}:")
    if rec["ok"]:
        line = (f"{rec['expected']} in {rec['wall_s']:.2f} s, {rec['instances_per_s']:,.1f} "
                f"inst/s, {rec['mb_per_s']:,.1f} MB/s")
    else:
        line = f"FAILED: {rec['reason']}"
    print(f"{head} {line}", file=sys.stderr, flush=True)


def run_matrix(opts: argparse.Namespace, specs: list[ServerSpec],
               datasets: dict[tuple[str, str], Prepared]) -> list[dict[str, Any]]:
    """Every repeat runs every (load, associations); inside it every server in turn
    (rotated by one each repeat), each started once for its clients (their order
    swapped each repeat, so neither always goes first)."""
    cells = plan(opts.loads, opts.associations, opts.clients, specs, opts.full)
    per_repeat = sum(1 for load, assoc in cells for s in specs for c in opts.clients
                     if s.takes(load, c) and in_matrix(load, assoc, s.key, opts.full))
    records: list[dict[str, Any]] = []
    seq = itertools.count()
    for repeat in range(opts.repeat):
        shift = repeat % len(specs)
        order = specs[shift:] + specs[:shift]
        clients = list(opts.clients) if repeat % 2 == 0 else list(reversed(opts.clients))
        done = 0
        for load, assoc in cells:
            for spec in order:
                mine = [c for c in clients if spec.takes(load, c)]
                if not mine or not in_matrix(load, assoc, spec.key, opts.full):
                    continue
                cell = opts.work / "cells" / f"{next(seq):05d}"
                for rec in run_server(spec, load, assoc, mine, datasets, cell, repeat, opts):
                    records.append(rec)
                    done += 1
                    _progress(done, per_repeat, rec)
    return records
