"""A worker process: one uvloop loop running many associations through the engine.

Theory of operation: the listener hands this process accepted TCP connections over a
``SOCK_SEQPACKET`` channel (one descriptor per packet); each one is given to
:meth:`engine.aio.AssociationServer.adopt`, which does the TLS handshake when the node
has a certificate. Admission is node-wide: :meth:`Worker._admit` takes a slot in the
shared :class:`~workers.ipc.SharedSlots` (refusing with A-ASSOCIATE-RJ 2/3/2 at the
limit) and the slot is given back when the association's connection closes.

Each C-STORE streams into a :class:`_StoreSink` over one upload of the worker's
``storage.PosixInstanceStore``: ``open`` on the command, one ``write`` (a plain
``os.write`` of the engine's view, plus the digest and metadata scan) per fragment, and
``finish``, which makes it durable off the loop and appends its record to this worker's
journal segment (the store locks, rotates and closes the segments). That append is the
whole hand-off to the index: the indexer owning this worker follows the segment
(:mod:`workers.indexer`), so the worker sends it nothing and never waits for it; a slow
or absent indexer only lets the journal grow.

Memory per association is the engine's framing buffer (about one PDU) plus one open
file, whatever the instance size. The loop never fsyncs (the publisher's executor
does) and never blocks on the index.

On Stop (or SIGTERM, or the supervisor vanishing) the worker stops taking connections,
lets stores in flight finish, aborts idle associations, refuses new ones (2/3/2), and
after ``drain-timeout`` aborts what is left; then it closes the store (flushing what
it holds, closing the journal and releasing its lock) and exits 0.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import os
import signal
import socket
import time
from typing import Any

from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, evt
from engine import status as dimse_status
from engine._acse import AcceptorPolicy, rejection_description
from engine.aio import AssociationServer, ServerConfig, ServiceRegistry, new_event_loop
from engine.dimse import C_ECHO_RQ, C_STORE_RQ
from engine.presentation import PresentationContext
from engine.sop_class import STORAGE_SOP_CLASSES, VerificationSOPClass
from storage import (
    InstanceRecord,
    PosixInstanceStore,
    Refusal,
    StorageConfig,
    StoreRefused,
    Upload,
    UploadRequest,
)

from .config import ae_title_bytes, allowed_networks, ssl_context
from .ipc import (
    LATENCY_BUCKETS,
    Attach,
    Ready,
    SharedSlots,
    Spec,
    Stop,
    WorkerStats,
    recv_control,
    recv_fds_batch,
    send_control,
)

__all__ = ["main", "Worker", "supported_contexts", "refusal_status", "TRANSFER_SYNTAXES"]

log = logging.getLogger("scpfleet.worker")


def _transfer_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax a C-STORE data set can travel in (an archive takes them all).

    From pydicom's UID registry, less those that are not data set encodings for the
    network: MIME and XML encodings (PS3.18), the SMPTE ST 2110 ones (DICOM-RTV only)
    and the retired Papyrus one. Native syntaxes first.
    """
    from pydicom._uid_dict import UID_dictionary

    excluded_prefixes = ("1.2.840.10008.1.2.6.", "1.2.840.10008.1.2.7.", "1.2.840.10008.1.20")
    native = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
    others = [
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "Transfer Syntax" and uid not in native and not uid.startswith(excluded_prefixes)
    ]
    return tuple(native + others)


TRANSFER_SYNTAXES = _transfer_syntaxes()


def supported_contexts() -> list[PresentationContext]:
    """Verification plus every Storage SOP Class, each with every transfer syntax."""
    contexts = [PresentationContext(abstract_syntax=VerificationSOPClass,
                                    transfer_syntax=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])]
    for uid in STORAGE_SOP_CLASSES:
        contexts.append(PresentationContext(abstract_syntax=uid, transfer_syntax=TRANSFER_SYNTAXES))
    return contexts


_ERROR_COMMENT_MAX = 64
# How often the supervisor hears this worker's counters.
_STATS_INTERVAL_S = 1.0
# While draining, how often idle associations are looked for and aborted.
_DRAIN_POLL_S = 0.1
# Threads running fsync/rename/fdatasync: they block in the kernel, not on the GIL, so a
# few overlap for real; more only queue on the same device.
_PUBLISH_THREADS = 8


#: Duplicate refused (policy ``reject``). The Storage Service Class has no code for it;
#: Cannot understand (Cxxx) is the failure range whose low bits are ours to define, and
#: 0x111 echoes PS3.7 C.4's "Duplicate SOP Instance" (0111), which C-STORE may not use.
_STATUS_DUPLICATE_REFUSED = 0xC111

#: The C-STORE status answering each storage refusal (PS3.4 Table B.2-1 and the general
#: statuses PS3.7 9.1.1.1.9 allows): A7xx out of resources (disk full, I/O error);
#: A9xx data set does not match (its UIDs contradict the command, or Study/Series
#: Instance UID missing or not a UID); Cxxx cannot understand (not readable far enough
#: to find them); 0117 invalid SOP instance and 0122 SOP class not supported (the
#: command's UIDs are not UIDs).
_REFUSAL_STATUS = {
    Refusal.OUT_OF_RESOURCES: dimse_status.REFUSED_OUT_OF_RESOURCES,
    Refusal.DATASET_MISMATCH: dimse_status.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Refusal.UNREADABLE: dimse_status.ERROR_CANNOT_UNDERSTAND,
    Refusal.INVALID_INSTANCE_UID: dimse_status.INVALID_OBJECT_INSTANCE,
    Refusal.INVALID_SOP_CLASS_UID: dimse_status.REFUSED_SOP_CLASS_NOT_SUPPORTED,
    Refusal.DUPLICATE: _STATUS_DUPLICATE_REFUSED,
}


def refusal_status(kind: Refusal) -> int:
    """The C-STORE status that answers a store refused for ``kind``."""
    return _REFUSAL_STATUS[kind]


class _AssocInfo:
    """Per-association counters for the log line written when it closes."""

    __slots__ = ("started", "peer", "calling", "called", "instances", "failed", "bytes",
                 "holds_slot", "in_store")

    def __init__(self, peer: str) -> None:
        self.started = time.monotonic()
        self.peer = peer
        self.calling = "-"
        self.called = "-"
        self.instances = 0
        self.failed = 0
        self.bytes = 0
        self.holds_slot = False
        self.in_store = False


def _ae(title: bytes | None) -> str:
    """An AE title for a log line: the peer chooses these 16 bytes, so anything but
    printable ASCII is replaced (a line break must not forge a log line, CWE-117)."""
    if not title:
        return "-"
    text = bytes(title).strip(b" \x00").decode("ascii", "replace")
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text) or "-"


class _StoreSink:
    """One C-STORE's data set on its way to disk (an engine.services.Operation)."""

    __slots__ = ("worker", "info", "sop", "upload", "refused", "started")
    holds_reading = True

    def __init__(self, worker: Worker, info: _AssocInfo, sop: str, upload: Upload) -> None:
        self.worker = worker
        self.info = info
        self.sop = sop
        self.upload = upload
        self.refused: StoreRefused | None = None
        self.started = time.monotonic()

    def write(self, data: memoryview) -> None:
        if self.refused is None:
            try:
                self.upload.write(data)
            except StoreRefused as exc:  # the upload has already left no trace
                self.refused = exc

    async def finish(self) -> int | tuple[int, str | None]:
        worker = self.worker
        info = self.info
        try:
            if self.refused is not None:
                raise self.refused
            done = self.upload.finish()
            if not isinstance(done, InstanceRecord):
                await done
        except StoreRefused as exc:
            info.in_store = False
            return worker.store_failed(info, self.sop, exc)
        info.in_store = False
        worker.store_done(info, self.upload.size, time.monotonic() - self.started)
        return 0x0000

    def abort(self) -> None:
        self.upload.abort()
        self.info.in_store = False


class _Provider:
    """A service provider that is one callable."""

    __slots__ = ("start",)

    def __init__(self, start: Any) -> None:
        self.start = start


class Worker:
    def __init__(self, spec: Spec, ctl: socket.socket) -> None:
        cfg = spec.config
        self.spec = spec
        self.config = cfg
        self.k = spec.index
        self.ctl = ctl
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.slots = SharedSlots(spec.shm_fd, spec.workers)
        self.storage = StorageConfig(
            root=cfg.storage,
            durability=cfg.durability,
            duplicate_policy=cfg.duplicates,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        self.called_ae = cfg.aet
        self.limit = cfg.max_associations
        self.draining = False
        self.stopped = asyncio.Event()
        self.assocs: dict[Any, _AssocInfo] = {}
        self._unclaimed = 0
        # counters (cumulative for this process)
        self.instances = 0
        self.bytes = 0
        self.failures = 0
        self.associations = 0
        self.rejected = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        # listener channel
        self.channel: socket.socket | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(_PUBLISH_THREADS, thread_name_prefix="publish")
        self.store = PosixInstanceStore(
            self.storage, self.loop, self.executor,
            segment_label=f"w{self.k}", segment_bytes=cfg.journal_segment_bytes, on_rotate=self._rotated,
        )
        self.segment = self.store.segment_name or ""
        policy = AcceptorPolicy(
            ae_title=ae_title_bytes(cfg.aet, "aet").ljust(16, b" "),
            supported_contexts=supported_contexts(),
            maximum_pdu_size=cfg.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            require_called_aet=cfg.require_called_aet,
            require_calling_aet=tuple(ae_title_bytes(t, "require-calling-aet") for t in cfg.require_calling_aet),
        )
        self.server = AssociationServer(
            ServerConfig(
                policy=policy,
                handlers=evt.normalize_handlers([
                    (evt.EVT_CONN_OPEN, self._on_open),
                    (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_RELEASED, self._on_ended),
                    (evt.EVT_ABORTED, self._on_ended),
                    (evt.EVT_REJECTED, self._on_ended),
                ]),
                acse_timeout=cfg.acse_timeout,
                dimse_timeout=cfg.dimse_timeout,
                network_timeout=cfg.network_timeout,
                maximum_associations=None,
                ssl_context=ssl_context(cfg),
                allowed_networks=allowed_networks(cfg),
                services=ServiceRegistry()
                .add(_Provider(lambda request: 0x0000), [C_ECHO_RQ], [VerificationSOPClass])
                .add(_Provider(lambda request: self._open_sink(request.association, request)),
                     [C_STORE_RQ]),
                admission=self._admit,
            ),
            loop=self.loop,
        )

    # -- journal ----------------------------------------------------------------------

    def _rotated(self, name: str) -> None:
        """The store continues in segment ``name`` (the old one was full); it closes the
        old one, releasing its lock so its indexer finishes and deletes it, once the
        stores publishing into it are done."""
        old, self.segment = self.segment, name
        log.info("journal segment %s full, continuing in %s", old, name)

    # -- associations ---------------------------------------------------------------------

    def _admit(self) -> bool:
        """ServerConfig.admission: take a node-wide slot (the A-ASSOCIATE-RQ's AE-6)."""
        if self.draining or not self.slots.try_admit(self.k, self.limit):
            self.rejected += 1
            return False
        # Claimed by _on_requested in this same call stack; anything unclaimed by the
        # next loop turn was not (cannot happen, but must never leak).
        self._unclaimed += 1
        self.loop.call_soon(self._reconcile)
        return True

    def _reconcile(self) -> None:
        while self._unclaimed > 0:
            self._unclaimed -= 1
            self.slots.release(self.k)

    def _on_open(self, event: Any) -> None:
        assoc = event.assoc
        peer = event.address
        label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self.assocs[assoc] = _AssocInfo(label)

    def _info(self, assoc: Any) -> _AssocInfo:
        info = self.assocs.get(assoc)
        if info is None:
            info = self.assocs[assoc] = _AssocInfo(f"{assoc.requestor.address}:{assoc.requestor.port}")
        return info

    def _on_requested(self, event: Any) -> None:
        info = self._info(event.assoc)
        if self._unclaimed > 0:
            self._unclaimed -= 1
            info.holds_slot = True
        info.calling = _ae(event.request.calling_ae_title)
        info.called = _ae(event.request.called_ae_title)

    def _on_ended(self, event: Any) -> None:
        """Released, aborted or rejected: give the slot back now, before the peer can
        see the A-RELEASE-RP and connect again (the connection closes a little later)."""
        info = self.assocs.get(event.assoc)
        if info is not None and info.holds_slot:
            info.holds_slot = False
            self.slots.release(self.k)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("?", 0)
        try:
            assoc = await self.server.adopt(sock)
        except Exception as exc:  # TLS handshake failed, connection reset ...
            log.info("assoc peer=%s:%s worker=%d outcome=failed before association (%s)",
                     peer[0], peer[1], self.k, str(exc) or type(exc).__name__)
            self.slots.connection_done(self.k)
            return
        try:
            await asyncio.shield(assoc.closed)
        finally:
            self._closed(assoc)

    def _closed(self, assoc: Any) -> None:
        info = self.assocs.pop(assoc, None) or _AssocInfo("?")
        if info.holds_slot:
            info.holds_slot = False
            self.slots.release(self.k)
        self.slots.connection_done(self.k)
        if assoc.is_rejected and assoc.rejection is not None:
            outcome = f"rejected ({rejection_description(assoc.rejection)})"
        elif assoc.is_released:
            outcome = "released"
        elif assoc.is_aborted:
            detail = assoc.abort_info
            if detail is not None and detail.local:
                outcome = f"aborted by us ({detail.detail or 'abort'})"
            elif detail is not None and detail.source is None:
                outcome = "connection lost"
            else:
                outcome = "aborted by peer"
        else:
            outcome = "closed without association"
        if not assoc.is_rejected and info.calling != "-":
            self.associations += 1
        log.info(
            "assoc peer=%s calling=%s called=%s worker=%d instances=%d failed=%d bytes=%d duration=%.3fs outcome=%s",
            info.peer, info.calling, info.called, self.k, info.instances, info.failed, info.bytes,
            time.monotonic() - info.started, outcome,
        )

    # -- C-STORE --------------------------------------------------------------------------

    def _open_sink(self, assoc: Any, request: Any) -> Any:
        """The C-STORE provider: a sink for one C-STORE, or a status."""
        info = self._info(assoc)
        if self.draining:
            # Stopping: the stores in flight finish, new ones are not started.
            self.loop.call_soon(assoc.abort)
            return (dimse_status.REFUSED_OUT_OF_RESOURCES, "the node is shutting down")
        cmd = request.command
        sop = cmd.affected_sop_instance_uid
        try:
            upload = self.store.open(UploadRequest(
                sop_class_uid=cmd.affected_sop_class_uid,
                sop_instance_uid=sop,
                transfer_syntax_uid=request.transfer_syntax,
                calling_ae=info.calling,
                called_ae=self.called_ae,
            ))
        except StoreRefused as exc:
            return self.store_failed(info, sop, exc)
        info.in_store = True
        return _StoreSink(self, info, sop, upload)

    def store_done(self, info: _AssocInfo, size: int, seconds: float) -> None:
        info.instances += 1
        info.bytes += size
        self.instances += 1
        self.bytes += size
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def store_failed(self, info: _AssocInfo, sop: str, refused: StoreRefused) -> tuple[int, str]:
        info.failed += 1
        self.failures += 1
        status, reason = refusal_status(refused.kind), refused.reason
        log.warning("store refused: peer=%s calling=%s sop=%s status=0x%04X: %s",
                    info.peer, info.calling, sop, status, reason)
        # Error Comment (0000,0902) is LO: at most 64 printable characters (PS3.7 C.4).
        comment = "".join(c if " " <= c <= "~" else "?" for c in reason)[:_ERROR_COMMENT_MAX]
        return status, comment

    # -- listener channel -------------------------------------------------------------------

    def _attach_channel(self, sock: socket.socket) -> None:
        self._detach_channel()
        sock.setblocking(False)
        self.channel = sock
        self.loop.add_reader(sock.fileno(), self._on_channel)

    def _detach_channel(self) -> None:
        if self.channel is not None:
            self.loop.remove_reader(self.channel.fileno())
            self.channel.close()
            self.channel = None

    def _on_channel(self) -> None:
        channel = self.channel
        if channel is None:
            return
        fds, eof = recv_fds_batch(channel)
        for fd in fds:
            self.loop.create_task(self._serve(socket.socket(fileno=fd)))
        if eof:
            self._detach_channel()  # the listener went away; the supervisor sends a new one

    # -- control ----------------------------------------------------------------------------

    def _on_control(self) -> None:
        while True:
            try:
                got = recv_control(self.ctl)
            except BlockingIOError:
                return
            except (OSError, ValueError) as exc:
                log.error("control channel failed: %s", exc)
                got = None
            if got is None:
                self.loop.remove_reader(self.ctl.fileno())
                self.request_stop()
                return
            message, fd = got
            if isinstance(message, Stop):
                self.request_stop()
            elif isinstance(message, Attach) and fd is not None:
                sock = socket.socket(fileno=fd)
                if self.draining:
                    sock.close()
                else:
                    self._attach_channel(sock)
            elif fd is not None:
                os.close(fd)

    def _send_stats(self) -> None:
        stats = WorkerStats(
            instances=self.instances, bytes=self.bytes, failures=self.failures,
            associations=self.associations, rejected=self.rejected,
            active=len(self.server.active), segment=self.segment,
            latency_counts=list(self.latency_counts), latency_sum=self.latency_sum,
        )
        try:
            send_control(self.ctl, stats)
        except OSError:
            pass  # the supervisor is busy or gone; the next tick sends fresher numbers

    async def _stats_loop(self) -> None:
        while not self.stopped.is_set():
            self._send_stats()
            try:
                await asyncio.wait_for(self.stopped.wait(), _STATS_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    def request_stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()

    # -- life -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        self.ctl.setblocking(False)
        loop.add_reader(self.ctl.fileno(), self._on_control)
        if self.spec.channel_fd >= 0:
            self._attach_channel(socket.socket(fileno=self.spec.channel_fd))
        send_control(self.ctl, Ready(os.getpid(), self.segment))
        log.info("worker %d serving (journal %s, durability %s)", self.k, self.segment, self.config.durability)
        stats = loop.create_task(self._stats_loop())
        await self.stopped.wait()
        await self._drain()
        await stats
        self._send_stats()
        return 0

    async def _drain(self) -> None:
        self.draining = True
        channel = self.channel
        if channel is not None:
            # Connections already handed over are served (and refused 2/3/2).
            fds, _ = recv_fds_batch(channel)
            for fd in fds:
                self.loop.create_task(self._serve(socket.socket(fileno=fd)))
        self._detach_channel()
        active = len(self.server.active)
        if active:
            log.info("draining %d association(s), at most %.0f s", active, self.config.drain_timeout)
        idle_killer = self.loop.create_task(self._abort_idle())
        await self.server.close(self.config.drain_timeout)
        idle_killer.cancel()
        # Waits for the publications under way, commits, closes the journal segments.
        await self.store.aclose()
        self.executor.shutdown(wait=True)

    async def _abort_idle(self) -> None:
        while True:
            for assoc in list(self.server.active):
                info = self.assocs.get(assoc)
                if info is None or not info.in_store:
                    assoc.abort()
            await asyncio.sleep(_DRAIN_POLL_S)


def main(spec: Spec, ctl: socket.socket) -> int:
    worker = Worker(spec, ctl)
    try:
        return worker.loop.run_until_complete(worker.run())
    finally:
        worker.loop.close()
