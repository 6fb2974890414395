"""The files a benchmark sends and the clients that send them.

Theory of operation: :func:`prepare` writes a load's Part 10 files once (bench.corpus:
tiny instances, 512x512 16-bit CTs, 80 MB multi-frames; every file its own SOP Instance
UID, fresh on every call) with the storescu association profile that sends each file as
stored. Two clients send them to a :class:`~bench.servers.Running` server:
:func:`run_storescu` starts one DCMTK ``storescu`` process per association (each with its
share of the files, TCP_NODELAY=1) and times them from the first start to the last exit;
:func:`run_load` runs ``scpfleet load --files`` (P processes x A associations) and takes
its own report. A client that errs comes back as :attr:`ClientRun.error`; one that
overruns its time raises :class:`~bench.servers.RunError` after its process group is
killed. Neither counts what the server stored: the caller does.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus
from bench.dcmtk import NODELAY_ENV, dcmtk_tool, storescu_exact_profile
from bench.procs import ProcessGroup, Registry
from bench.servers import HOST, REPO, Running, RunError, python_env

__all__ = ["BIG_BYTES", "Prepared", "prepare", "ClientRun", "load_shape", "load_report",
           "load_problems", "run_load", "run_storescu"]

#: The size of one 80 MB multi-frame instance's pixel data.
BIG_BYTES = 80_000_000


@dataclass
class Prepared:
    kind: str  # tiny | ct | big
    count: int
    folder: Path
    files: list[Path]
    bytes: int
    #: storescu's association profile file and name (None: no storescu here).
    profile: tuple[Path, str] | None = None


def prepare(kind: str, count: int, folder: Path) -> Prepared:
    """``count`` Part 10 files of ``kind`` (tiny, ct or big) in ``folder``, each a distinct
    instance (fresh UIDs on every call, so two sets never share an instance)."""
    if kind == "big":
        files = [corpus.make_large_file(folder / f"big_{i:03d}.dcm", BIG_BYTES, seed=i,
                                        unique=True) for i in range(count)]
    else:
        files = corpus.make_files(folder, {kind: count})
    files = sorted(files)
    size = sum(f.stat().st_size for f in files)
    profile = None
    if dcmtk_tool("storescu"):
        path = folder.with_suffix(".storescu.cfg")
        profile = (path, storescu_exact_profile(files, path))
    return Prepared(kind, count, folder, files, size, profile)


@dataclass
class ClientRun:
    wall_s: float
    acknowledged: int | None  # instances the client saw stored (None: it does not say)
    failures: int
    error: str | None = None
    latency_ms: dict[str, float] | None = None


def load_report(args: list[object], folder: Path, timeout_s: float, registry: Registry) -> dict[str, Any]:
    """Run ``scpfleet load`` with ``args`` (target and options, without ``--report``), its
    log and report in ``folder``; the report with ``exit_status`` added. Raises
    :class:`~bench.servers.RunError` when it overruns ``timeout_s`` or leaves no report."""
    report = folder / "load.json"
    argv = [sys.executable, "-m", "bench.cli", "load", *args, "--report", report, "--no-progress"]
    proc = ProcessGroup.logged(argv, folder, "load", env=python_env(), cwd=REPO, registry=registry)
    try:
        rc = proc.wait(timeout_s)
        if rc is None:
            raise RunError(f"scpfleet load ran over {timeout_s:.0f} s")
    finally:
        proc.stop()
    try:
        summary = json.loads(report.read_text())
    except (OSError, ValueError):
        raise RunError(f"scpfleet load exited {rc} without a report: {proc.log_tail(300)}") from None
    summary["exit_status"] = rc
    return summary


def load_problems(summary: dict[str, Any], stored: int) -> str | None:
    """Why a run of ``scpfleet load`` (its :func:`load_report`) failed, given the files
    the server holds afterwards; None when every C-STORE succeeded and exactly the
    acknowledged instances are stored."""
    problems = []
    if summary["exit_status"] != 0 or summary["failures"] or summary["errors"]:
        causes = {**summary["failures_by_status"], **summary["failures_by_cause"]}
        problems.append(f"load exit {summary['exit_status']}, {summary['failures']} failed "
                        f"{causes} {summary['errors']}")
    if stored != summary["instances"]:
        problems.append(f"{stored} files stored, {summary['instances']} acknowledged")
    return "; ".join(problems) or None


def load_shape(associations: int, cpus: int) -> tuple[int, int]:
    """(processes, associations per process) for ``scpfleet load``: as many processes
    as CPUs that divide ``associations`` evenly, so the total is exact."""
    processes = max(p for p in range(1, min(cpus, associations) + 1) if associations % p == 0)
    return processes, associations // processes


def run_load(data: Prepared, running: Running, associations: int, folder: Path, cpus: int,
             max_pdu: int, timeout: float, registry: Registry | None = None) -> ClientRun:
    processes, per = load_shape(associations, cpus)
    report = folder / "load.json"
    argv = [sys.executable, "-m", "bench.cli", "load", HOST, running.port, "--aec",
            running.aec, "--processes", processes, "--associations", per, "--count",
            data.count, "--max-pdu", max_pdu, "--timeout", 60, "--report", report,
            "--no-progress", "--files", data.folder]
    proc = ProcessGroup.logged(argv, folder, "client", env=python_env(), cwd=REPO,
                               registry=registry)
    try:
        rc = proc.wait(timeout)
        if rc is None:
            proc.stop(signal.SIGINT)  # the load stops its senders and still reports
            raise RunError(f"scpfleet load ran over {timeout:.0f} s")
    finally:
        proc.stop()
    try:
        summary = json.loads(report.read_text())
    except (OSError, ValueError):
        raise RunError(f"scpfleet load exited {rc} without a report: {proc.log_tail(300)}")
    error = None
    if rc != 0 or summary["failures"] or summary["errors"]:
        causes = {**summary["failures_by_status"], **summary["failures_by_cause"]}
        words = "; ".join(f"{k}: {v}" for k, v in causes.items())
        reasons = "; ".join(summary["failure_reasons"].values())
        error = (f"scpfleet load exit {rc}: {summary['failures']} failed"
                 + (f" ({words})" if words else "") + (f" {reasons}" if reasons else "")
                 + "".join(f"; {e}" for e in summary["errors"]))
    return ClientRun(summary["duration_s"], summary["instances"], summary["failures"], error,
                     summary["latency_ms"])


def run_storescu(data: Prepared, running: Running, associations: int, folder: Path,
                 max_pdu: int, timeout: float, registry: Registry | None = None) -> ClientRun:
    tool = dcmtk_tool("storescu")
    if tool is None or data.profile is None:
        raise RunError("storescu not found (apt-get install dcmtk)")
    shares = [s for i in range(associations) if (s := data.files[i::associations])]
    procs: list[ProcessGroup] = []
    env = python_env(None, **NODELAY_ENV)
    try:
        start = time.perf_counter()
        for i, share in enumerate(shares):
            argv = [tool, "-aet", "STORESCU", "-aec", running.aec, "-pdu", max_pdu,
                    "-xf", *data.profile, "-to", 30, "-ta", 30, "-td", 60,
                    HOST, running.port, *share]
            procs.append(ProcessGroup.logged(argv, folder, f"storescu-{i}", env=env,
                                             registry=registry))
        deadline = time.monotonic() + timeout
        codes = [p.wait(deadline - time.monotonic()) for p in procs]
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            p.stop(grace=2.0)
    if any(c is None for c in codes):
        raise RunError(f"storescu ran over {timeout:.0f} s")
    bad = [(p, c) for p, c in zip(procs, codes) if c != 0]
    error = None
    if bad:
        error = (f"{len(bad)} of {len(procs)} storescu exited non-zero (status {bad[0][1]}): "
                 f"{bad[0][0].log_tail(200)}")
    return ClientRun(wall, None, 0, error)
