"""A worker process: one uvloop loop running many associations through the engine.

Theory of operation: the worker wires parts; it does none of their work.

* The listener hands this process accepted TCP connections over a ``SOCK_SEQPACKET``
  channel (one descriptor per packet); each one is given to
  :meth:`engine.aio.AssociationServer.adopt`, which does the TLS handshake when the
  node has a certificate. A connection from a load balancer (``proxy-protocol-from``)
  first has its PROXY v2 header read (:mod:`workers.proxy`, within the ACSE timeout),
  and the client's address it names is given to ``adopt``; one from anyone else that
  starts with a PROXY header is closed.
* The DICOM services are the node's providers (:mod:`workers.services`, built by
  :func:`~workers.services.build_services`) over one ``storage.PosixInstanceStore``:
  each C-STORE is streamed into an upload and published per the configured durability;
  the store appends its record to this worker's journal segment, which is the whole
  hand-off to the index (the indexer owning this worker follows the segment, so the
  worker sends it nothing and never waits for it).
* Admission is node-wide (:class:`~workers.associations.Admission`: a slot in the
  shared :class:`~workers.ipc.SharedSlots`, or A-ASSOCIATE-RJ 2/3/2 at the limit) and
  each association's counters and closing log line are kept by
  :class:`~workers.associations.AssociationLog`, which also hears every store's outcome.

Memory per association is the engine's framing buffer (about one PDU) plus one open
file, whatever the instance size. The loop never fsyncs (the store's executor does) and
never blocks on the index.

On Drain (the node stopping behind a load balancer) the worker refuses new associations
(2/3/2) and serves the open ones as before. On Stop (or SIGTERM, or the supervisor
vanishing) the worker stops taking connections,
lets stores in flight finish, aborts idle associations, refuses new ones (2/3/2), and
after ``drain-timeout`` aborts what is left; then it closes the store (flushing what
it holds, closing the journal and releasing its lock) and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
from typing import Any

from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, evt
from engine.aio import AcceptorPolicy, AssociationServer, ServerConfig, address_allowed, new_event_loop
from storage import CatalogError, PendingRequests, PosixInstanceStore, StorageConfig, open_catalog, redact_url

from .associations import Admission, AssociationLog
from . import proxy
from .config import NodeConfig, ae_table, ae_title_bytes, allowed_networks, proxy_networks, ssl_context
from .ipc import (
    Attach,
    Drain,
    Ready,
    SharedSlots,
    Spec,
    Stop,
    WorkerStats,
    recv_control,
    recv_fds_batch,
    send_control,
)
from .services import COMMITMENT_DIRECTORY, NodeServices, Outbound, build_services

__all__ = ["main", "Worker", "storage_config", "acceptor_policy"]

log = logging.getLogger("scpfleet.worker")

# How often the supervisor hears this worker's counters.
_STATS_INTERVAL_S = 1.0
# While draining, how often idle associations are looked for and aborted.
_DRAIN_POLL_S = 0.1
# Threads running fsync/rename/fdatasync: they block in the kernel, not on the GIL, so a
# few overlap for real; more only queue on the same device.
_PUBLISH_THREADS = 8
# Threads reading the index for queries and retrieves, apart from the publishers so a
# long query never delays a store's fsync.
_QUERY_THREADS = 2


def storage_config(cfg: NodeConfig) -> StorageConfig:
    """The storage settings of a node (its files carry the engine's identity)."""
    return StorageConfig(
        root=cfg.storage,
        durability=cfg.durability,
        duplicate_policy=cfg.duplicates,
        digest=cfg.digest,
        incomplete=cfg.incomplete,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )


def acceptor_policy(cfg: NodeConfig, services: NodeServices) -> AcceptorPolicy:
    """What the node agrees to in association negotiation: its title, its limits and the
    presentation contexts its services serve."""
    return AcceptorPolicy(
        ae_title=ae_title_bytes(cfg.aet, "aet").ljust(16, b" "),
        supported_contexts=services.contexts,
        maximum_pdu_size=cfg.max_pdu,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        require_called_aet=cfg.require_called_aet,
        require_calling_aet=tuple(ae_title_bytes(t, "require-calling-aet")
                                  for t in cfg.require_calling_aet),
        any_other_context=services.any_other,
    )


def _open_catalog(cfg: NodeConfig) -> Any:
    """The node's index, read-only (the indexers write it), for query, retrieve and
    commitment; None when those are all off or it cannot be read (then only Verification
    and Storage are served, and the reason is logged)."""
    if not (cfg.query or cfg.retrieve or cfg.commitment):
        return None
    try:
        # A shared index is connected to on first use (and again after a failure).
        return open_catalog(cfg.index_path, read_only=True, node=cfg.node, lazy=True)
    except CatalogError as exc:
        log.error("index %s cannot be read (%s): query, retrieve and commitment are off",
                  redact_url(cfg.index_path), exc)
        return None


class Worker:
    def __init__(self, spec: Spec, ctl: socket.socket) -> None:
        cfg = spec.config
        self.spec = spec
        self.config = cfg
        self.slot = spec.index
        self.ctl = ctl
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.draining = False
        self.stopped = asyncio.Event()
        self.channel: socket.socket | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(_PUBLISH_THREADS,
                                                              thread_name_prefix="publish")
        self.store = PosixInstanceStore(
            storage_config(cfg), self.loop, self.executor,
            segment_label=f"w{self.slot}", segment_bytes=cfg.journal_segment_bytes,
            on_rotate=self._rotated,
        )
        self.segment = self.store.segment_name or ""
        self.admission = Admission(SharedSlots(spec.shm_fd, spec.workers), self.slot,
                                   cfg.max_associations, self.loop)
        self.log = AssociationLog(self.slot)
        self.query_executor = concurrent.futures.ThreadPoolExecutor(_QUERY_THREADS,
                                                                    thread_name_prefix="query")
        self.catalog = _open_catalog(cfg)
        self.services = build_services(
            self.store, called_ae=cfg.aet, observer=self.log,
            catalog=self.catalog,
            pending=PendingRequests(cfg.storage, COMMITMENT_DIRECTORY),
            ae_table=ae_table(cfg),
            outbound=Outbound(cfg.aet, cfg.max_pdu, cfg.acse_timeout, cfg.dimse_timeout,
                              cfg.network_timeout),
            query=cfg.query, retrieve=cfg.retrieve, commitment=cfg.commitment,
            commitment_verify=cfg.commitment_verify,
            executor=self.query_executor,
            unknown_sop_classes=cfg.sop_classes == "any",
            node=cfg.node if cfg.index_shared else None,
        )
        #: Load balancers whose connections start with a PROXY v2 header (None: none).
        self.proxy_from = proxy_networks(cfg)
        self.server = AssociationServer(
            ServerConfig(
                policy=acceptor_policy(cfg, self.services),
                handlers=evt.normalize_handlers([
                    (evt.EVT_CONN_OPEN, self._on_open),
                    (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_RELEASED, self._on_ended),
                    (evt.EVT_ABORTED, self._on_ended),
                    (evt.EVT_REJECTED, self._on_ended),
                ]),
                services=self.services.registry,
                acse_timeout=cfg.acse_timeout,
                dimse_timeout=cfg.dimse_timeout,
                network_timeout=cfg.network_timeout,
                maximum_associations=None,
                ssl_context=ssl_context(cfg),
                allowed_networks=allowed_networks(cfg),
                admission=self.admission.admit,
            ),
            loop=self.loop,
        )

    def _rotated(self, name: str) -> None:
        """The store continues in segment ``name`` (the old one was full); it closes the
        old one, releasing its lock so its indexer finishes and deletes it, once the
        stores publishing into it are done."""
        old, self.segment = self.segment, name
        log.info("journal segment %s full, continuing in %s", old, name)

    # -- associations ---------------------------------------------------------------------

    def _on_open(self, event: Any) -> None:
        self.log.opened(event.assoc, event.address)

    def _on_requested(self, event: Any) -> None:
        self.admission.claim(event.assoc)
        self.log.requested(event.assoc)

    def _on_ended(self, event: Any) -> None:
        """Released, aborted or rejected: give the slot back now, before the peer can
        see the A-RELEASE-RP and connect again (the connection closes a little later)."""
        self.admission.release(event.assoc)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("?", 0)
        relayed = None
        if self.proxy_from is not None:
            try:
                relayed = await self._relayed_peer(sock, peer)
            except proxy.ProxyError as exc:
                log.warning("connection from %s:%s closed: %s", peer[0], peer[1], exc)
                sock.close()
                self.admission.slots.connection_done(self.slot)
                return
        try:
            assoc = await self.server.adopt(sock, peer=relayed)
        except Exception as exc:  # TLS handshake failed, connection reset ...
            self.log.failed_before_association(peer, str(exc) or type(exc).__name__)
            self.admission.slots.connection_done(self.slot)
            return
        try:
            await asyncio.shield(assoc.closed)
        finally:
            self.admission.release(assoc)
            self.admission.slots.connection_done(self.slot)
            self.log.closed(assoc)

    async def _relayed_peer(self, sock: socket.socket, peer: Any) -> tuple[str, int] | None:
        """The client a balancer relays ``sock`` for (None: the socket's own peer is the
        client, or the balancer's own LOCAL connection). Raises :class:`proxy.ProxyError`
        for a balancer's connection without a valid header, and for a PROXY header from
        anyone else."""
        sock.setblocking(False)
        timeout = self.config.acse_timeout
        if isinstance(peer, tuple) and address_allowed(str(peer[0]), self.proxy_from):
            header = await proxy.read_header(sock, timeout)
            return header.source
        if proxy.starts_like_proxy(await proxy.peek(sock, timeout)):
            raise proxy.ProxyError("PROXY header from an address not in proxy-protocol-from")
        return None

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
            elif isinstance(message, Drain):
                self.admission.accepting = False  # new associations are refused 2/3/2
            elif isinstance(message, Attach) and fd is not None:
                sock = socket.socket(fileno=fd)
                if self.draining:
                    sock.close()
                else:
                    self._attach_channel(sock)
            elif fd is not None:
                os.close(fd)

    def stats(self) -> WorkerStats:
        book = self.log
        return WorkerStats(
            instances=book.instances, bytes=book.bytes, failures=book.failures,
            associations=book.associations, rejected=self.admission.rejected,
            active=len(self.server.active), segment=self.segment,
            latency_counts=list(book.latency_counts), latency_sum=book.latency_sum,
        )

    def _send_stats(self) -> None:
        try:
            send_control(self.ctl, self.stats())
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
        log.info("worker %d serving (journal %s, durability %s)", self.slot, self.segment,
                 self.config.durability)
        await self.services.start()
        stats = loop.create_task(self._stats_loop())
        await self.stopped.wait()
        await self._drain()
        await stats
        self._send_stats()
        return 0

    async def _drain(self) -> None:
        self.draining = True
        self.admission.accepting = False
        self.services.stop_accepting()
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
        await self.services.aclose()
        # Waits for the publications under way, commits, closes the journal segments.
        await self.store.aclose()
        self.executor.shutdown(wait=True)
        self.query_executor.shutdown(wait=True)
        if self.catalog is not None:
            self.catalog.close()

    async def _abort_idle(self) -> None:
        while True:
            for assoc in list(self.server.active):
                if not assoc.in_store:
                    assoc.abort()
            await asyncio.sleep(_DRAIN_POLL_S)


def main(spec: Spec, ctl: socket.socket) -> int:
    worker = Worker(spec, ctl)
    try:
        return worker.loop.run_until_complete(worker.run())
    finally:
        worker.loop.close()
