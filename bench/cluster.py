"""A cluster on one machine: scpfleet nodes sharing a PostgreSQL index, behind HAProxy.

Theory of operation: the tests and the benchmarks build the same thing as
``scripts/cluster.sh``, on 127.0.0.1 and ephemeral ports: :class:`ClusterNode` runs one
``scpfleet serve`` in its own process group (its storage, ``--index`` the shared URL,
``--node-id``, ``--metrics-port`` for ``/health``, ``--proxy-protocol-from 127.0.0.1``)
and can be killed, stopped and started again on the same ports; :class:`Haproxy` renders
:func:`haproxy_config` -- the directives of ``deploy/haproxy.cfg`` for these ports -- and
runs ``haproxy`` in the foreground, reading its servers' states from its stats socket.
:func:`send_batch` runs one DCMTK ``storescu`` association and says, per file, what the
node answered; :class:`Load` keeps ``lanes`` of them busy with batches from one queue,
recording every batch (when it started, what was acknowledged, whether the association
was rejected). Nothing is retried: a test decides what a failure means.

Every process is in a :class:`~bench.procs.Registry`; :meth:`LocalCluster.close` stops
them all. Nothing here listens beyond 127.0.0.1 (HAProxy's frontend and stats socket
included).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.dcmtk import NODELAY_ENV, dcmtk_tool, storescu_exact_profile
from bench.procs import ProcessGroup, Registry
from bench.servers import HOST, REPO, python_env

__all__ = [
    "HaproxyServer",
    "haproxy_config",
    "Haproxy",
    "ClusterNode",
    "BatchResult",
    "send_batch",
    "Load",
    "LocalCluster",
    "ClusterError",
]

#: Health checks (deploy/haproxy.cfg): every second, down after two failures, up after
#: two successes; a node is out of rotation within about two seconds of failing.
CHECK_INTER_MS = 1000
CHECK_FALL = 2
CHECK_RISE = 2
#: A node stopping waits this long refusing associations before it stops listening:
#: longer than HAProxy takes to see /health fail (inter x fall plus a check's timeout).
DRAIN_DELAY_S = 4.0
_START_TIMEOUT_S = 60.0
_POLL_S = 0.05


class ClusterError(Exception):
    """Something of the cluster did not start or stop; the message says what."""


@dataclass(frozen=True)
class HaproxyServer:
    """One node as HAProxy sees it: its name, DICOM port and /health port."""

    name: str
    host: str
    port: int
    health_port: int


def haproxy_config(frontend: tuple[str, int], servers: Sequence[HaproxyServer], *,
                   stats_socket: str = "unix@haproxy.sock") -> str:
    """The HAProxy configuration of ``deploy/haproxy.cfg`` for these addresses (TCP mode,
    least connections, health checks on /health, PROXY v2 to the nodes)."""
    lines = [
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 4096",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    timeout connect 5s",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch 1",
        "",
        "frontend dicom",
        f"    bind {frontend[0]}:{frontend[1]}",
        "    default_backend scpfleet",
        "",
        "backend scpfleet",
        "    balance leastconn",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    default-server inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE} send-proxy-v2",
    ]
    lines += [f"    server {s.name} {s.host}:{s.port} check port {s.health_port}" for s in servers]
    return "\n".join(lines) + "\n"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Haproxy:
    """``haproxy`` in the foreground with :func:`haproxy_config` (module doc)."""

    def __init__(self, folder: Path, servers: Sequence[HaproxyServer], *, port: int = 0,
                 registry: Registry | None = None) -> None:
        self.folder = folder
        self.servers = list(servers)
        self.port = port or free_port()
        self.registry = registry
        self.config_path = folder / "haproxy.cfg"
        self.socket_path = folder / "haproxy.sock"
        self.group: ProcessGroup | None = None

    def start(self) -> Haproxy:
        tool = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(tool):
            raise ClusterError("haproxy is not installed (apt-get install haproxy)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(haproxy_config((HOST, self.port), self.servers,
                                                   stats_socket=str(self.socket_path)))
        self.group = ProcessGroup.logged([tool, "-db", "-f", self.config_path], self.folder, "haproxy",
                                         cwd=self.folder, registry=self.registry)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (_accepts(HOST, self.port) and self.socket_path.exists()):
            if self.group.poll() is not None:
                raise ClusterError(f"haproxy exited ({self.group.poll()}): {self.group.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"haproxy did not start: {self.group.log_tail()}")
            time.sleep(_POLL_S)
        return self

    def command(self, text: str) -> str:
        """One command on the stats socket; its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy has it (UP, DOWN, MAINT, "UP 1/2" ...)."""
        out = {}
        lines = self.command("show stat").splitlines()
        if not lines:
            return out
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "scpfleet" and row.get("svname") not in ("BACKEND", "FRONTEND", None):
                out[row["svname"]] = row.get("status", "")
        return out

    def sessions(self) -> dict[str, int]:
        """Sessions each server has been given since HAProxy started."""
        out = {}
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "scpfleet" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                out[row["svname"]] = int(row.get("stot") or 0)
        return out

    def wait_state(self, name: str, wanted: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (self.states().get(name) or "").split(" ")[0] != wanted:
            if time.monotonic() > deadline:
                raise ClusterError(f"haproxy: {name} is {self.states().get(name)}, not {wanted}, after {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(grace=5.0)


class ClusterNode:
    """One ``scpfleet serve`` of the cluster (module doc). ``args`` are added to the
    command line; the DICOM and health ports stay the same over restarts. ``balanced``
    False: a node clients reach directly (no PROXY header expected, no drain delay)."""

    def __init__(self, name: str, folder: Path, index_url: str, *, workers: int = 1,
                 durability: str = "none", args: Sequence[str] = (), registry: Registry | None = None,
                 python: str | None = None, balanced: bool = True) -> None:
        self.name = name
        self.folder = folder
        self.storage = folder / "storage"
        self.index_url = index_url
        self.workers = workers
        self.durability = durability
        self.args = list(args)
        self.registry = registry
        self.python = python or os.environ.get("SCPFLEET_PYTHON") or _python()
        self.port = 0
        self.health_port = 0
        self.group: ProcessGroup | None = None
        self.ready_path = folder / "ready.json"
        self.balanced = balanced
        self.starts = 0

    def start(self) -> ClusterNode:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.ready_path.exists():
            self.ready_path.unlink()
        env = python_env(REPO)
        env["SCPFLEET_INDEX"] = self.index_url  # the URL (and any password) stays out of ps
        argv = [self.python, "-m", "workers.cli", "serve", "--host", HOST, "--port", self.port,
                "--storage", self.storage, "--node-id", self.name, "--workers", self.workers,
                "--durability", self.durability, "--metrics-port", self.health_port,
                "--ready-file", self.ready_path, "--drain-timeout", 60, "--max-associations", 200,
                "--summary-interval", 5]
        if self.balanced:
            argv += ["--proxy-protocol-from", f"{HOST}/32", "--drain-delay", DRAIN_DELAY_S]
        argv += self.args
        self.starts += 1
        log = open(self.folder / "node.log", "ab")
        try:
            self.group = ProcessGroup(argv, stdout=log, stderr=log, cwd=REPO, env=env, registry=self.registry)
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self.group.poll() is not None:
                raise ClusterError(f"node {self.name} exited ({self.group.poll()}): {self.log()[-2000:]}")
            try:
                state = json.loads(self.ready_path.read_text())
                break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"node {self.name} not ready: {self.log()[-2000:]}")
            time.sleep(_POLL_S)
        self.port, self.health_port = int(state["port"]), int(state["metrics_port"])
        return self

    @property
    def server(self) -> HaproxyServer:
        return HaproxyServer(self.name, HOST, self.port, self.health_port)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /health; (0, {}) when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.health_port}/health", timeout=2) as rsp:
                return rsp.status, json.load(rsp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        except OSError:
            return 0, {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.health_port}/metrics", timeout=5) as rsp:
            return rsp.read().decode()

    def kill(self) -> None:
        """SIGKILL every process of the node."""
        if self.group is not None:
            self.group.kill()

    def terminate(self) -> None:
        """SIGTERM the node (it drains and stops; see :meth:`wait`)."""
        if self.group is not None:
            self.group.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The node's exit status once it has stopped (None: still running)."""
        if self.group is None:
            return None
        status = self.group.wait(timeout)
        if status is not None:
            self.group.wait_gone(15.0)
        return status

    def stop(self) -> int | None:
        self.terminate()
        status = self.wait(90.0)
        if status is None and self.group is not None:
            self.group.kill()
        return status

    def log(self) -> str:
        try:
            return (self.folder / "node.log").read_text(errors="replace")
        except OSError:
            return ""

    def stored_files(self) -> dict[str, Path]:
        """sop_instance_uid -> file of every instance on this node's disk."""
        out = {}
        if not self.storage.exists():
            return out
        for study in self.storage.iterdir():
            if study.is_dir() and not study.name.startswith("."):
                for series in study.iterdir():
                    for path in series.iterdir():
                        out[path.stem] = path
        return out


def _python() -> str:
    import sys

    return sys.executable


# ------------------------------------------------------------------------------ the load


@dataclass
class BatchResult:
    """One storescu association: when it began and ended (monotonic), the files
    acknowledged (0000) and those that were not, and whether the association was rejected."""

    started: float
    ended: float
    files: list[Path]
    acknowledged: list[Path]
    failed: list[Path]
    rejected: bool
    returncode: int | None
    output: str

    @property
    def complete(self) -> bool:
        return len(self.acknowledged) == len(self.files)


_SENDING = re.compile(r"Sending file: (.*)$")
_RESPONSE = re.compile(r"Received Store Response \((.*)\)")


def send_batch(port: int, files: Sequence[Path], profile: tuple[Path, str], *, aec: str = "SCPFLEET",
               timeout: float = 120.0) -> BatchResult:
    """Send ``files`` over one storescu association to 127.0.0.1:``port`` (each as
    stored: ``profile`` is an exact-transfer-syntax association profile); what came back."""
    tool = dcmtk_tool("storescu")
    if tool is None:
        raise ClusterError("storescu not found (apt-get install dcmtk)")
    argv = [tool, "-v", "-aet", "LOADSCU", "-aec", aec, "-ta", "30", "-td", "60", "--no-halt",
            "-xf", str(profile[0]), profile[1], HOST, str(port), *map(str, files)]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **NODELAY_ENV}, stdin=subprocess.DEVNULL)
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        returncode = None
    acknowledged: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        if m := _SENDING.search(line):
            current = Path(m.group(1).strip())
        elif (m := _RESPONSE.search(line)) and current is not None:
            if m.group(1) == "Success":
                acknowledged.append(current)
            current = None
    ok = set(acknowledged)
    return BatchResult(started, time.monotonic(), list(files), acknowledged, [f for f in files if f not in ok],
                       "Association Rejected" in output, returncode, output)


class Load:
    """``lanes`` storescu associations at a time to ``port`` until ``files`` are all sent,
    ``batch`` files per association; ``pace_s`` is a pause each lane takes between two
    associations (to spread a load over a fault's duration). Runs in threads:
    :meth:`start`, then :meth:`wait`."""

    def __init__(self, port: int, files: Sequence[Path], profile: tuple[Path, str], *, lanes: int = 8,
                 batch: int = 25, pace_s: float = 0.0) -> None:
        self.port = port
        self.profile = profile
        self.lanes = lanes
        self.pace_s = pace_s
        self.batches: queue.Queue[list[Path]] = queue.Queue()
        for start in range(0, len(files), batch):
            self.batches.put(list(files[start:start + batch]))
        self.results: list[BatchResult] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._lane, daemon=True, name=f"lane{i}") for i in range(lanes)]

    def _lane(self) -> None:
        while True:
            try:
                files = self.batches.get_nowait()
            except queue.Empty:
                return
            result = send_batch(self.port, files, self.profile)
            with self._lock:
                self.results.append(result)
            if self.pace_s:
                time.sleep(self.pace_s)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float = 600.0) -> list[BatchResult]:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise ClusterError(f"the load did not finish within {timeout} s")
        return self.results

    @property
    def acknowledged(self) -> list[Path]:
        with self._lock:
            return [f for r in self.results for f in r.acknowledged]


def exact_profile(files: Sequence[Path], folder: Path) -> tuple[Path, str]:
    """An association profile proposing every (SOP class, transfer syntax) of ``files``."""
    path = folder / "storescu-profile.cfg"
    folder.mkdir(parents=True, exist_ok=True)
    return path, storescu_exact_profile(files, path)


# ------------------------------------------------------------------------------ the whole


@dataclass
class LocalCluster:
    """``nodes`` scpfleet nodes on ``index_url``, HAProxy in front, under ``folder``.
    ``node_args``: extra flags of every node."""

    folder: Path
    index_url: str
    nodes: int = 3
    workers: int = 1
    durability: str = "none"
    node_args: Sequence[str] = ()
    registry: Registry = field(default_factory=Registry)
    members: list[ClusterNode] = field(default_factory=list)
    haproxy: Haproxy | None = None

    def start(self) -> LocalCluster:
        try:
            for n in range(1, self.nodes + 1):
                node = ClusterNode(f"node{n}", self.folder / f"node{n}", self.index_url, workers=self.workers,
                                   durability=self.durability, args=self.node_args, registry=self.registry)
                self.members.append(node.start())
            self.haproxy = Haproxy(self.folder / "haproxy", [m.server for m in self.members],
                                   registry=self.registry).start()
            for member in self.members:
                self.haproxy.wait_state(member.name, "UP")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def port(self) -> int:
        assert self.haproxy is not None
        return self.haproxy.port

    def node(self, name: str) -> ClusterNode:
        return next(m for m in self.members if m.name == name)

    def close(self) -> None:
        """Stop everything (HAProxy first, then the nodes, gently, then whatever is left)."""
        if self.haproxy is not None:
            self.haproxy.stop()
        for member in self.members:
            if member.group is not None and member.group.poll() is None:
                member.stop()
        self.registry.stop_all(grace=2.0)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
