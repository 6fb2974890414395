"""The storage SCPs the benchmarks run: started fresh on 127.0.0.1, always stopped.

Theory of operation: one starter per kind of server -- ``scpfleet serve`` (any checkout
or interpreter, any extra flags), DCMTK ``storescp --fork``, pynetdicom's ``storescp`` and
Orthanc from Debian's package. Each starts its server in a folder the caller gives
(:class:`Launch`: logs, configuration, the storage folder, the maximum PDU, a registry and
an optional command prefix, e.g. one that moves the server into a cgroup before it
forks), in its own process group (:mod:`bench.procs`), waits until it accepts
connections and returns a :class:`Running`: its port and AE title, how to count and to
clear what it stored, and its process group, which :meth:`Running.stop` always kills
whole. A server that does not start raises :class:`RunError` with the tail of its log.

It never talks to anything but 127.0.0.1 (storescp, which has no bind-address option,
listens on every interface on a port chosen here) and measures nothing itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.dcmtk import NODELAY_ENV, dcmtk_tool
from bench.procs import ProcessGroup, Registry

__all__ = [
    "HOST",
    "REPO",
    "MAX_PDU",
    "KINDS",
    "RunError",
    "Launch",
    "Node",
    "Running",
    "free_port",
    "start",
    "start_scpfleet",
    "start_storescp",
    "start_pynetdicom",
    "start_orthanc",
]

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: Every SCP advertises this Maximum Length (PS3.8 D.1): DCMTK's upper limit (storescp
#: -pdu accepts 4096..131072), so no server is held back by a smaller PDU than another.
MAX_PDU = 131072
#: Seconds a server may take to accept connections (spawning N interpreters on a busy box).
START_TIMEOUT_S = 60.0
#: Seconds a stopping server gets after SIGTERM before its process group is killed.
STOP_GRACE_S = 10.0
#: After the client ends, how long the stored-file count may take to reach the expected
#: number (every server answers only once its file is written; this absorbs fs lag).
SETTLE_S = 2.0
_POLL_S = 0.05
KINDS = ("scpfleet", "storescp", "pynetdicom", "orthanc")


class RunError(Exception):
    """Why one run failed: a server that did not start, a client that erred or overran,
    a count that came out wrong. Its words go into the results."""


@dataclass(frozen=True)
class Launch:
    """Where and how a server starts.

    folder: its logs and configuration (created by the caller); storage: where it keeps
    instances (default ``folder/store``); prefix: a command the server's command line is
    appended to (it must ``exec`` the rest); registry: remembers the process group.
    """

    folder: Path
    max_pdu: int = MAX_PDU
    storage: Path | None = None
    prefix: tuple[str, ...] = ()
    registry: Registry | None = None

    @property
    def store(self) -> Path:
        return self.storage if self.storage is not None else self.folder / "store"


@dataclass(frozen=True)
class Node:
    """Which ``scpfleet serve`` and how: ``python`` runs ``-m workers.cli serve``; with
    ``checkout`` the node's code is that folder's (working directory and PYTHONPATH),
    without it whatever ``python`` has installed. ``args`` come last, so they override.
    ``env``: variables set in the node's environment (e.g. ``SCPFLEET_PURE_PYTHON``)."""

    python: str = sys.executable
    checkout: Path | None = REPO
    workers: int = 1
    durability: str = "none"
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Running:
    proc: ProcessGroup
    port: int
    aec: str
    count: Callable[[], int]
    #: Removes what the server stored (None: it cannot be done behind its back).
    clear: Callable[[], None] | None = None

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL its whole process group after the grace period."""
        self.proc.stop(grace=STOP_GRACE_S)

    def count_now(self) -> int:
        try:
            return self.count()
        except (OSError, ValueError, KeyError) as exc:
            raise RunError(f"cannot count what the server stored: {exc}") from None

    def count_stored(self, expected: int, settle: float = SETTLE_S) -> int:
        """What the server holds now, waiting up to ``settle`` s for ``expected``."""
        deadline = time.monotonic() + settle
        while True:
            stored = self.count_now()
            if stored >= expected or time.monotonic() > deadline:
                return stored
            time.sleep(_POLL_S)

    def tail(self, chars: int = 300) -> str:
        return self.proc.log_tail(chars)


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


def python_env(pythonpath: Path | None = REPO, **extra: str) -> dict[str, str]:
    """This environment, with ``pythonpath`` first on PYTHONPATH (None: unchanged)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def count_files(root: Path, suffix: str = "") -> int:
    """Files under ``root`` (recursive), not in or named like hidden entries."""
    n = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for name in names if not name.startswith(".") and name.endswith(suffix))
    return n


def remove_files(root: Path, suffix: str = "") -> None:
    """Delete the files :func:`count_files` counts (folders stay: a server may cache
    that they exist)."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.endswith(suffix):
                os.unlink(os.path.join(folder, name))


def _wait_listening(proc: ProcessGroup, port: int | None, ready: Callable[[], int | None],
                    what: str) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"{what} exited at start (status {proc.poll()}): "
                           f"{proc.log_tail(300)}")
        got = ready() if port is None else (port if _accepts(port) else None)
        if got:
            return got
        time.sleep(_POLL_S)
    raise RunError(f"{what} did not start in {START_TIMEOUT_S:.0f} s: {proc.log_tail(300)}")


def _started(proc: ProcessGroup, port: int | None, ready: Callable[[], int | None],
             what: str) -> int:
    """:func:`_wait_listening`, stopping the server's group if it does not start."""
    try:
        return _wait_listening(proc, port, ready, what)
    except BaseException:
        proc.stop(grace=2.0)
        raise


def start_scpfleet(launch: Launch, node: Node = Node()) -> Running:
    storage = launch.store
    ready_file = launch.folder / "ready.json"
    argv = [*launch.prefix, node.python, "-m", "workers.cli", "serve", "--host", HOST,
            "--port", "0", "--ready-file", ready_file, "--storage", storage,
            "--workers", node.workers, "--durability", node.durability,
            "--max-pdu", launch.max_pdu, "--max-associations", 200, "--drain-timeout", 5,
            "--log-level", "warning", *node.args]
    proc = ProcessGroup.logged(argv, launch.folder, "server", env=python_env(node.checkout, **dict(node.env)),
                 cwd=node.checkout or launch.folder, registry=launch.registry)

    def ready() -> int | None:
        try:
            return int(json.loads(ready_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    port = _started(proc, None, ready, "scpfleet serve")
    return Running(proc, port, "SCPFLEET", lambda: count_files(storage, ".dcm"),
                   lambda: remove_files(storage, ".dcm"))


def start_storescp(launch: Launch) -> Running:
    out = launch.store
    out.mkdir(parents=True, exist_ok=True)
    tool = dcmtk_tool("storescp")
    if tool is None:
        raise RunError("storescp not found (apt-get install dcmtk)")
    for _ in range(3):  # another process may take the free port before storescp binds it
        port = free_port()
        # storescp has no bind-address option: it listens on every interface.
        argv = [*launch.prefix, tool, "--fork", "-aet", "STORESCP", "-od", out, "+B", "+xa",
                "-dhl", "-pdu", launch.max_pdu, port]
        proc = ProcessGroup.logged(argv, launch.folder, "server", env=python_env(None, **NODELAY_ENV),
                     registry=launch.registry)
        try:
            _started(proc, port, lambda: None, "storescp")
        except RunError as exc:
            if "already in use" in str(exc).lower():
                continue
            raise
        return Running(proc, port, "STORESCP", lambda: count_files(out),
                       lambda: remove_files(out))
    raise RunError("storescp lost the race for a free port three times")


#: pynetdicom's own storescp app (``python -m pynetdicom storescp``) with one change: its
#: AE refuses associations beyond ``maximum_associations`` (default 10, no flag to raise
#: it), which would make 16-association runs fail; 64 lets them all in. Nothing else
#: differs, per instance or per association.
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


def start_pynetdicom(launch: Launch) -> Running:
    out = launch.store
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        argv = [*launch.prefix, sys.executable, "-c", _PYNETDICOM_STORESCP, port, "-ba", HOST,
                "-aet", "PYNETDICOM", "-od", out, "-pdu", launch.max_pdu]
        proc = ProcessGroup.logged(argv, launch.folder, "server", env=python_env(None),
                     registry=launch.registry)
        try:
            _started(proc, port, lambda: None, "pynetdicom storescp")
        except RunError as exc:
            if "already in use" in str(exc).lower():
                continue
            raise
        return Running(proc, port, "PYNETDICOM", lambda: count_files(out),
                       lambda: remove_files(out))
    raise RunError("pynetdicom storescp lost the race for a free port three times")


def _orthanc_count(http_port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/statistics", timeout=10) as rsp:
        return int(json.load(rsp)["CountInstances"])


def start_orthanc(launch: Launch) -> Running:
    """Orthanc with its own configuration: storage and index under ``launch.store``,
    loopback DICOM and HTTP ports, no plugins, every store allowed, no called-AE check;
    otherwise its defaults (it syncs every stored file: SyncStorageArea). The stored
    count is read from its REST API (/statistics)."""
    tool = shutil.which("Orthanc")
    if tool is None:
        raise RunError("Orthanc not installed (apt-get install -y orthanc)")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "scpfleet-bench",
        "StorageDirectory": str(launch.store / "storage"),
        "IndexDirectory": str(launch.store / "index"),
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
        "MaximumPduLength": launch.max_pdu,
        "DicomScpTimeout": 60,
    }
    path = launch.folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    proc = ProcessGroup.logged([*launch.prefix, tool, path], launch.folder, "server",
                 env=python_env(None), cwd=launch.folder, registry=launch.registry)

    def ready() -> int | None:
        if not _accepts(dicom_port):
            return None
        try:
            _orthanc_count(http_port)
        except (OSError, ValueError, KeyError):
            return None
        return dicom_port

    port = _started(proc, None, ready, "Orthanc")
    return Running(proc, port, "ORTHANC", lambda: _orthanc_count(http_port))


def start(kind: str, launch: Launch, node: Node | None = None) -> Running:
    """Start a server of ``kind`` (one of :data:`KINDS`; ``node`` is for scpfleet)."""
    if kind == "scpfleet":
        return start_scpfleet(launch, node or Node())
    starter = {"storescp": start_storescp, "pynetdicom": start_pynetdicom,
               "orthanc": start_orthanc}[kind]
    return starter(launch)
