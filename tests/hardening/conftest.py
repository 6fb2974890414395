"""The storage SCP under attack, and a raw-socket peer to attack it with.

Theory of operation: every hardening test talks to a *target*: a running storage SCP on
127.0.0.1, ephemeral port, with a fresh storage root. The preferred target is the real
node (``python -m workers.cli serve`` in its own process group, ``--port 0`` and
``--ready-file``), used when its ``serve --help`` offers the flags below. Until it does,
or when ``SCPFLEET_HARDENING_TARGET=engine``, the target is the engine itself: an
``engine.aio.AssociationServer`` on a uvloop loop in a background thread, serving the
node's own Verification and Storage SCPs (``workers.services``) over a
``storage.PosixInstanceStore`` (durability ``none``, no journal), exactly the providers a
worker runs. ``SCPFLEET_HARDENING_TARGET=node`` insists on the real node.

A target offers what every case checks afterwards: :meth:`Target.assert_still_serving`
(a real association, C-ECHO and C-STORE through ``engine.aio``),
:meth:`Target.visible_instances` (``*.dcm`` under the root, ``.tmp`` excluded),
:meth:`Target.index_rows` (the real node's SQLite index) and :meth:`Target.assert_clean`,
which also proves that nothing was written outside the root: the root sits four levels
below a sandbox directory that must stay otherwise empty.

:class:`RawPeer` is a blocking socket with short timeouts that sends whatever bytes a
test built (tests/fuzz/wire.py) and reads PDUs or the end of the connection back. Every
server a fixture starts is stopped at the end of its module; every socket is closed by
the test that opened it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from bench.procs import ProcessGroup
from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, aio, build_context
from engine.services import ServiceRegistry
from engine._acse import AcceptorPolicy
from engine._pdu import AAssociateAC, decode_pdu
from engine.presentation import StoragePresentationContexts
from engine.sop_class import Verification
from storage import (
    PosixInstanceStore,
    StorageConfig,
    is_valid_uid,
)
from tests.dicomdata import make_dataset
from tests.fuzz import wire
from workers.services import StorageSCP, VerificationSCP

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: A single recv on loopback: the server answers in milliseconds; this is the hang bound.
SOCKET_TIMEOUT_S = 5.0
#: Slack added to a configured server timeout before a test declares it was not enforced.
MARGIN_S = 5.0
#: Server timeouts of the targets: short so timer cases take seconds, not minutes.
ACSE_TIMEOUT_S = 1.0
DIMSE_TIMEOUT_S = 1.0
NETWORK_TIMEOUT_S = 2.0
#: Maximum Length the engine target advertises: the node's default (workers/config.py).
MAX_PDU = 262144
AE_TITLE = b"HARDEN"
#: The calling AE title the strict targets allow, and the one the helper associates with.
ALLOWED_CALLING = b"ALLOWED"
#: A PDU body bigger than this is not read by RawPeer: a bug, not a reply.
_MAX_REPLY = 16 << 20
#: Transfer syntaxes the engine target accepts for every storage SOP class.
ENGINE_TRANSFER_SYNTAXES = (
    wire.IMPLICIT_LE,
    wire.EXPLICIT_LE,
    wire.EXPLICIT_BE,
    wire.DEFLATED_LE,
    wire.JPEG_BASELINE,
)
#: Flags the real node must offer to be used as the target.
_NODE_FLAGS = ("--port", "--ready-file", "--storage", "--workers", "--durability")
#: Time the real node gets to write its ready file (spawning workers on a loaded CI box).
_NODE_START_S = 60.0
_NODE_STOP_S = 15.0


# ----------------------------------------------------------------------------- raw peer


class RawPeer:
    """A TCP connection that sends raw bytes and reads raw PDUs (blocking, bounded)."""

    def __init__(self, host: str, port: int, timeout: float = SOCKET_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out with {len(out)} of {n} bytes; got {bytes(out)!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - len(out))
            except TimeoutError:
                raise AssertionError(
                    f"timed out with {len(out)} of {n} bytes; got {bytes(out)!r}"
                ) from None
            if not chunk:
                raise ConnectionAbortedError(f"closed after {len(out)} of {n} bytes: {bytes(out)!r}")
            out += chunk
        return bytes(out)

    def recv_pdu(self, timeout: float | None = None) -> bytes:
        """The next whole PDU (header included) the server sends."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        header = self._recv_exact(6, deadline)
        (length,) = struct.unpack_from(">I", header, 2)
        assert length <= _MAX_REPLY, f"server sent a PDU header claiming {length} bytes"
        return header + self._recv_exact(length, deadline)

    def read_until_closed(self, timeout: float) -> bytes:
        """Everything the server sends until it closes; AssertionError if it stays open."""
        deadline = time.monotonic() + timeout
        out = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {bytes(out)!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after {timeout}s; got {bytes(out)!r}"
                ) from None
            except (ConnectionResetError, BrokenPipeError):
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def half_close(self) -> None:
        """Send FIN: the transport connection is closed from our side (Evt17 there)."""
        self.sock.shutdown(socket.SHUT_WR)

    def associate(self, rq: bytes | None = None) -> AAssociateAC:
        """Send an A-ASSOCIATE-RQ (default: Verification + SC) and require an AC."""
        self.send(rq if rq is not None else default_rq())
        reply = self.recv_pdu()
        assert reply[0] == 0x02, f"expected A-ASSOCIATE-AC, got {reply[:10].hex()}"
        ac = decode_pdu(reply)
        assert isinstance(ac, AAssociateAC)
        return ac


def default_rq(**overrides: Any) -> bytes:
    """A well-formed A-ASSOCIATE-RQ the targets accept: Verification on context 1, SC
    (Explicit VR LE) on 3, CT (Implicit VR LE) on 5, calling AE the allowed one."""
    settings: dict[str, Any] = dict(
        called=AE_TITLE,
        calling=ALLOWED_CALLING,
        contexts=(
            (1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
            (3, wire.SECONDARY_CAPTURE, (wire.EXPLICIT_LE,)),
            (5, wire.CT_IMAGE, (wire.IMPLICIT_LE,)),
        ),
    )
    settings.update(overrides)
    return wire.associate_rq(**settings)


def accepted(ac: AAssociateAC) -> dict[int, str]:
    """context ID -> transfer syntax of the contexts an A-ASSOCIATE-AC accepted."""
    return {pc.context_id: pc.transfer_syntax for pc in ac.presentation_contexts if pc.result == 0}


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Checkpoint:
    """What was visible (and stored by the helper) at one moment."""

    files: frozenset[str]
    index: frozenset[str]
    helper: frozenset[str]
    errors: int


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


class Target:
    """A running storage SCP on 127.0.0.1 with its own storage root."""

    kind = "?"

    def __init__(
        self,
        sandbox: Path,
        *,
        acse_timeout: float = ACSE_TIMEOUT_S,
        dimse_timeout: float = DIMSE_TIMEOUT_S,
        network_timeout: float = NETWORK_TIMEOUT_S,
        client_ssl: Any = None,
    ) -> None:
        self.sandbox = sandbox
        # Four levels down: a name that climbs out of the root still lands in the sandbox.
        self.root = sandbox / "l1" / "l2" / "l3" / "storage"
        self.root.mkdir(parents=True)
        self.host = HOST
        self.port = 0
        self.ae_title = AE_TITLE
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.client_ssl = client_ssl
        self._helper: set[str] = set()

    # -- lifecycle (subclasses) ------------------------------------------------------------

    def start(self) -> Target:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # -- peers ---------------------------------------------------------------------------

    def peer(self, timeout: float = SOCKET_TIMEOUT_S) -> RawPeer:
        return RawPeer(self.host, self.port, timeout)

    def established_peer(self, rq: bytes | None = None) -> tuple[RawPeer, AAssociateAC]:
        """A raw peer with an accepted association (Sta6 on the server)."""
        peer = self.peer()
        try:
            ac = peer.associate(rq)
        except BaseException:
            peer.close()
            raise
        return peer, ac

    # -- what is stored --------------------------------------------------------------------

    def visible_instances(self) -> list[str]:
        """``*.dcm`` under the root, relative, ``.tmp`` (and other dot dirs) excluded."""
        out = []
        for path in self.root.rglob("*.dcm"):
            relative = path.relative_to(self.root)
            if not relative.parts[0].startswith("."):
                out.append(relative.as_posix())
        return sorted(out)

    def index_rows(self) -> list[str]:
        """Paths of the instances the index lists (the engine target has no index)."""
        return []

    def temp_files(self) -> list[str]:
        temp = self.root / ".tmp"
        return sorted(p.name for p in temp.iterdir()) if temp.is_dir() else []

    def outside_root(self) -> list[str]:
        """Files in the sandbox that are not under the root (must always be empty)."""
        return sorted(
            p.relative_to(self.sandbox).as_posix()
            for p in self.sandbox.rglob("*")
            if not p.is_dir() and self.root not in p.parents
        )

    def account(self, relative: str) -> None:
        """A test stored ``relative`` on purpose: :meth:`assert_clean` expects it."""
        self._helper.add(relative)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            frozenset(self.visible_instances()),
            frozenset(self.index_rows()),
            frozenset(self._helper),
            len(self.server_errors()),
        )

    def server_errors(self) -> list[str]:
        """Unexpected exceptions the server reported (tracebacks, fatal transport errors)."""
        raise NotImplementedError

    def log_lines(self) -> list[str]:
        """The server's log output so far, one entry per line as an operator reads it."""
        raise NotImplementedError

    # -- checks ----------------------------------------------------------------------------

    def assert_still_serving(self) -> str:
        """Associate, C-ECHO, C-STORE a fresh tiny instance, release; return its path."""
        ds = make_dataset("tiny", seed=0, unique=True)
        relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"

        async def main() -> tuple[int, int]:
            config = aio.RequestorConfig(
                calling_ae_title=ALLOWED_CALLING.ljust(16),
                called_ae_title=self.ae_title.ljust(16),
                contexts=[
                    build_context(Verification),
                    build_context(ds.SOPClassUID, ExplicitVRLittleEndian),
                ],
                implementation_class_uid=wire.PEER_IMPLEMENTATION_UID,
                acse_timeout=SOCKET_TIMEOUT_S,
                dimse_timeout=SOCKET_TIMEOUT_S,
                network_timeout=SOCKET_TIMEOUT_S,
            )
            assoc = await aio.associate(
                self.host,
                self.port,
                config,
                ssl_context=self.client_ssl,
                server_hostname="localhost" if self.client_ssl else None,
            )
            if not assoc.is_established:
                raise AssertionError(
                    f"{self.kind} target stopped serving: rejection={assoc.rejection} "
                    f"abort={assoc.abort_info}"
                )
            try:
                echo = await assoc.send_c_echo()
                store = await assoc.send_c_store(ds)
            finally:
                await assoc.release()
            return int(echo.get("Status", -1)), int(store.get("Status", -1))

        with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
            echo_status, store_status = runner.run(main())
        assert echo_status == 0x0000, f"C-ECHO status 0x{echo_status:04X}"
        assert store_status == 0x0000, f"C-STORE status 0x{store_status:04X}"
        assert (self.root / relative).is_file(), f"stored instance {relative} not visible"
        self._helper.add(relative)
        return relative

    def wait_no_temp_files(self, timeout: float = MARGIN_S) -> None:
        assert _wait_for(lambda: not self.temp_files(), timeout), (
            f"temporary files left in .tmp: {self.temp_files()}"
        )

    def assert_layout(self) -> None:
        """Every visible file is <study>/<series>/<sop>.dcm with three valid UIDs."""
        for relative in self.visible_instances():
            parts = relative.split("/")
            assert len(parts) == 3 and parts[2].endswith(".dcm"), relative
            assert all(is_valid_uid(p) for p in (parts[0], parts[1], parts[2][:-4])), relative

    def assert_clean(self, since: Checkpoint, *, stored: Sequence[str] = ()) -> None:
        """Still serving; no temporary file left; nothing new visible but ``stored`` and
        the helper's instances; nothing written outside the root; index rows only for
        visible files."""
        self.assert_still_serving()
        self.wait_no_temp_files()
        now = self.checkpoint()
        expected = set(stored) | (now.helper - since.helper)
        assert set(now.files - since.files) == expected, (
            f"unexpected instances became visible: {sorted(now.files - since.files - expected)}"
        )
        assert self.outside_root() == [], f"written outside the root: {self.outside_root()}"
        self.assert_layout()
        errors = self.server_errors()[since.errors:]
        assert not errors, "the server raised unexpectedly:\n" + "\n".join(errors)
        if self.kind == "node":
            # The index lags the files (indexer batches); it must never list what is not there.
            assert _wait_for(lambda: set(self.index_rows()) <= set(self.visible_instances()), MARGIN_S), (
                f"index rows without a visible file: "
                f"{sorted(set(self.index_rows()) - set(self.visible_instances()))}"
            )

    def rss(self) -> int:
        """Resident memory of the serving process(es), bytes."""
        raise NotImplementedError


def server_ssl_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    """What workers/config.py builds for --tls-cert/--tls-key/--tls-ca: TLS 1.2 or later
    (PS3.15 B.1/B.9), client certificates signed by ``ca`` required when it is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class EngineTarget(Target):
    """``engine.aio.AssociationServer`` on a uvloop loop in a daemon thread, storing in a
    ``storage.PosixInstanceStore`` like a worker (durability none, no journal)."""

    kind = "engine"

    def __init__(
        self,
        sandbox: Path,
        *,
        require_called_aet: bool = False,
        require_calling_aet: Sequence[bytes] = (),
        max_associations: int | None = None,
        ssl_context: Any = None,
        tls: tuple[str, str, str | None] | None = None,
        allowed_networks: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sandbox, **kwargs)
        self.require_called_aet = require_called_aet
        self.require_calling_aet = tuple(require_calling_aet)
        self.max_associations = max_associations
        self.ssl_context = ssl_context if tls is None else server_ssl_context(*tls)
        self.allowed_networks = allowed_networks
        self.storage = StorageConfig(
            root=str(self.root),
            durability="none",
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: aio.AssociationServer | None = None
        self._store: PosixInstanceStore | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._errors = _ErrorLog()

    def start(self) -> EngineTarget:
        self._errors.attach()
        self._thread = threading.Thread(target=self._run, name="hardening-scp", daemon=True)
        self._thread.start()
        if not self._ready.wait(30.0):
            raise RuntimeError("engine target did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"engine target failed to start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = aio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start(), or by the test that hangs
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        contexts = [build_context(cx.abstract_syntax, ENGINE_TRANSFER_SYNTAXES)
                    for cx in StoragePresentationContexts]
        contexts.append(build_context(Verification))
        policy = AcceptorPolicy(
            ae_title=self.ae_title.ljust(16),
            supported_contexts=contexts,
            maximum_pdu_size=MAX_PDU,
            implementation_class_uid=wire.PEER_IMPLEMENTATION_UID,
            require_called_aet=self.require_called_aet,
            require_calling_aet=tuple(t.ljust(16) for t in self.require_calling_aet),
        )
        options: dict[str, Any] = {}
        if self.allowed_networks is not None:
            options["allowed_networks"] = self.allowed_networks
        config = aio.ServerConfig(
            policy=policy,
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            network_timeout=self.network_timeout,
            maximum_associations=self.max_associations,
            ssl_context=self.ssl_context,
            services=ServiceRegistry(),
            **options,
        )
        self._store = PosixInstanceStore(self.storage, loop)
        VerificationSCP().register(config.services)
        StorageSCP(self._store, called_ae=self.ae_title.decode("ascii")).register(config.services)
        self.server = aio.AssociationServer(config, loop=loop)
        _, self.port = await self.server.start(HOST, 0)
        self._stop_event = asyncio.Event()
        self._ready.set()
        await self._stop_event.wait()
        await self.server.close(grace=2.0)
        await self._store.aclose()

    def stop(self) -> None:
        loop, event = self.loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(30.0)
            assert not self._thread.is_alive(), "engine target did not stop within 30 s"
        self._errors.detach()

    def server_errors(self) -> list[str]:
        return list(self._errors.messages)

    def log_lines(self) -> list[str]:
        return [line for text in self._errors.lines for line in text.splitlines()]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the server's loop thread and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(SOCKET_TIMEOUT_S)

    def buffered(self) -> int:
        """Bytes the server's PDU decoders hold for incomplete PDUs, all connections."""
        server = self.server
        assert server is not None
        return self.call(lambda: sum(a.conn.decoder.buffered for a in server.active))

    def live_connections(self) -> int:
        server = self.server
        assert server is not None
        return self.call(lambda: len(server.active))

    def rss(self) -> int:
        return _rss_of(os.getpid())


class _ErrorLog(logging.Handler):
    """Keeps the engine's log lines (INFO and up, as the node logs them) and, apart,
    ERROR records of the engine and of asyncio (an exception that escaped a protocol
    callback is logged there as "Fatal error on transport")."""

    _LOGGERS = ("asyncio", "scpfleet")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.lines: list[str] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        self.lines.append(text)
        if record.levelno < logging.ERROR:
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]!r})"
        self.messages.append(text)

    def attach(self) -> None:
        for name in self._LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self)

    def detach(self) -> None:
        for name in self._LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(self._levels.get(name, logging.NOTSET))


# ----------------------------------------------------------------------------- real node

_node_help_cache: list[str | None] = []


def node_help() -> str | None:
    """``serve --help`` of the real node when it offers every flag we need, else None."""
    if _node_help_cache:
        return _node_help_cache[0]
    text = None
    if (REPO_ROOT / "workers" / "cli.py").is_file():
        try:
            done = subprocess.run(
                [sys.executable, "-m", "workers.cli", "serve", "--help"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and all(f in done.stdout for f in _NODE_FLAGS):
            text = done.stdout
    _node_help_cache.append(text)
    return text


def _parse_ready(text: str) -> tuple[str, int] | None:
    """The DICOM address from a ready file: JSON (``port``, ``host``, ``address``,
    nested ``dicom``) or text ``host:port`` / ``host port``; None while incomplete."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("dicom", "listen", "address"):
            value = data.get(key)
            if isinstance(value, dict):
                data = {**data, **value}
            elif isinstance(value, (list, tuple)) and len(value) == 2:
                return str(value[0]), int(value[1])
            elif isinstance(value, str) and ":" in value:
                host, _, port = value.rpartition(":")
                return host.strip("[]") or HOST, int(port)
        if isinstance(data.get("port"), int):
            return str(data.get("host") or HOST), int(data["port"])
        return None
    match = re.search(r"([\w.:\[\]-]*?)[: ](\d{1,5})\s*$", text.splitlines()[0])
    return (match.group(1).strip("[]") or HOST, int(match.group(2))) if match else None


class NodeTarget(Target):
    """``python -m workers.cli serve`` in its own process group (one worker)."""

    kind = "node"

    def __init__(
        self,
        sandbox: Path,
        help_text: str,
        *,
        require_called_aet: bool = False,
        require_calling_aet: Sequence[bytes] = (),
        max_associations: int | None = None,
        tls: tuple[str, str, str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sandbox, **kwargs)
        self.help_text = help_text
        self.require_called_aet = require_called_aet
        self.require_calling_aet = tuple(require_calling_aet)
        self.max_associations = max_associations
        self.tls = tls
        self.group: ProcessGroup | None = None
        self.proc: subprocess.Popen | None = None
        self.ready_file = sandbox.parent / f"{sandbox.name}.ready"
        self.log_path = sandbox.parent / f"{sandbox.name}.log"

    #: Target options -> the serve flag that expresses them.
    _FLAGS = {
        "require_called_aet": "--require-called-aet",
        "require_calling_aet": "--require-calling-aet",
        "max_associations": "--max-associations",
        "tls": "--tls-cert",
    }
    #: Options only the engine target has (no serve flag yet).
    _ENGINE_ONLY = frozenset({"ssl_context", "allowed_networks"})

    @classmethod
    def supports(cls, help_text: str, **options: Any) -> bool:
        """Whether the node's flags can express the options a test asks for."""
        given = {k for k, v in options.items() if v}
        needs = [cls._FLAGS[k] for k in given if k in cls._FLAGS]
        return all(f in help_text for f in needs) and not (cls._ENGINE_ONLY & given)

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "workers.cli", "serve",
            "--port", "0",
            "--ready-file", str(self.ready_file),
            "--storage", str(self.root),
            "--workers", "1",
            "--durability", "none",
        ]
        optional = [
            ("--host", HOST),
            ("--aet", self.ae_title.decode()),
            ("--acse-timeout", str(self.acse_timeout)),
            ("--dimse-timeout", str(self.dimse_timeout)),
            ("--network-timeout", str(self.network_timeout)),
        ]
        for flag, value in optional:
            if flag in self.help_text:
                argv += [flag, value]
        if self.require_called_aet:
            argv.append("--require-called-aet")
        for title in self.require_calling_aet:
            argv += ["--require-calling-aet", title.decode()]
        if self.max_associations is not None:
            argv += ["--max-associations", str(self.max_associations)]
        if self.tls is not None:
            cert, key, ca = self.tls
            argv += ["--tls-cert", cert, "--tls-key", key]
            if ca is not None:
                argv += ["--tls-ca", ca]
        return argv

    def start(self) -> NodeTarget:
        # The node's own defaults apply to the timeouts its CLI cannot set.
        for flag, attr, default in (
            ("--acse-timeout", "acse_timeout", 30.0),
            ("--dimse-timeout", "dimse_timeout", 60.0),
            ("--network-timeout", "network_timeout", 120.0),
        ):
            if flag not in self.help_text:
                setattr(self, attr, default)
        log = open(self.log_path, "wb")
        try:
            self.group = ProcessGroup(self.argv(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            self.proc = self.group.popen
        finally:
            log.close()
        atexit.register(self.stop)  # an interrupted session must not leave the node running
        deadline = time.monotonic() + _NODE_START_S
        address = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready_file.is_file():
                address = _parse_ready(self.ready_file.read_text(errors="replace"))
                if address is not None and address[1]:
                    break
            time.sleep(0.05)
        if address is None or not address[1]:
            self.stop()
            log_text = self.log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"the node did not become ready: argv={self.argv()}\n{log_text}")
        self.host = HOST if address[0] in ("", "0.0.0.0", "::") else address[0]
        self.port = address[1]
        return self

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(signal.SIGTERM, _NODE_STOP_S, group=True)

    def index_rows(self) -> list[str]:
        path = self.root / "index.sqlite"
        if not path.is_file():
            return []
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
            try:
                return sorted(row[0] for row in db.execute("SELECT path FROM instances"))
            finally:
                db.close()
        except sqlite3.Error:
            return []

    def server_errors(self) -> list[str]:
        if not self.log_path.is_file():
            return []
        text = self.log_path.read_text(errors="replace")
        return [chunk[:2000] for chunk in text.split("Traceback (most recent call last)")[1:]]

    def log_lines(self) -> list[str]:
        # splitlines() also splits at a lone CR, as a terminal or log viewer shows it.
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []

    def rss(self) -> int:
        assert self.proc is not None
        return sum(_rss_of(pid) for pid in _descendants(self.proc.pid))


# ----------------------------------------------------------------------------- fixtures


def target_kind(**options: Any) -> str:
    """``engine`` or ``node``: SCPFLEET_HARDENING_TARGET, else the node when it can."""
    forced = os.environ.get("SCPFLEET_HARDENING_TARGET", "auto")
    if forced == "engine":
        return "engine"
    text = node_help()
    if forced == "node":
        if text is None:
            pytest.fail("SCPFLEET_HARDENING_TARGET=node but `workers.cli serve` lacks "
                        f"one of {_NODE_FLAGS}")
        return "node"
    return "node" if text is not None and NodeTarget.supports(text, **options) else "engine"


@pytest.fixture(scope="module")
def target_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Target]]:
    """Factory: start a target (``kind`` forces ``engine``; other keyword arguments are
    EngineTarget options); every target is stopped at the end of the module."""
    started: list[Target] = []

    def start(kind: str | None = None, **options: Any) -> Target:
        sandbox = tmp_path_factory.mktemp("sandbox")
        chosen = kind or target_kind(**options)
        target: Target
        if chosen == "node":
            text = node_help()
            if text is None or not NodeTarget.supports(text, **options):
                pytest.skip(f"the node's serve command cannot express {sorted(options)}")
            target = NodeTarget(sandbox, text, **options)
        else:
            target = EngineTarget(sandbox, **options)
        started.append(target)
        return target.start()

    try:
        yield start
    finally:
        for target in started:
            target.stop()


@pytest.fixture(scope="module")
def node(target_factory: Callable[..., Target]) -> Target:
    """The default target: short timeouts, no AE title checks, fresh storage root."""
    return target_factory()
