"""``python -m bench.compare``: scpfleet serve side by side with DCMTK, pynetdicom and Orthanc.

Theory of operation: one command builds the test data (bench.corpus: tiny instances,
512x512 16-bit CTs, 80 MB multi-frames; one set per client, every file its own SOP
Instance UID) in a temporary folder, then runs a matrix of *cells*. A cell is one load
(kind x concurrent associations), one client (DCMTK ``storescu``: one process, one
association each, sharing the files; or ``scpfleet load --files``: P processes x A
associations, the same count) and one server on a loopback port: ``scpfleet serve``
with 1 and N workers (N = CPUs) and durability ``none`` and ``fsync``, DCMTK
``storescp --fork`` (which never syncs: compare it with ``none``), pynetdicom's
``storescp`` and, for the tiny and CT loads driven by ``scpfleet load``, Orthanc from
Debian's package (which syncs each file by default).

Order: for each repeat, for each load, every server in turn (rotated by one each
repeat, so drift on a shared machine hits all servers alike). Each server is started
fresh, with empty storage, for its load; both clients run against it in turn (their
order swapped each repeat), the first one's stored files deleted before the second
starts; then it is stopped. After each run the stored files are counted: a cell passes
only when the client saw no failure and exactly the expected number of instances is
stored (nothing silently dropped). Wall time is the client's: ``scpfleet load``'s own
report (first association to last response; data preparation excluded) or, for
storescu, the processes' lifetime. A server that does not start or a client that errs
or overruns makes a failed cell with its reason; Ctrl-C (or SIGTERM) stops every
process this module started (each runs in its own process group) and writes nothing.

Output (``--out``, default bench/results): ``latest.md`` (median tables and ratios),
``latest.json`` (every cell, the medians and the machine) and ``latest.png`` (grouped
bars of instances/s). It never talks to anything but 127.0.0.1 and never writes a
machine path into its results.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

__all__ = ["main", "build_parser", "LOADS", "server_specs", "summarize", "render_markdown"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"

#: Every SCP advertises this Maximum Length (PS3.8 D.1): DCMTK's upper limit (storescp
#: -pdu accepts 4096..131072), so no server is held back by a smaller PDU than another.
MAX_PDU = 131072
#: Seconds a server may take to accept connections (spawning N interpreters on a busy box).
START_TIMEOUT_S = 60.0
#: Seconds a stopping server gets after SIGTERM before its process group is killed.
STOP_GRACE_S = 10.0
#: Seconds one client run may take (a hang ends the cell, not the benchmark).
CELL_TIMEOUT_S = 240.0
#: After the client ends, how long the stored-file count may take to reach the expected
#: number (every server answers only once its file is written; this absorbs fs lag).
SETTLE_S = 2.0
#: The size of one 80 MB multi-frame instance's pixel data.
BIG_BYTES = 80_000_000
_POLL_S = 0.05


# ---------------------------------------------------------------------------------------
# The matrix


@dataclass(frozen=True)
class Load:
    """A kind of instance and how many of them one cell sends (default, --quick)."""

    key: str
    label: str
    count: int
    quick: int


LOADS: dict[str, Load] = {
    "tiny": Load("tiny", "tiny (~2 kB)", 1000, 200),
    "ct": Load("ct", "CT 512x512x16 (~0.5 MB)", 300, 40),
    "big": Load("big", "multi-frame 80 MB", 8, 2),
}
ASSOCIATIONS = (1, 4, 16)
#: (load, associations, server or None for all) the default matrix leaves out, to stay
#: within ~25 minutes on 2 CPUs (--full runs them): 8 instances of 80 MB over 16
#: associations leave half of them idle, and Orthanc, which syncs file and index per
#: instance, takes ~50 ms an instance on one association (over a minute a cell).
DEFAULT_SKIP = {("big", 16, None), ("tiny", 1, "orthanc"), ("ct", 1, "orthanc")}


def in_matrix(load: str, associations: int, server: str, full: bool) -> bool:
    return full or not ({(load, associations, None), (load, associations, server)}
                        & DEFAULT_SKIP)
CLIENTS = ("storescu", "load")
CLIENT_LABELS = {"storescu": "DCMTK storescu", "load": "scpfleet load"}


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    kind: str  # scpfleet | storescp | pynetdicom | orthanc
    workers: int = 0
    durability: str = ""
    #: Which (load, client) cells this server takes part in (None: all).
    loads: tuple[str, ...] | None = None
    clients: tuple[str, ...] | None = None

    def takes(self, load: str, client: str) -> bool:
        return (self.loads is None or load in self.loads) and (
            self.clients is None or client in self.clients)


def server_specs(cpus: int) -> list[ServerSpec]:
    """The servers, in their base order; with one CPU the "N workers" ones are dropped."""
    specs = []
    for workers in dict.fromkeys((1, cpus)):
        for durability in ("none", "fsync"):
            specs.append(ServerSpec(f"scpfleet-{workers}w-{durability}",
                                    f"scpfleet {workers}w {durability}", "scpfleet",
                                    workers, durability))
    specs.append(ServerSpec("storescp", "storescp --fork", "storescp"))
    specs.append(ServerSpec("pynetdicom", "pynetdicom storescp", "pynetdicom"))
    specs.append(ServerSpec("orthanc", "Orthanc", "orthanc", loads=("tiny", "ct"),
                            clients=("load",)))
    return specs


def reference_key(cpus: int) -> str:
    """The scpfleet configuration the ratios are about: N workers, no syncing."""
    return f"scpfleet-{cpus}w-none"


# ---------------------------------------------------------------------------------------
# Processes


class Interrupted(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


_LIVE: set["_Proc"] = set()


class _Proc:
    """A child in its own process group, its output in log files."""

    def __init__(self, argv: Sequence[str], logs: Path, name: str, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, cwd=cwd, start_new_session=True)
        _LIVE.add(self)

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def _group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> None:
        """Signal the leader, give it ``grace`` seconds, then kill what is left of the
        group (storescp --fork children, the load's sender processes)."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            if self.wait(grace) is None:
                self._group(signal.SIGKILL)
                self.popen.wait()
        self._group(signal.SIGKILL)
        _LIVE.discard(self)

    def tail(self, chars: int = 600) -> str:
        text = ""
        for path in (self.err_path, self.out_path):
            try:
                text += path.read_text(errors="replace")[-chars:]
            except OSError:
                pass
        return text.strip()[-chars:]


def stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(grace=2.0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def free_port() -> int:
    """A port free on 127.0.0.1 now, for servers that cannot bind port 0 and say which."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# Servers


class CellError(Exception):
    """Why a cell failed (its words go into the table)."""


@dataclass
class Running:
    proc: _Proc
    port: int
    aec: str
    count: Callable[[], int]
    #: Removes what the server stored (None: it cannot be done behind its back).
    clear: Callable[[], None] | None = None

    def stop(self) -> None:
        self.proc.stop()


def _count_files(root: Path, suffix: str = "") -> int:
    """Files under ``root`` (recursive), not in or named like hidden entries."""
    n = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for name in names if not name.startswith(".") and name.endswith(suffix))
    return n


def _remove_files(root: Path, suffix: str = "") -> None:
    """Delete the files :func:`_count_files` counts (folders stay: a server may cache
    that they exist)."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.endswith(suffix):
                os.unlink(os.path.join(folder, name))


def _wait_listening(proc: _Proc, port: int | None, ready: Callable[[], int | None],
                    what: str) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CellError(f"{what} exited at start (status {proc.poll()}): {proc.tail(300)}")
        got = ready() if port is None else (port if _accepts(port) else None)
        if got:
            return got
        time.sleep(_POLL_S)
    raise CellError(f"{what} did not start in {START_TIMEOUT_S:.0f} s: {proc.tail(300)}")


def start_scpfleet(spec: ServerSpec, cell: Path, max_pdu: int) -> Running:
    storage = cell / "store"
    ready_file = cell / "ready.json"
    argv = [sys.executable, "-m", "workers.cli", "serve", "--host", HOST, "--port", "0",
            "--ready-file", ready_file, "--storage", storage, "--workers", spec.workers,
            "--durability", spec.durability, "--max-pdu", max_pdu,
            "--max-associations", 200, "--drain-timeout", 5, "--log-level", "warning"]
    proc = _Proc(argv, cell, "server", env=_env(), cwd=REPO)

    def ready() -> int | None:
        try:
            return int(json.loads(ready_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    port = _wait_listening(proc, None, ready, "scpfleet serve")
    return Running(proc, port, "SCPFLEET", lambda: _count_files(storage, ".dcm"),
                   lambda: _remove_files(storage, ".dcm"))


def start_storescp(spec: ServerSpec, cell: Path, max_pdu: int) -> Running:
    out = cell / "out"
    out.mkdir()
    tool = shutil.which("storescp")
    if tool is None:
        raise CellError("storescp not found (apt-get install dcmtk)")
    for _ in range(3):  # another process may take the free port before storescp binds it
        port = free_port()
        # storescp has no bind-address option: it listens on every interface.
        argv = [tool, "--fork", "-aet", "STORESCP", "-od", out, "+B", "+xa", "-dhl",
                "-pdu", max_pdu, port]
        proc = _Proc(argv, cell, "server", env=_env(TCP_NODELAY="1"))
        try:
            _wait_listening(proc, port, lambda: None, "storescp")
        except CellError as exc:
            proc.stop()
            if "already in use" in str(exc).lower():
                continue
            raise
        return Running(proc, port, "STORESCP", lambda: _count_files(out),
                       lambda: _remove_files(out))
    raise CellError("storescp lost the race for a free port three times")


#: pynetdicom's own storescp app (``python -m pynetdicom storescp``) with one change: its
#: AE refuses associations beyond ``maximum_associations`` (default 10, no flag to raise
#: it), which would make the 16-association cells fail; 64 lets them all in.
_PYNETDICOM_STORESCP = """\
import sys
from pynetdicom.apps.storescp import storescp as app
class AE(app.AE):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.maximum_associations = 64
app.AE = AE
sys.exit(app.main(sys.argv[1:]))
"""


def start_pynetdicom(spec: ServerSpec, cell: Path, max_pdu: int) -> Running:
    out = cell / "out"
    out.mkdir()
    for _ in range(3):
        port = free_port()
        argv = [sys.executable, "-c", _PYNETDICOM_STORESCP, port, "-ba", HOST,
                "-aet", "PYNETDICOM", "-od", out, "-pdu", max_pdu]
        proc = _Proc(argv, cell, "server", env=_env())
        try:
            _wait_listening(proc, port, lambda: None, "pynetdicom storescp")
        except CellError as exc:
            proc.stop()
            if "already in use" in str(exc).lower():
                continue
            raise
        return Running(proc, port, "PYNETDICOM", lambda: _count_files(out),
                       lambda: _remove_files(out))
    raise CellError("pynetdicom storescp lost the race for a free port three times")


def _orthanc_count(http_port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/statistics", timeout=10) as rsp:
        return int(json.load(rsp)["CountInstances"])


def start_orthanc(spec: ServerSpec, cell: Path, max_pdu: int) -> Running:
    tool = shutil.which("Orthanc")
    if tool is None:
        raise CellError("Orthanc not installed (apt-get install -y orthanc)")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "scpfleet-compare",
        "StorageDirectory": str(cell / "storage"),
        "IndexDirectory": str(cell / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "MaximumPduLength": max_pdu,
        "DicomScpTimeout": 60,
    }
    path = cell / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    proc = _Proc([tool, path], cell, "server", env=_env(), cwd=cell)

    def ready() -> int | None:
        if not _accepts(dicom_port):
            return None
        try:
            _orthanc_count(http_port)
        except (OSError, ValueError, KeyError):
            return None
        return dicom_port

    port = _wait_listening(proc, None, ready, "Orthanc")
    return Running(proc, port, "ORTHANC", lambda: _orthanc_count(http_port))


STARTERS = {"scpfleet": start_scpfleet, "storescp": start_storescp,
            "pynetdicom": start_pynetdicom, "orthanc": start_orthanc}


# ---------------------------------------------------------------------------------------
# Data


@dataclass
class Prepared:
    load: Load
    count: int
    folder: Path
    files: list[Path]
    bytes: int
    #: storescu's association profile file and name (None: no storescu here).
    profile: tuple[Path, str] | None = None


def prepare(load: Load, count: int, folder: Path) -> Prepared:
    """``count`` Part 10 files of ``load``'s kind in ``folder``, each a distinct instance
    (fresh UIDs on every call, so two sets never share an instance)."""
    from bench import corpus

    if load.key == "big":
        files = [corpus.make_large_file(folder / f"big_{i:03d}.dcm", BIG_BYTES, seed=i,
                                           unique=True) for i in range(count)]
    else:
        files = corpus.make_files(folder, {load.key: count})
    files = sorted(files)
    size = sum(f.stat().st_size for f in files)
    profile = None
    if shutil.which("storescu"):
        from bench.dcmtk import storescu_exact_profile

        path = folder.with_suffix(".storescu.cfg")
        profile = (path, storescu_exact_profile(files, path))
    return Prepared(load, count, folder, files, size, profile)


# ---------------------------------------------------------------------------------------
# Clients


@dataclass
class ClientRun:
    wall_s: float
    acknowledged: int | None  # instances the client saw stored (None: it does not say)
    failures: int
    error: str | None = None
    latency_ms: dict[str, float] | None = None


def load_shape(associations: int, cpus: int) -> tuple[int, int]:
    """(processes, associations per process) for ``scpfleet load``: as many processes
    as CPUs that divide ``associations`` evenly, so the total is exact."""
    processes = max(p for p in range(1, min(cpus, associations) + 1) if associations % p == 0)
    return processes, associations // processes


def run_load(data: Prepared, running: Running, associations: int, cell: Path, cpus: int,
             max_pdu: int, timeout: float) -> ClientRun:
    processes, per = load_shape(associations, cpus)
    report = cell / "load.json"
    argv = [sys.executable, "-m", "bench.cli", "load", HOST, running.port, "--aec",
            running.aec, "--processes", processes, "--associations", per, "--count",
            data.count, "--max-pdu", max_pdu, "--timeout", 60, "--report", report,
            "--no-progress", "--files", data.folder]
    proc = _Proc(argv, cell, "client", env=_env(), cwd=REPO)
    try:
        rc = proc.wait(timeout)
        if rc is None:
            proc.stop(signal.SIGINT)  # the load stops its senders and still reports
            raise CellError(f"scpfleet load ran over {timeout:.0f} s")
    finally:
        proc.stop()
    try:
        summary = json.loads(report.read_text())
    except (OSError, ValueError):
        raise CellError(f"scpfleet load exited {rc} without a report: {proc.tail(300)}")
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


def run_storescu(data: Prepared, running: Running, associations: int, cell: Path,
                 max_pdu: int, timeout: float) -> ClientRun:
    tool = shutil.which("storescu")
    if tool is None or data.profile is None:
        raise CellError("storescu not found (apt-get install dcmtk)")
    shares = [s for i in range(associations) if (s := data.files[i::associations])]
    procs: list[_Proc] = []
    try:
        start = time.perf_counter()
        for i, share in enumerate(shares):
            argv = [tool, "-aet", "STORESCU", "-aec", running.aec, "-pdu", max_pdu,
                    "-xf", *data.profile, "-to", 30, "-ta", 30, "-td", 60,
                    HOST, running.port, *share]
            procs.append(_Proc(argv, cell, f"storescu-{i}", env=_env(TCP_NODELAY="1")))
        deadline = time.monotonic() + timeout
        codes = [p.wait(deadline - time.monotonic()) for p in procs]
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            p.stop(grace=2.0)
    if any(c is None for c in codes):
        raise CellError(f"storescu ran over {timeout:.0f} s")
    bad = [(p, c) for p, c in zip(procs, codes) if c != 0]
    error = None
    if bad:
        error = (f"{len(bad)} of {len(procs)} storescu exited non-zero (status {bad[0][1]}): "
                 f"{bad[0][0].tail(200)}")
    return ClientRun(wall, None, 0, error)


# ---------------------------------------------------------------------------------------
# One cell


def _scrub(text: str, work: Path) -> str:
    """No machine paths in results: the work folder and the repository become names."""
    return " ".join(text.replace(str(work), "<work>").replace(str(REPO), "<repo>").split())


def _count_now(running: Running) -> int:
    try:
        return running.count()
    except (OSError, ValueError, KeyError) as exc:
        raise CellError(f"cannot count what the server stored: {exc}") from None


def _count_stored(running: Running, expected: int) -> int:
    """What the server holds now, waiting up to SETTLE_S for ``expected``."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        stored = _count_now(running)
        if stored >= expected or time.monotonic() > deadline:
            return stored
        time.sleep(_POLL_S)


def _new_record(spec: ServerSpec, data: Prepared, associations: int, client: str,
                repeat: int) -> dict[str, Any]:
    return {
        "repeat": repeat, "load": data.load.key, "associations": associations,
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
            raise CellError(f"cannot remove the previous run's files: {exc}") from None
    before = _count_now(running)
    if client == "load":
        run = run_load(data, running, record["associations"], cell, opts.workers,
                       opts.max_pdu, opts.cell_timeout)
    else:
        run = run_storescu(data, running, record["associations"], cell, opts.max_pdu,
                           opts.cell_timeout)
    stored = _count_stored(running, before + data.count) - before
    if running.proc.poll() is not None:
        run.error = run.error or (f"server exited during the run (status "
                                  f"{running.proc.poll()}): {running.proc.tail(200)}")
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
            running = STARTERS[spec.kind](spec, cell, opts.max_pdu)
        except CellError as exc:
            for record in records:
                record["reason"] = str(exc)
            return records
        started = round(time.monotonic() - t0, 3)
        for record, client in zip(records, clients):
            record["start_s"] = started
            try:
                _run_client(record, running, datasets[(load, client)], client, cell, opts)
            except CellError as exc:
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


# ---------------------------------------------------------------------------------------
# The run


def _plan(opts: argparse.Namespace, specs: list[ServerSpec]) -> list[tuple[str, int]]:
    cells = []
    for load in opts.loads:
        for assoc in opts.associations:
            if any(s.takes(load, c) and in_matrix(load, assoc, s.key, opts.full)
                   for s in specs for c in opts.clients):
                cells.append((load, assoc))
    return cells


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
    plan = _plan(opts, specs)
    per_repeat = sum(1 for load, assoc in plan for s in specs for c in opts.clients
                     if s.takes(load, c) and in_matrix(load, assoc, s.key, opts.full))
    records: list[dict[str, Any]] = []
    seq = itertools.count()
    for repeat in range(opts.repeat):
        shift = repeat % len(specs)
        order = specs[shift:] + specs[:shift]
        clients = list(opts.clients) if repeat % 2 == 0 else list(reversed(opts.clients))
        done = 0
        for load, assoc in plan:
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


def summarize(records: list[dict[str, Any]], cpus: int) -> list[dict[str, Any]]:
    """Medians per (load, associations, client, server) over the passing repeats, with
    the reference (N workers, none) over each peer."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["load"], rec["associations"], rec["client"], rec["server"]),
                          []).append(rec)
    rows = []
    for (load, assoc, client, server), recs in groups.items():
        good = [r for r in recs if r["ok"]]
        row: dict[str, Any] = {
            "load": load, "associations": assoc, "client": client, "server": server,
            "runs": len(recs), "passed": len(good),
            "reasons": sorted({r["reason"] for r in recs if r["reason"]}),
        }
        for key in ("instances_per_s", "mb_per_s", "wall_s"):
            values = [r[key] for r in good]
            row[key] = round(statistics.median(values), 3) if values else None
            row[key + "_range"] = [min(values), max(values)] if values else None
        for pct in ("p50", "p99"):
            values = [r["latency_ms"][pct] for r in good if r["latency_ms"]]
            row[f"latency_{pct}_ms"] = round(statistics.median(values), 3) if values else None
        rows.append(row)
    ref = reference_key(cpus)
    by_key = {(r["load"], r["associations"], r["client"], r["server"]): r for r in rows}
    for row in rows:
        mine = by_key.get((row["load"], row["associations"], row["client"], ref))
        row["ratio"] = None
        if mine and mine["instances_per_s"] and row["instances_per_s"]:
            row["ratio"] = round(mine["instances_per_s"] / row["instances_per_s"], 3)
    return rows


# ---------------------------------------------------------------------------------------
# Machine and versions


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import tomllib

        version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        version = None
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    dcmtk = _first_line(["storescp", "--version"]) if shutil.which("storescp") else None
    orthanc = _first_line(["Orthanc", "--version"]) if shutil.which("Orthanc") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "scpfleet": version,
        "commit": commit,
        "dcmtk": dcmtk.strip("$ ").replace("dcmtk: ", "") if dcmtk else None,
        "pynetdicom": _package("pynetdicom"),
        "pydicom": _package("pydicom"),
        "orthanc": orthanc,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------
# Reports


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell_text(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return ""
    if not row["passed"]:
        return "FAILED"
    text = _num(row[key])
    if row["passed"] < row["runs"]:
        text += f" ({row['runs'] - row['passed']}/{row['runs']} failed)"
    return text


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    rows = result["summary"]
    cpus = cfg["workers"]
    ref = reference_key(cpus)
    specs = [s for s in server_specs(cpus) if s.key in cfg["servers"]]
    labels = {s.key: s.label for s in specs}
    main_specs = [s for s in specs if s.kind != "orthanc"]
    by = {(r["load"], r["associations"], r["client"], r["server"]): r for r in rows}
    combos = sorted({(r["load"], r["associations"], r["client"]) for r in rows},
                    key=lambda c: (list(LOADS).index(c[0]), c[2] != "storescu", c[1]))
    out: list[str] = []
    w = out.append
    w("# scpfleet serve side by side")
    w("")
    w(f"Generated by `{cfg['command']}` on {m['date']}.")
    w("")
    w(f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['system']}; "
      f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')} "
      "(shared machine: client and server share the same CPUs).")
    w(f"- Versions: scpfleet {m['scpfleet']} ({m['commit']}), Python {m['python']}, "
      f"DCMTK {m['dcmtk']}, pynetdicom {m['pynetdicom']} (pydicom {m['pydicom']}), "
      f"{m['orthanc'] or 'Orthanc: not installed'}.")
    counts = ", ".join(f"{LOADS[k].label}: {n} instances ({_num(b / 1e6)} MB)"
                       for k, (n, b) in cfg["loads"].items())
    w(f"- Loads (distinct files, one SOP Instance UID each): {counts}.")
    w(f"- {cfg['repeat']} repeat(s), interleaved: each repeat runs every load, client and "
      "server in turn (server order rotated each repeat). Each (load, associations, server) "
      "starts the server fresh with empty storage on 127.0.0.1 and stops it afterwards; both "
      "clients run against it in turn (order swapped each repeat), each with its own files, "
      "the first client's stored files deleted before the second starts. Numbers are "
      "medians of the passing repeats.")
    w(f"- Every SCP advertises a {cfg['max_pdu']}-byte maximum PDU (DCMTK's limit). Clients: "
      "DCMTK `storescu` runs one process (one association) per concurrent association, each "
      "with its share of the files, TCP_NODELAY=1, timed from the first start to the last "
      "exit; `scpfleet load --files` runs P processes x A associations (P x A = the column "
      "Assoc.), timed by its own report (first association to last response).")
    w("- A cell passes only if the client reported no failure and the server stored exactly "
      "the expected number of files (counted on disk after the run).")
    w("- `storescp --fork` never syncs to disk: compare it with scpfleet's `none`. "
      "Ratios are scpfleet serve with "
      f"{cpus} workers and durability `none` ({labels.get(ref, ref)}) over the peer, same load, "
      "same client; every load sends the same bytes to every server, so the instances/s "
      "ratio is also the MB/s ratio.")
    w("")

    peers = [s for s in main_specs if s.kind in ("storescp", "pynetdicom")]
    if ref in labels and peers:
        w(f"## Key ratios: {labels[ref]} over each peer (same load, same client)")
        w("")
        assocs = sorted({c[1] for c in combos})
        span = " / ".join(str(a) for a in assocs)
        w("| Load | Client | " + " | ".join(f"vs {labels[p.key]} ({span} assoc.)"
                                        for p in peers) + " |")
        w("|---|---|" + "|".join(["---"] * len(peers)) + "|")
        for load in LOADS:
            for client in CLIENTS:
                if not any(c[0] == load and c[2] == client for c in combos):
                    continue
                cells = []
                for p in peers:
                    cells.append(" / ".join(
                        _ratio((by.get((load, a, client, p.key)) or {}).get("ratio"))
                        for a in assocs))
                w(f"| {LOADS[load].label} | {CLIENT_LABELS[client]} | " + " | ".join(cells)
                  + " |")
        w("")

    def table(metric: str, title: str) -> None:
        w(f"## {title}")
        w("")
        head = ["Load", "Assoc.", "Client"] + [labels[s.key] for s in main_specs]
        head += [f"{labels.get(ref, ref)} / {labels[s.key]}" for s in peers]
        w("| " + " | ".join(head) + " |")
        w("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
        for load, assoc, client in combos:
            line = [LOADS[load].label, str(assoc), CLIENT_LABELS[client]]
            line += [_cell_text(by.get((load, assoc, client, s.key)), metric) for s in main_specs]
            line += [_ratio((by.get((load, assoc, client, s.key)) or {}).get("ratio"))
                     for s in peers]
            w("| " + " | ".join(line) + " |")
        w("")

    table("instances_per_s", "Instances per second (median)")
    table("mb_per_s", "MB/s (median; 1 MB = 10^6 bytes of Part 10 files)")

    w("## C-STORE latency with scpfleet load (median of repeats; ms, p50 / p99)")
    w("")
    w("| Load | Assoc. | " + " | ".join(labels[s.key] for s in main_specs) + " |")
    w("|---|---|" + "|".join(["---:"] * len(main_specs)) + "|")
    for load, assoc, client in combos:
        if client != "load":
            continue
        cells = []
        for s in main_specs:
            r = by.get((load, assoc, client, s.key))
            cells.append("" if not r or r["latency_p99_ms"] is None else
                         f"{_num(r['latency_p50_ms'])} / {_num(r['latency_p99_ms'])}")
        w(f"| {LOADS[load].label} | {assoc} | " + " | ".join(cells) + " |")
    w("")

    w("## Orthanc (a real PACS) as the target, driven by scpfleet load")
    w("")
    orthanc = [r for r in rows if r["server"] == "orthanc"]
    if "orthanc" not in cfg["servers"]:
        w("Not run (left out with --servers).")
    elif not orthanc:
        w("No Orthanc cells in this matrix (it takes the tiny and CT loads with scpfleet load).")
    else:
        w(f"{m['orthanc'] or 'Orthanc'} from Debian's package, default settings (it syncs "
          "every stored file: SyncStorageArea) but for a temporary storage and index folder, "
          "loopback DICOM/HTTP ports, no plugins, DicomAlwaysAllowStore, "
          f"no called-AE check, {cfg['max_pdu']}-byte PDU. The stored count is read from its "
          "REST API (/statistics).")
        w("")
        fs = f"scpfleet-{cpus}w-fsync"
        w(f"| Load | Assoc. | Orthanc inst/s | Orthanc MB/s | failures | "
          f"{labels.get(fs, fs)} inst/s | {labels.get(ref, ref)} inst/s |")
        w("|---|---|---:|---:|---|---:|---:|")
        for r in sorted(orthanc, key=lambda r: (list(LOADS).index(r["load"]), r["associations"])):
            key = (r["load"], r["associations"], r["client"])
            fails = "none" if r["passed"] == r["runs"] else (
                f"{r['runs'] - r['passed']}/{r['runs']} runs failed")
            w(f"| {LOADS[r['load']].label} | {r['associations']} | "
              f"{_cell_text(r, 'instances_per_s')} | {_cell_text(r, 'mb_per_s')} | {fails} | "
              f"{_cell_text(by.get(key + (fs,)), 'instances_per_s')} | "
              f"{_cell_text(by.get(key + (ref,)), 'instances_per_s')} |")
    w("")

    w("## Failures")
    w("")
    failed = [r for r in result["cells"] if not r["ok"]]
    if not failed:
        total = len(result["cells"])
        w(f"None: all {total} cells stored exactly the expected files with no failed C-STORE.")
    else:
        w(f"{len(failed)} of {len(result['cells'])} cells failed:")
        w("")
        for r in failed:
            w(f"- repeat {r['repeat'] + 1}, {r['load']} x{r['associations']}, "
              f"{CLIENT_LABELS[r['client']]} -> {labels.get(r['server'], r['server'])}: "
              f"{r['reason']}")
    w("")
    return "\n".join(out)


def render_chart(result: dict[str, Any], path: Path) -> str | None:
    """Grouped bars of median instances/s: one panel per (client, load), bars per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]'): no chart"
    rows = result["summary"]
    cpus = result["config"]["workers"]
    specs = [s for s in server_specs(cpus) if s.key in result["config"]["servers"]]
    loads = [k for k in LOADS if any(r["load"] == k for r in rows)]
    clients = [c for c in CLIENTS if any(r["client"] == c for r in rows)]
    if not loads or not clients:
        return "nothing to chart"
    by = {(r["load"], r["associations"], r["client"], r["server"]): r for r in rows}
    width_in = max(5.2 * len(loads), 9.0)  # room for the legend below one panel
    fig, axes = plt.subplots(len(clients), len(loads), squeeze=False,
                             figsize=(width_in, 3.8 * len(clients) + 0.8))
    colors = plt.get_cmap("tab10").colors
    for i, client in enumerate(clients):
        for j, load in enumerate(loads):
            ax = axes[i][j]
            assocs = sorted({r["associations"] for r in rows
                             if r["load"] == load and r["client"] == client})
            present = [s for s in specs if any((load, a, client, s.key) in by for a in assocs)]
            width = 0.8 / max(1, len(present))
            for k, spec in enumerate(present):
                xs, ys, lo, hi = [], [], [], []
                for n, assoc in enumerate(assocs):
                    r = by.get((load, assoc, client, spec.key))
                    if not r or r["instances_per_s"] is None:
                        continue
                    xs.append(n + (k - (len(present) - 1) / 2) * width)
                    ys.append(r["instances_per_s"])
                    low, high = r["instances_per_s_range"]
                    lo.append(r["instances_per_s"] - low)
                    hi.append(high - r["instances_per_s"])
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=spec.label,
                       color=colors[specs.index(spec) % len(colors)])
            ax.set_xticks(range(len(assocs)), [f"{a} assoc." for a in assocs])
            ax.set_title(f"{LOADS[load].label}\nclient: {CLIENT_LABELS[client]}", fontsize=9)
            ax.set_ylabel("instances/s (median)")
            ax.grid(axis="y", alpha=0.3)
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 7 if width_in > 12 else 4),
               fontsize=8)
    fig.suptitle("scpfleet serve vs DCMTK storescp --fork, pynetdicom storescp, Orthanc\n"
                 f"{result['machine']['cpus']} CPUs, {result['config']['repeat']} repeat(s); "
                 "bars: median instances/s, whiskers: min-max", fontsize=10)
    fig.tight_layout(rect=(0, 0.09 if width_in <= 12 else 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------
# Command line


def _choice_list(allowed: Sequence[str], kind: Callable[[str], Any] = str):
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if str(v) not in allowed and v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(map(str, allowed))}")
        return list(dict.fromkeys(values))
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2), as the scpfleet commands have."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    servers = [s.key for s in server_specs(cpus)]
    parser = _Parser(
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
    parser.add_argument("--repeat", type=_positive, default=3, metavar="N",
                        help="repeats of the whole matrix (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where latest.md/json/png go (default bench/results)")
    parser.add_argument("--servers", type=_choice_list(servers), default=servers,
                        metavar="LIST", help="comma-separated servers (default: all)")
    parser.add_argument("--loads", type=_choice_list(list(LOADS)), default=list(LOADS),
                        metavar="LIST", help="comma-separated loads (default: all)")
    parser.add_argument("--associations", type=_choice_list(
        [str(a) for a in range(1, 257)], int), default=list(ASSOCIATIONS), metavar="LIST",
        help="comma-separated concurrent associations (default 1,4,16)")
    parser.add_argument("--clients", type=_choice_list(CLIENTS), default=list(CLIENTS),
                        metavar="LIST", help="comma-separated clients (default: storescu,load)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, metavar="S",
                        help=f"seconds one client run may take (default {CELL_TIMEOUT_S:.0f})")
    return parser


def _command_text(argv: Sequence[str]) -> str:
    """The command as run, less --out (a machine path)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if arg.startswith("--out="):
            continue
        shown.append(arg)
    return " ".join(["python -m bench.compare", *shown])


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
        if not _plan(opts, specs):
            print("nothing to run: no server takes these loads and clients", file=sys.stderr)
            return 2
        datasets = {}
        for key in opts.loads:
            load = LOADS[key]
            count = load.quick if opts.quick else load.count
            for client in opts.clients:
                print(f"preparing {count} {load.label} files for {client} ...",
                      file=sys.stderr, flush=True)
                datasets[(key, client)] = prepare(load, count,
                                                  opts.work / "data" / f"{key}-{client}")
        records = run_matrix(opts, specs, datasets)
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result = {
            "machine": machine,
            "config": {
                "command": _command_text(argv),
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
        stop_all()
        shutil.rmtree(opts.work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
