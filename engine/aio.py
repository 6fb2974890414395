"""The asyncio adapter: associations and servers on an event loop (uvloop when present).

Theory of operation: an :class:`Association` owns one sans-IO
:class:`~engine._connection.Connection` and one transport. The protocol object feeds
every received chunk to the connection, then *pumps*: writes what the core produced
with ``transport.writelines``, dispatches the core's events to the service user, and
closes the transport when the machine asks. Timers are ``loop.call_at`` handles on the
loop's clock: the ARTIM deadline comes from the core; the network timeout (idle peer)
and DIMSE timeout (a message stalled halfway, or a response not coming) are enforced
here.

Received C-STORE data sets stream: on the command, a *store sink* is opened (the
storage node's streaming writer, or a buffering sink that calls an ``EVT_C_STORE``
handler); each data fragment goes to ``sink.write`` as the memoryview the framer made;
after the last one ``await sink.finish()`` returns the status, and only then is the
C-STORE-RSP sent. While a sink finishes, reading is paused and later events wait in
order: backpressure reaches the peer through TCP instead of through our memory.

The requestor side (:func:`associate`) offers ``send_c_echo``/``send_c_store`` as
coroutines; a Part 10 file is streamed from disk in PDU-sized reads without decoding.
No threads, no polling: everything runs on the loop that owns the transport.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import socket
import ssl as _ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

from pydicom.dataset import Dataset

from . import evt, status as _status
from ._acse import (
    AcceptorPolicy,
    build_request,
    evaluate_request,
    provider_check,
    rejection_description,
)
from ._connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    CommandReceived,
    Connection,
    DatasetFragment,
    ReleaseConfirmed,
    ReleaseRequested,
)
from ._dimse import (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    encode_command,
    fragment_message,
    iter_dataset_pdus,
)
from ._errors import ABORT_SOURCE_USER, LocalProtocolError
from ._fsm import Event, State
from ._pdu import AAssociateRJ
from .dataset import UNCOMPRESSED, dataset_transfer_syntax, encode_dataset
from .presentation import PresentationContext, negotiate_as_requestor

__all__ = [
    "Association",
    "AssociationServer",
    "ServerConfig",
    "RequestorConfig",
    "StoreRequest",
    "StoreSink",
    "associate",
    "address_allowed",
    "install_uvloop",
    "new_event_loop",
    "ServiceUserInfo",
]

log = logging.getLogger("scpfleet.engine")

#: Bytes read from a Part 10 file per read() when streaming it: big enough to amortise
#: the syscall, small enough that a multi-GB file never sits in memory.
_FILE_READ_SIZE = 1 << 20
#: Transport write-buffer high-water mark before a streaming send waits for drain.
_WRITE_HIGH_WATER = 4 << 20
#: How long a closing transport may take to flush when no ARTIM time is configured.
_CLOSE_GRACE_S = 30.0


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed; return whether it is."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when available, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# ---------------------------------------------------------------------------------------
# Value objects


@dataclass
class ServiceUserInfo:
    """One end of an association (pynetdicom's ``assoc.requestor``/``assoc.acceptor``)."""

    ae_title: bytes = b""
    address: str = ""
    port: int = 0
    maximum_length: int = 0
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    user_identity: Any = None


class StoreRequest:
    """A received C-STORE-RQ, with pynetdicom-style attribute names for handlers."""

    __slots__ = ("command", "context_id", "transfer_syntax")

    def __init__(self, command: CStoreRQ, context_id: int, transfer_syntax: str) -> None:
        self.command = command
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax

    MessageID = property(lambda self: self.command.message_id)
    AffectedSOPClassUID = property(lambda self: self.command.affected_sop_class_uid)
    AffectedSOPInstanceUID = property(lambda self: self.command.affected_sop_instance_uid)
    Priority = property(lambda self: self.command.priority)
    MoveOriginatorApplicationEntityTitle = property(
        lambda self: self.command.move_originator_application_entity_title
    )
    MoveOriginatorMessageID = property(lambda self: self.command.move_originator_message_id)

    def __repr__(self) -> str:
        return (
            f"StoreRequest(msg={self.command.message_id}, "
            f"sop={self.command.affected_sop_instance_uid})"
        )


class StoreSink(Protocol):
    """Where one received C-STORE data set goes, fragment by fragment."""

    def write(self, data: memoryview) -> None:
        """Take the next fragment (a view valid as long as the sink keeps it)."""

    async def finish(self) -> int | tuple[int, str | None]:
        """All fragments written: make it durable, return the status (and comment)."""

    def abort(self) -> None:
        """The message will never complete: drop everything, leave no trace."""


#: ``factory(assoc, request) -> sink`` opens a sink; returning an int refuses the
#: message with that status (its data set is then read and discarded).
StoreSinkFactory = Callable[["Association", StoreRequest], "StoreSink | int"]


@dataclass
class ServerConfig:
    """Everything an :class:`AssociationServer` needs, passed in (never globals)."""

    policy: AcceptorPolicy
    handlers: dict = field(default_factory=dict)
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 30.0
    network_timeout: float | None = 60.0
    maximum_associations: int | None = 10
    ssl_context: _ssl.SSLContext | None = None
    store_sink_factory: StoreSinkFactory | None = None
    #: Optional node-wide admission test, replacing the per-server count: returns True
    #: when one more association may be accepted.
    admission: Callable[[], bool] | None = None
    ae: Any = None
    #: Peer address allow-list: None admits every address; otherwise a connection whose
    #: peer address lies in none of these networks is closed before any PDU is read (no
    #: A-ASSOCIATE-RJ: an unknown host learns nothing, not even that this is DICOM).
    allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None


def address_allowed(
    host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None
) -> bool:
    """Whether peer address ``host`` lies in one of ``networks`` (None: any address).

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, a dual-stack socket) is judged as
    the IPv4 address it carries; anything that is not an IP address is refused.
    """
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass
class RequestorConfig:
    """Settings of an association we request."""

    calling_ae_title: bytes
    called_ae_title: bytes
    contexts: Sequence[PresentationContext]
    maximum_pdu_size: int = 16382
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    extended: Sequence[Any] = ()
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 30.0
    network_timeout: float | None = 60.0
    handlers: dict = field(default_factory=dict)
    ae: Any = None


# ---------------------------------------------------------------------------------------
# The protocol object: as thin as it can be.


class _ULProtocol(asyncio.Protocol):
    __slots__ = ("assoc",)

    def __init__(self, assoc: "Association") -> None:
        self.assoc = assoc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - a socket closed under us
                pass
        self.assoc._transport_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.assoc._data_received(data)

    def eof_received(self) -> bool:
        return False  # a half-closed DICOM connection is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.assoc._connection_lost(exc)

    def pause_writing(self) -> None:
        self.assoc._pause_writing()

    def resume_writing(self) -> None:
        self.assoc._resume_writing()


class _BufferingSink:
    """Collects a data set in memory, then calls the ``EVT_C_STORE`` handler."""

    __slots__ = ("assoc", "request", "parts")

    def __init__(self, assoc: "Association", request: StoreRequest) -> None:
        self.assoc = assoc
        self.request = request
        self.parts: list[memoryview] = []

    def write(self, data: memoryview) -> None:
        # The framer's views point into immutable bytes: keeping them is safe.
        self.parts.append(data)

    async def finish(self) -> int | tuple[int, str | None]:
        raw = b"".join(self.parts)
        self.parts = []
        assoc = self.assoc
        context = assoc._context(self.request.context_id)
        event = evt.Event(
            assoc, evt.EVT_C_STORE, request=self.request, context=context, raw=raw
        )
        return await assoc._intervene(evt.EVT_C_STORE, event, _NO_STORE_HANDLER)

    def abort(self) -> None:
        self.parts = []


#: The answer when nobody handles C-STORE: refuse rather than acknowledge and drop.
_NO_STORE_HANDLER = (_status.ERROR_CANNOT_UNDERSTAND, "no C-STORE handler is bound")


class _DiscardSink:
    """Reads a refused message's data set to its end and forgets it."""

    __slots__ = ("status",)

    def __init__(self, status: int | tuple[int, str | None]) -> None:
        self.status = status

    def write(self, data: memoryview) -> None:
        pass

    async def finish(self) -> int | tuple[int, str | None]:
        return self.status

    def abort(self) -> None:
        pass


# ---------------------------------------------------------------------------------------
# The association


class Association:
    """One DICOM association, either role, on an asyncio transport.

    State flags follow pynetdicom: ``is_established``, ``is_rejected``, ``is_aborted``,
    ``is_released``. ``accepted_contexts``/``rejected_contexts`` hold the negotiated
    presentation contexts. Requestor methods are coroutines.
    """

    def __init__(
        self,
        *,
        is_requestor: bool,
        loop: asyncio.AbstractEventLoop,
        handlers: dict,
        acse_timeout: float | None,
        dimse_timeout: float | None,
        network_timeout: float | None,
        maximum_pdu_size: int,
        ae: Any = None,
        server: "AssociationServer | None" = None,
    ) -> None:
        self.loop = loop
        self.ae = ae
        self.server = server
        self.handlers = handlers
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.is_requestor = is_requestor
        self.conn = Connection(
            is_requestor=is_requestor,
            max_pdu_receive=maximum_pdu_size,
            artim_timeout=acse_timeout,
            acceptable=None if is_requestor else self._provider_check,
        )
        self.requestor = ServiceUserInfo()
        self.acceptor = ServiceUserInfo()
        self.accepted_contexts: list[PresentationContext] = []
        self.rejected_contexts: list[PresentationContext] = []
        self.is_established = False
        self.is_rejected = False
        self.is_aborted = False
        self.is_released = False
        self.rejection: AAssociateRJ | None = None
        self.abort_info: Aborted | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self._established: asyncio.Future[bool] = loop.create_future()
        self._released: asyncio.Future[bool] = loop.create_future()
        self._responses: dict[int, asyncio.Future] = {}
        self._backlog: collections.deque = collections.deque()
        self._busy = False
        self._sink: Any = None
        self._store_request: StoreRequest | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._last_rx = loop.time()
        self._message_id = 0
        self._counted = False
        self._contexts_by_id: dict[int, PresentationContext] = {}
        self._send_lock = asyncio.Lock()
        #: Callables given each association-level event (DULServiceProvider's view).
        self.dul_observers: list[Callable[[Any], None]] = []

    # -- transport callbacks --------------------------------------------------------------

    def _transport_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        if self.server is not None and not self.server.peer_allowed(peer):
            # Closed before the state machine starts: no PDU is read or answered.
            log.warning("connection from %s refused: address not allowed", peer)
            transport.abort()
            return
        if self.server is not None:
            self.server._register(self)
        local = transport.get_extra_info("sockname") or ("", 0)
        remote, me = (self.acceptor, self.requestor) if self.is_requestor else (
            self.requestor,
            self.acceptor,
        )
        if isinstance(peer, tuple):
            remote.address, remote.port = peer[0], peer[1]
        if isinstance(local, tuple):
            me.address, me.port = local[0], local[1]
        now = self.loop.time()
        self._last_rx = now
        self._notify(evt.EVT_CONN_OPEN, address=peer)
        self.conn.connection_made(now)
        self._pump()

    def _data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._last_rx = now
        self.conn.receive_data(data, now)
        self._pump()

    def _connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(self.loop.time())
        self._pump()
        self._finalize()

    def _pause_writing(self) -> None:
        if self._write_waiter is None:
            self._write_waiter = self.loop.create_future()
        if not self.is_requestor and self.transport is not None:
            # A peer that sends requests but does not read our answers must not make us
            # queue them without bound: read no more until the transport has drained.
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):  # closing or not a reading transport
                pass

    def _resume_writing(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        transport = self.transport
        if (not self.is_requestor and not self._busy and transport is not None
                and not transport.is_closing()):
            try:
                transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    async def _drain(self) -> None:
        waiter = self._write_waiter
        if waiter is not None:
            await waiter

    # -- the pump -----------------------------------------------------------------------

    def _pump(self) -> None:
        conn = self.conn
        transport = self.transport
        while True:
            out = conn.data_to_send()
            if out and transport is not None and not transport.is_closing():
                transport.writelines(out)
            events = conn.events()
            if not events:
                break
            for event in events:
                if self._busy:
                    self._backlog.append(event)
                else:
                    self._dispatch(event)
        if conn.wants_close:
            self._close_transport()
        self._arm_timer()

    def _close_transport(self) -> None:
        """Close the transport, flushing what is buffered; a peer that does not take it
        within the ARTIM time is dropped (it must not hold the connection, and the
        association slot counted until it closes, for as long as it declines to read)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        grace = self.acse_timeout if self.acse_timeout is not None else _CLOSE_GRACE_S
        self.loop.call_later(grace, self._drop_transport, transport)

    def _drop_transport(self, transport: asyncio.Transport) -> None:
        if not self.closed.done():
            transport.abort()

    def _arm_timer(self) -> None:
        """Keep one loop timer at or before the earliest deadline (ARTIM, idle).

        Every received chunk moves the idle deadline later; a timer already armed for an
        earlier moment is kept (when it fires, :meth:`_on_timer` re-checks and re-arms),
        so the hot path does not cancel and create a timer per chunk.
        """
        deadline = self.conn.next_deadline()
        idle = self._idle_deadline()
        if idle is not None and (deadline is None or idle < deadline):
            deadline = idle
        armed = self._timer_at
        if armed is not None and (deadline is None or armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _idle_deadline(self) -> float | None:
        """Network timeout (idle peer) or DIMSE timeout (message stalled halfway)."""
        if self.transport is None or self.closed.done() or self._busy:
            return None
        if self._store_request is not None and self.dimse_timeout is not None:
            return self._last_rx + self.dimse_timeout
        if self.network_timeout is not None and self.conn.is_established:
            return self._last_rx + self.network_timeout
        return None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        self.conn.handle_timer(now)
        idle = self._idle_deadline()
        if idle is not None and now >= idle:
            what = "DIMSE" if self._store_request is not None else "network"
            log.warning("%s: %s timeout, aborting", self._peer_label(), what)
            self._local_abort(f"{what} timeout")
        self._pump()

    def _local_abort(self, detail: str) -> None:
        self.conn.abort(self.loop.time(), ABORT_SOURCE_USER, 0)
        if self.abort_info is None:
            self.abort_info = Aborted(ABORT_SOURCE_USER, 0, local=True, detail=detail)
        self._mark_aborted()
        # After our A-ABORT the association no longer exists: do not wait for the peer.
        if self.transport is not None and not self.transport.is_closing():
            self._pump()
            self._close_transport()

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is DatasetFragment:
            self._on_fragment(event)
            return
        if kind is CommandReceived:
            self._on_command(event)
            return
        for observe in self.dul_observers:
            observe(event)
        if kind is AssociationRequested:
            self._on_requested(event)
        elif kind is AssociationAccepted:
            self._on_accepted(event)
        elif kind is AssociationRejected:
            self._on_rejected(event)
        elif kind is ReleaseRequested:
            if self.conn.machine.transition_for(Event.Evt14) is None:
                # A PDU read together with the A-RELEASE-RQ already ended the association
                # (Sta8 + Evt10 -> AA-8, Evt16 -> AA-3), or this is the acceptor's side of
                # a collision (Sta10), which answers only after the A-RELEASE-RP.
                return
            # PS3.8 Table 9-10: the requestor answers a collision at once (Sta9, AR-9);
            # the acceptor (Sta10) must first receive the A-RELEASE-RP (AR-10, Sta12).
            if not event.collision or self.is_requestor:
                self.conn.release_response(self.loop.time())
            if not event.collision:
                self._mark_released()
        elif kind is ReleaseConfirmed:
            if self.conn.state is State.Sta12:
                self.conn.release_response(self.loop.time())
            self._mark_released()
        elif kind is Aborted:
            if self.abort_info is None:
                self.abort_info = event
            if event.local and event.detail:
                log.warning("%s: aborting: %s", self._peer_label(), event.detail)
            self._mark_aborted()

    def _provider_check(self, rq: Any) -> AAssociateRJ | None:
        server = self.server
        if server is None:
            return provider_check(rq)
        if server.config.admission is not None:
            rj = provider_check(rq)
            if rj is None and not server.config.admission():
                rj = provider_check(rq, active=1, maximum=0)
                # Recorded like a service-user rejection, for the server's logs and stats.
                self.rejection = rj
                self.is_rejected = True
            return rj
        return provider_check(
            rq, active=server.established_count, maximum=server.config.maximum_associations
        )

    def _on_requested(self, event: AssociationRequested) -> None:
        if self.conn.state is not State.Sta3:
            # A PDU read together with the A-ASSOCIATE-RQ already ended the association
            # (Sta3 + Evt10/Evt12/... -> AA-8, Evt16 -> AA-3): there is nothing to answer.
            return
        rq = event.request
        ui = rq.user_information
        self.requestor.ae_title = rq.calling_ae_title
        self.requestor.maximum_length = ui.max_length or 0
        self.requestor.implementation_class_uid = ui.implementation_class_uid
        self.requestor.implementation_version_name = ui.implementation_version_name
        self.requestor.user_identity = ui.user_identity_rq
        self.acceptor.ae_title = rq.called_ae_title
        self._notify(evt.EVT_REQUESTED, request=rq)
        server = self.server
        assert server is not None  # only acceptors are requested; set by the server
        policy = server.config.policy
        response = None
        if ui.user_identity_rq is not None and evt.EVT_USER_ID in self.handlers:
            verified, response = self._call_sync_intervention(
                evt.EVT_USER_ID,
                evt.Event(
                    self,
                    evt.EVT_USER_ID,
                    user_id_type=ui.user_identity_rq.identity_type,
                    primary_field=ui.user_identity_rq.primary_field,
                    secondary_field=ui.user_identity_rq.secondary_field,
                ),
                (False, None),
            )
            if not verified:
                rj = AAssociateRJ(result=1, source=1, reason=1)
                self._reject(rj)
                return
        answer, contexts = evaluate_request(rq, policy, user_identity_response=response)
        if isinstance(answer, AAssociateRJ):
            self._reject(answer)
            return
        self.acceptor.ae_title = policy.ae_title
        self.acceptor.maximum_length = policy.maximum_pdu_size
        self._set_contexts(contexts)
        self.conn.accept(answer, self.loop.time())
        self.is_established = True
        server.established_count += 1
        self._counted = True
        if not self._established.done():
            self._established.set_result(True)
        self._notify(evt.EVT_ACCEPTED, accept=answer)
        self._notify(evt.EVT_ESTABLISHED)

    def _reject(self, rj: AAssociateRJ) -> None:
        self.rejection = rj
        self.is_rejected = True
        log.info("%s: rejected: %s", self._peer_label(), rejection_description(rj))
        self.conn.reject(rj, self.loop.time())
        if not self._established.done():
            self._established.set_result(False)
        self._notify(evt.EVT_REJECTED, reject=rj)

    def _set_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        self.accepted_contexts = [cx for cx in contexts if cx.result == 0]
        self.rejected_contexts = [cx for cx in contexts if cx.result != 0]
        self._contexts_by_id = {cx.context_id: cx for cx in self.accepted_contexts}

    def _context(self, context_id: int) -> PresentationContext | None:
        return self._contexts_by_id.get(context_id)

    def _on_accepted(self, event: AssociationAccepted) -> None:
        ac = event.accept
        ui = ac.user_information
        self.acceptor.maximum_length = ui.max_length or 0
        self.acceptor.implementation_class_uid = ui.implementation_class_uid
        self.acceptor.implementation_version_name = ui.implementation_version_name
        try:
            contexts = negotiate_as_requestor(
                list(self._requested_contexts), ac.presentation_contexts, ui.role_selections
            )
        except Exception as exc:  # RemoteProtocolError: the AC contradicts our RQ
            log.warning("%s: invalid A-ASSOCIATE-AC: %s", self._peer_label(), exc)
            self._local_abort(f"invalid A-ASSOCIATE-AC: {exc}")
            if not self._established.done():
                self._established.set_result(False)
            return
        self._set_contexts(contexts)
        self.is_established = True
        if not self._established.done():
            self._established.set_result(True)
        self._notify(evt.EVT_ACCEPTED, accept=ac)
        self._notify(evt.EVT_ESTABLISHED)

    def _on_rejected(self, event: AssociationRejected) -> None:
        self.rejection = event.reject
        self.is_rejected = True
        if not self._established.done():
            self._established.set_result(False)
        self._notify(evt.EVT_REJECTED, reject=event.reject)

    def _mark_released(self) -> None:
        if not self.is_released and not self.is_aborted:
            self.is_released = True
            self.is_established = False
            self._notify(evt.EVT_RELEASED)
        if not self._released.done():
            self._released.set_result(True)

    def _mark_aborted(self) -> None:
        if self.is_aborted or self.is_released:
            return
        self.is_aborted = True
        self.is_established = False
        self._drop_sink()
        self._fail_waiters()
        self._notify(evt.EVT_ABORTED)

    def _finalize(self) -> None:
        if self.closed.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.is_established and not self.is_released:
            # The transport went away under an established association (AA-4).
            self._mark_aborted()
        self.is_established = False
        self._drop_sink()
        self._fail_waiters()
        if not self._established.done():
            self._established.set_result(False)
        if self._counted and self.server is not None:
            self.server.established_count -= 1
            self._counted = False
        self._notify(evt.EVT_CONN_CLOSE)
        self.closed.set_result(None)
        if self.server is not None:
            self.server._forget(self)
        self._resume_writing()

    def _fail_waiters(self) -> None:
        for fut in self._responses.values():
            if not fut.done():
                fut.set_result(None)
        self._responses.clear()
        if not self._released.done():
            self._released.set_result(False)

    # -- acceptor: DIMSE messages ---------------------------------------------------------

    def _on_command(self, event: CommandReceived) -> None:
        if not self.conn.is_established:
            # The association ended (we aborted on an earlier message of the same read):
            # a message decoded before that must not be served or stored.
            return
        cmd = event.command
        kind = type(cmd)
        if kind is CStoreRQ:
            self._on_store(event.context_id, cmd)
        elif kind is CEchoRQ:
            self._on_echo(event.context_id, cmd)
        elif kind is CEchoRSP or kind is CStoreRSP:
            fut = self._responses.pop(cmd.message_id_being_responded_to, None)
            if fut is not None and not fut.done():
                fut.set_result(cmd)
            else:
                log.warning("%s: unexpected response %r", self._peer_label(), cmd)
        else:
            self._on_unknown(event.context_id, cmd)

    def _on_echo(self, context_id: int, cmd: CEchoRQ) -> None:
        if self._context(context_id) is None:
            self._local_abort(f"C-ECHO on presentation context {context_id} not accepted")
            return
        if evt.EVT_C_ECHO not in self.handlers:
            self._respond(context_id, CEchoRSP(
                message_id_being_responded_to=cmd.message_id,
                status=_status.SUCCESS,
                affected_sop_class_uid=cmd.affected_sop_class_uid,
            ))
            return
        event = evt.Event(self, evt.EVT_C_ECHO, request=cmd, context=self._context(context_id))
        self._run_blocking(
            self._intervene(evt.EVT_C_ECHO, event, _status.SUCCESS),
            lambda result: self._respond(context_id, CEchoRSP(
                message_id_being_responded_to=cmd.message_id,
                status=_status_of(result)[0],
                affected_sop_class_uid=cmd.affected_sop_class_uid,
                error_comment=_status_of(result)[1],
            )),
        )

    def _on_store(self, context_id: int, cmd: CStoreRQ) -> None:
        context = self._context(context_id)
        if context is None:
            self._local_abort(f"C-STORE on presentation context {context_id} not accepted")
            return
        if not cmd.has_dataset:
            # PS3.7 Table 9.3-1: a C-STORE-RQ always carries a data set. Answer at once:
            # no data will come to finish a sink, so none may be opened.
            self._respond(context_id, CStoreRSP(
                message_id_being_responded_to=cmd.message_id,
                status=_status.ERROR_CANNOT_UNDERSTAND,
                affected_sop_class_uid=cmd.affected_sop_class_uid,
                affected_sop_instance_uid=cmd.affected_sop_instance_uid,
                error_comment="C-STORE-RQ without a data set",
            ))
            return
        request = StoreRequest(cmd, context_id, str(context.transfer_syntax[0]))
        self._store_request = request
        if cmd.affected_sop_class_uid != str(context.abstract_syntax):
            # PS3.4 B.2.3: the SOP class is not the one negotiated for this context.
            self._sink = _DiscardSink(
                (_status.REFUSED_SOP_CLASS_NOT_SUPPORTED,
                 "SOP class differs from the presentation context's abstract syntax")
            )
            return
        factory = self.server.config.store_sink_factory if self.server else None
        try:
            sink = factory(self, request) if factory is not None else _BufferingSink(
                self, request
            )
        except Exception as exc:  # a sink that cannot open is out of resources
            log.exception("%s: cannot open a store sink", self._peer_label())
            sink = (_status.REFUSED_OUT_OF_RESOURCES, f"cannot store: {exc}")
        if isinstance(sink, (int, tuple)):
            sink = _DiscardSink(sink)
        self._sink = sink

    def _on_fragment(self, event: DatasetFragment) -> None:
        sink = self._sink
        if sink is None:  # the assembler guarantees a command came first
            return
        try:
            sink.write(event.data)
        except Exception as exc:
            log.exception("%s: store sink write failed", self._peer_label())
            sink.abort()
            sink = self._sink = _DiscardSink(
                (_status.REFUSED_OUT_OF_RESOURCES, f"cannot store: {exc}")
            )
        if not event.is_last:
            return
        request = self._store_request
        self._sink = None
        assert request is not None  # set together with the sink
        self._run_blocking(
            _finish_sink(sink),
            lambda result: self._store_done(request, result),
        )

    def _store_done(self, request: StoreRequest, result: Any) -> None:
        self._store_request = None
        code, comment = _status_of(result)
        cmd = request.command
        self._respond(request.context_id, CStoreRSP(
            message_id_being_responded_to=cmd.message_id,
            status=code,
            affected_sop_class_uid=cmd.affected_sop_class_uid,
            affected_sop_instance_uid=cmd.affected_sop_instance_uid,
            error_comment=comment,
        ))

    def _on_unknown(self, context_id: int, cmd: Any) -> None:
        log.warning("%s: unsupported DIMSE command %r", self._peer_label(), cmd)
        self._local_abort("unsupported DIMSE service")

    def _respond(self, context_id: int, message: Any) -> None:
        if not self.conn.is_established:
            return
        try:
            self.conn.send_message(context_id, message, None, self.loop.time())
        except LocalProtocolError:
            return  # the association ended while we were busy; nothing to answer
        self._pump()

    def _run_blocking(self, awaitable: Awaitable, then: Callable[[Any], None]) -> None:
        """Run ``awaitable``; hold later events (and reading) until ``then`` ran."""
        self._busy = True
        if self.transport is not None:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):  # closing or not a reading transport
                pass
        task = self.loop.create_task(awaitable)  # type: ignore[arg-type]
        task.add_done_callback(lambda t: self._unblock(t, then))

    def _unblock(self, task: asyncio.Task, then: Callable[[Any], None]) -> None:
        if task.cancelled():  # the loop shutting down under a slow sink or handler
            result = (_status.ERROR_CANNOT_UNDERSTAND, "cancelled")
        else:
            try:
                result = task.result()
            except Exception as exc:  # a handler's bug must not kill the association
                log.exception("%s: handler failed", self._peer_label())
                result = (_status.ERROR_CANNOT_UNDERSTAND, f"handler failed: {exc}")
        self._busy = False
        then(result)
        while self._backlog and not self._busy:
            self._dispatch(self._backlog.popleft())
        if (not self._busy and self._write_waiter is None and self.transport is not None
                and not self.transport.is_closing()):
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass
        self._pump()

    def _drop_sink(self) -> None:
        sink, self._sink = self._sink, None
        self._store_request = None
        if sink is not None:
            try:
                sink.abort()
            except Exception:  # pragma: no cover - abort must not mask the real error
                log.exception("store sink abort failed")

    # -- handlers -------------------------------------------------------------------------

    def _notify(self, event_type: evt.EventType, **attrs: Any) -> None:
        specs = self.handlers.get(event_type)
        if not specs:
            return
        event = evt.Event(self, event_type, **attrs)
        for handler, args, is_coro in specs:
            try:
                result = handler(event, *args)
                if is_coro:
                    self.loop.create_task(result)
            except Exception:
                log.exception("handler for %s failed", event_type.name)

    def _call_sync_intervention(self, event_type: evt.EventType, event: evt.Event,
                                default: Any) -> Any:
        specs = self.handlers.get(event_type)
        if not specs:
            return default
        handler, args, is_coro = specs[0]
        if is_coro:
            raise TypeError(f"{event_type.name} handlers must be plain functions")
        try:
            return handler(event, *args)
        except Exception:
            log.exception("handler for %s failed", event_type.name)
            return default

    async def _intervene(self, event_type: evt.EventType, event: evt.Event,
                         default: Any) -> Any:
        specs = self.handlers.get(event_type)
        if not specs:
            return default
        handler, args, is_coro = specs[0]
        result = handler(event, *args)
        if is_coro:
            result = await result
        return result

    # -- requestor ----------------------------------------------------------------------

    _requested_contexts: Sequence[PresentationContext] = ()

    async def wait_established(self) -> bool:
        """Wait for the outcome of the association request (``acse_timeout``)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._established), self.acse_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: ACSE timeout waiting for the association", self._peer_label())
            self._local_abort("ACSE timeout")
            return False

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1  # US: 1..65535
        return self._message_id

    async def _request(self, context_id: int, message: Any, message_id: int,
                       dataset: bytes | memoryview | None = None,
                       stream: Any = None) -> Any:
        if not self.is_established:
            raise RuntimeError("the association is not established")
        fut = self.loop.create_future()
        self._responses[message_id] = fut
        async with self._send_lock:
            if stream is None:
                self.conn.send_message(context_id, message, dataset, self.loop.time())
                self._pump()
            else:
                await self._send_stream(context_id, message, stream)
        try:
            return await asyncio.wait_for(fut, self.dimse_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: DIMSE timeout waiting for a response", self._peer_label())
            self._local_abort("DIMSE timeout")
            return None
        finally:
            self._responses.pop(message_id, None)

    async def _send_stream(self, context_id: int, message: Any, stream: Any) -> None:
        fobj, remaining = stream
        command = encode_command(message)
        max_pdu = self.conn.peer_max_pdu
        self.conn.send_buffers(fragment_message(context_id, command, None, max_pdu),
                               self.loop.time())
        self._pump()
        for pdus in iter_dataset_pdus(context_id, _read_chunks(fobj, remaining), max_pdu):
            if not self.conn.is_established:
                return
            self.conn.send_buffers(pdus, self.loop.time())
            self._pump()
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                await self._drain()

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """C-ECHO (PS3.7 9.3.5); returns the response status as a Dataset.

        The Dataset is empty when no response came (aborted, timed out).
        """
        context = self._find_context("1.2.840.10008.1.1")
        message_id = msg_id if msg_id is not None else self._next_message_id()
        rsp = await self._request(context.context_id, CEchoRQ(message_id=message_id),
                                  message_id)
        return _status_dataset(rsp)

    async def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: bytes | str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """C-STORE (PS3.7 9.3.1) of a pydicom Dataset or a Part 10 file path.

        A file is streamed from disk in its stored transfer syntax without being
        decoded. Returns the response status as a Dataset (empty if none came).
        """
        message_id = msg_id if msg_id is not None else self._next_message_id()
        if isinstance(originator_aet, str):
            originator_aet = originator_aet.encode()
        if isinstance(dataset, Dataset):
            sop_class = str(dataset.SOPClassUID)
            sop_instance = str(dataset.SOPInstanceUID)
            context, payload = self._encode_for(dataset, sop_class)
            rq = CStoreRQ(
                message_id=message_id,
                affected_sop_class_uid=sop_class,
                affected_sop_instance_uid=sop_instance,
                priority=priority,
                move_originator_application_entity_title=originator_aet,
                move_originator_message_id=originator_id,
            )
            rsp = await self._request(context.context_id, rq, message_id, dataset=payload)
            return _status_dataset(rsp)
        from storage import read_file_meta

        path = os.fspath(dataset)
        with open(path, "rb") as fobj:
            meta = read_file_meta(fobj)
            sop_class = meta.media_storage_sop_class_uid
            sop_instance = meta.media_storage_sop_instance_uid
            if not sop_class or not sop_instance:
                raise ValueError(
                    f"{path}: the File Meta Information has no Media Storage SOP "
                    "Class/Instance UID (PS3.10 7.1)"
                )
            context = self._find_context(sop_class, meta.transfer_syntax_uid)
            size = os.fstat(fobj.fileno()).st_size - meta.dataset_offset
            fobj.seek(meta.dataset_offset)
            rq = CStoreRQ(
                message_id=message_id,
                affected_sop_class_uid=sop_class,
                affected_sop_instance_uid=sop_instance,
                priority=priority,
                move_originator_application_entity_title=originator_aet,
                move_originator_message_id=originator_id,
            )
            rsp = await self._request(context.context_id, rq, message_id,
                                      stream=(fobj, size))
        return _status_dataset(rsp)

    async def send_c_store_raw(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes | memoryview,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> CStoreRSP | None:
        """C-STORE (PS3.7 9.3.1) of a data set already encoded in ``transfer_syntax_uid``.

        The bytes go out as they are (no decoding, no re-encoding) on the accepted
        context for that SOP class and transfer syntax; they are referenced, not copied,
        so they must not change until the response came. For senders in a hot loop, it
        returns the C-STORE-RSP message itself (``.status``, ``.error_comment``) rather
        than a pydicom Dataset, or None when no response came (aborted, timed out).
        Raises ValueError if no such context was accepted.
        """
        context = self._find_context(sop_class_uid, transfer_syntax_uid)
        message_id = msg_id if msg_id is not None else self._next_message_id()
        rq = CStoreRQ(
            message_id=message_id,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid,
            priority=priority,
        )
        return await self._request(context.context_id, rq, message_id, dataset=dataset)

    def _find_context(self, abstract_syntax: str,
                      transfer_syntax: str | None = None) -> PresentationContext:
        for cx in self.accepted_contexts:
            if str(cx.abstract_syntax) == abstract_syntax and (
                transfer_syntax is None or str(cx.transfer_syntax[0]) == transfer_syntax
            ):
                return cx
        wanted = abstract_syntax + (f" with {transfer_syntax}" if transfer_syntax else "")
        raise ValueError(f"no accepted presentation context for {wanted}")

    def _encode_for(self, ds: Dataset, sop_class: str) -> tuple[PresentationContext, bytes]:
        ts = dataset_transfer_syntax(ds)
        candidates = [cx for cx in self.accepted_contexts
                      if str(cx.abstract_syntax) == sop_class]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {sop_class}")
        for cx in candidates:
            if ts is not None and str(cx.transfer_syntax[0]) == ts:
                if ts in UNCOMPRESSED:
                    return cx, encode_dataset(ds, ts)
                return cx, _encapsulated_bytes(ds, ts)
        if ts is None or ts in UNCOMPRESSED:
            for cx in candidates:
                if str(cx.transfer_syntax[0]) in UNCOMPRESSED:
                    return cx, encode_dataset(ds, str(cx.transfer_syntax[0]))
        raise ValueError(
            f"no accepted presentation context for {sop_class} in transfer syntax {ts}"
        )

    async def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); waits for the peer's answer up to ``acse_timeout``."""
        if not self.is_established:
            return
        async with self._send_lock:
            try:
                self.conn.release(self.loop.time())
            except LocalProtocolError:
                return
            self._pump()
        try:
            await asyncio.wait_for(asyncio.shield(self._released), self.acse_timeout)
        except asyncio.TimeoutError:
            self._local_abort("ACSE timeout waiting for A-RELEASE-RP")
        await self.wait_closed()

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3): the association ends at once."""
        if self.closed.done():
            return
        self._local_abort("aborted by the local user")

    async def wait_closed(self) -> None:
        """Wait until the transport connection is closed (bounded by the ACSE timeout)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), self.acse_timeout)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    def _peer_label(self) -> str:
        peer = self.acceptor if self.is_requestor else self.requestor
        title = peer.ae_title.strip().decode("ascii", "replace") if peer.ae_title else "?"
        # The title is any 16 bytes the peer chose: no line breaks into our logs (CWE-117).
        title = "".join(c if c.isprintable() else "?" for c in title)
        return f"{title}@{peer.address}:{peer.port}"

    def __repr__(self) -> str:
        role = "requestor" if self.is_requestor else "acceptor"
        return f"<Association {role} {self._peer_label()} {self.conn.state.name}>"


async def _finish_sink(sink: Any) -> Any:
    return await sink.finish()


#: Error Comment (0000,0902) is LO: at most 64 characters (PS3.5 6.2, PS3.7 C.4).
_ERROR_COMMENT_MAX = 64


def _status_of(result: Any) -> tuple[int, str | None]:
    """A handler's answer as (status, error comment): int, (int, str) or a Dataset.

    Never raises: the answer is turned into a response inside a done-callback, where an
    exception would leave the association paused with no response sent. A status that
    is not a US value becomes 0xC000; a comment is made printable ASCII and cut to the
    64 characters of an LO (a handler's exception text easily exceeds that).
    """
    try:
        if isinstance(result, tuple):
            code, comment = result[0], result[1] if len(result) > 1 else None
        elif isinstance(result, Dataset):
            code, comment = result.Status, getattr(result, "ErrorComment", None)
        else:
            code, comment = result, None
        code = int(code)
    except (TypeError, ValueError, AttributeError, IndexError):
        return _status.ERROR_CANNOT_UNDERSTAND, f"invalid answer {type(result).__name__}"
    if not 0 <= code <= 0xFFFF:
        return _status.ERROR_CANNOT_UNDERSTAND, "handler answered a status outside 0..0xFFFF"
    if comment is not None:
        text = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(comment))
        comment = text[:_ERROR_COMMENT_MAX] or None
    return code, comment


def _status_dataset(rsp: Any) -> Dataset:
    ds = Dataset()
    if rsp is None:
        return ds
    ds.Status = rsp.status
    if getattr(rsp, "error_comment", None):
        ds.ErrorComment = rsp.error_comment
    return ds


def _encapsulated_bytes(ds: Dataset, ts: str) -> bytes:
    """Encode a data set whose pixel data is already compressed: Explicit VR LE."""
    return encode_dataset(ds, "1.2.840.10008.1.2.1")


def _read_chunks(fobj: Any, remaining: int) -> Iterable[bytes]:
    read = fobj.read
    while remaining > 0:
        chunk = read(min(_FILE_READ_SIZE, remaining))
        if not chunk:
            raise OSError("file shrank while being sent")
        remaining -= len(chunk)
        yield chunk


# ---------------------------------------------------------------------------------------
# Requestor entry point


async def associate(
    host: str,
    port: int,
    config: RequestorConfig,
    *,
    ssl_context: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    bind_address: tuple[str, int] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Association:
    """Request an association (PS3.8 7.1); returns it whether or not it was accepted.

    Check ``is_established`` before use. A connection that cannot be made gives an
    association that is aborted (``is_aborted``), as pynetdicom does.
    """
    loop = loop or asyncio.get_running_loop()
    if not config.contexts:
        raise RuntimeError("at least one presentation context must be requested")
    contexts = []
    for index, cx in enumerate(config.contexts):
        copy = PresentationContext()
        copy.context_id = 2 * index + 1  # PS3.8 9.3.2.2: odd integers 1-255
        copy.abstract_syntax = cx.abstract_syntax
        copy.transfer_syntax = list(cx.transfer_syntax)
        copy.scu_role = cx.scu_role
        copy.scp_role = cx.scp_role
        contexts.append(copy)
    if len(contexts) > 128:
        raise ValueError("at most 128 presentation contexts can be requested")
    assoc = Association(
        is_requestor=True,
        loop=loop,
        handlers=config.handlers,
        acse_timeout=config.acse_timeout,
        dimse_timeout=config.dimse_timeout,
        network_timeout=config.network_timeout,
        maximum_pdu_size=config.maximum_pdu_size,
        ae=config.ae,
    )
    assoc._requested_contexts = contexts
    assoc.requestor.ae_title = config.calling_ae_title
    assoc.acceptor.ae_title = config.called_ae_title
    assoc.acceptor.address, assoc.acceptor.port = host, port
    rq = build_request(
        called_ae_title=config.called_ae_title,
        calling_ae_title=config.calling_ae_title,
        contexts=contexts,
        maximum_pdu_size=config.maximum_pdu_size,
        implementation_class_uid=config.implementation_class_uid,
        implementation_version_name=config.implementation_version_name,
        extended=config.extended,
    )
    assoc.conn.request_association(rq, loop.time())
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: _ULProtocol(assoc),
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
                local_addr=bind_address if bind_address and bind_address != ("", 0) else None,
            ),
            config.network_timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        log.info("association to %s:%s failed: %s", host, port, exc or "timeout")
        assoc.conn.connection_lost(loop.time())
        assoc.is_aborted = True
        assoc.abort_info = Aborted(None, None, local=True, detail=f"connection failed: {exc}")
        assoc._finalize()
        return assoc
    await assoc.wait_established()
    return assoc


# ---------------------------------------------------------------------------------------
# Server


class AssociationServer:
    """Accepts associations on a loop: from its own listening socket, or sockets
    handed to it (:meth:`adopt`) by a listener process."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        self.active: set[Association] = set()
        self.established_count = 0
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._closing = False

    def _new_association(self) -> Association:
        cfg = self.config
        assoc = Association(
            is_requestor=False,
            loop=self.loop,
            handlers=cfg.handlers,
            acse_timeout=cfg.acse_timeout,
            dimse_timeout=cfg.dimse_timeout,
            network_timeout=cfg.network_timeout,
            maximum_pdu_size=cfg.policy.maximum_pdu_size,
            ae=cfg.ae,
            server=self,
        )
        return assoc

    def _register(self, assoc: Association) -> None:
        """Count ``assoc`` as live. Called when its transport is made, i.e. after any
        TLS handshake: a connection whose handshake fails never reaches the protocol
        (no ``connection_lost`` either), so counting it earlier would leave it in
        ``active`` for ever and stall :meth:`close`. One made while closing is aborted."""
        if assoc in self.active:
            return
        self.active.add(assoc)
        self._idle.clear()
        if self._closing:
            self.loop.call_soon(assoc.abort)

    def peer_allowed(self, peer: Any) -> bool:
        """Whether a connection from ``peer`` (a socket address) may be served
        (:attr:`ServerConfig.allowed_networks`)."""
        networks = self.config.allowed_networks
        if networks is None:
            return True
        return isinstance(peer, tuple) and address_allowed(str(peer[0]), networks)

    def _protocol_factory(self) -> _ULProtocol:
        return _ULProtocol(self._new_association())

    def _forget(self, assoc: Association) -> None:
        self.active.discard(assoc)
        if not self.active:
            self._idle.set()

    async def start(self, host: str, port: int, *, backlog: int = 512,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free port); return the bound address."""
        if sock is not None:
            self._server = await self.loop.create_server(
                self._protocol_factory, sock=sock, ssl=self.config.ssl_context,
                backlog=backlog, **self._tls_options(),
            )
        else:
            self._server = await self.loop.create_server(
                self._protocol_factory, host, port, ssl=self.config.ssl_context,
                reuse_address=True, backlog=backlog, **self._tls_options(),
            )
        return self.address

    def _tls_options(self) -> dict[str, float]:
        """The TLS handshake precedes the A-ASSOCIATE-RQ, so ARTIM does not run yet: bound
        it by the same ACSE timeout (asyncio's default would hold a silent peer 60 s)."""
        if self.config.ssl_context is None or not self.config.acse_timeout:
            return {}
        return {"ssl_handshake_timeout": float(self.config.acse_timeout)}

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        return self._server.sockets[0].getsockname()[:2]

    async def adopt(self, sock: socket.socket) -> Association:
        """Serve an already-accepted connection (handed over by a listener process).

        A peer outside :attr:`ServerConfig.allowed_networks` is closed here, before any
        TLS handshake, and ``ConnectionRefusedError`` is raised.
        """
        if self.config.allowed_networks is not None:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
            if not self.peer_allowed(peer):
                sock.close()
                raise ConnectionRefusedError(f"peer address {peer} is not allowed")
        assoc = self._new_association()
        self._register(assoc)  # live from now: close() waits for its handshake too
        try:
            await self.loop.connect_accepted_socket(
                lambda: _ULProtocol(assoc), sock, ssl=self.config.ssl_context,
                **self._tls_options(),
            )
        except Exception:
            self._forget(assoc)
            sock.close()
            raise
        return assoc

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, give live associations ``grace`` seconds, abort the rest."""
        self._closing = True
        self.stop_listening()
        if self._server is not None:
            await self._server.wait_closed()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            for assoc in list(self.active):
                assoc.abort()
            try:
                await asyncio.wait_for(self._idle.wait(), 2.0)
            except asyncio.TimeoutError:
                for assoc in list(self.active):
                    if assoc.transport is not None:
                        assoc.transport.abort()
