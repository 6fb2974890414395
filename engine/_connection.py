"""One transport connection's protocol stack, sans-IO.

Theory of operation: a :class:`Connection` joins the three pieces of the core for one
TCP connection: the incremental PDU framer (:mod:`engine._pdu`), the Upper Layer
protocol machine (:mod:`engine._fsm`) and DIMSE message assembly
(:mod:`engine._dimse`). Bytes go in through :meth:`Connection.receive_data`; user
requests (accept, send a message, release, abort) through the other methods; every
call takes ``now`` from the caller's clock. What comes out is drained by the I/O
adapter: :meth:`data_to_send` gives buffers for ``transport.writelines``,
:meth:`events` gives :class:`ConnectionEvent` objects for the service user, and
:attr:`wants_close` says the machine asked for the transport to be closed.

It never performs I/O, never reads a clock, never decides policy: whether to accept an
association is the ACSE user's business (:mod:`engine._acse`), where a data set goes is
storage's. Received data-set fragments pass through as the memoryviews the framer made.
"""

from __future__ import annotations

from typing import Any, Callable

from ._dimse import (
    CommandReceived,
    DatasetFragment,
    MessageAssembler,
    encode_command,
    fragment_message,
)
from ._errors import ABORT_SOURCE_USER, RemoteProtocolError
from ._fsm import (
    CloseTransport,
    ConnectTransport,
    DULStateMachine,
    Event,
    Indicate,
    Primitive,
    SendBuffers,
    SendPDU,
    State,
)
from ._pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUDecoder,
    encode_pdu,
)

__all__ = [
    "Connection",
    "ConnectionEvent",
    "AssociationRequested",
    "AssociationAccepted",
    "AssociationRejected",
    "ReleaseRequested",
    "ReleaseConfirmed",
    "Aborted",
    "CommandReceived",
    "DatasetFragment",
]

#: PDU class -> the Table 9-10 event its arrival is.
_PDU_EVENTS: dict[type, Event] = {
    AAssociateAC: Event.Evt3,
    AAssociateRJ: Event.Evt4,
    AAssociateRQ: Event.Evt6,
    PDataTF: Event.Evt10,
    AReleaseRQ: Event.Evt12,
    AReleaseRP: Event.Evt13,
    AAbort: Event.Evt16,
}


class ConnectionEvent:
    """Base of what a :class:`Connection` reports to its service user."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"


class AssociationRequested(ConnectionEvent):
    """A-ASSOCIATE indication: the peer's request awaits accept() or reject()."""

    __slots__ = ("request",)

    def __init__(self, request: AAssociateRQ) -> None:
        self.request = request


class AssociationAccepted(ConnectionEvent):
    """A-ASSOCIATE confirmation (accept): the association is established."""

    __slots__ = ("accept",)

    def __init__(self, accept: AAssociateAC) -> None:
        self.accept = accept


class AssociationRejected(ConnectionEvent):
    """A-ASSOCIATE confirmation (reject)."""

    __slots__ = ("reject",)

    def __init__(self, reject: AAssociateRJ) -> None:
        self.reject = reject


class ReleaseRequested(ConnectionEvent):
    """A-RELEASE indication; ``collision`` when we had asked for release too."""

    __slots__ = ("collision",)

    def __init__(self, collision: bool) -> None:
        self.collision = collision


class ReleaseConfirmed(ConnectionEvent):
    """A-RELEASE confirmation: the association is released."""

    __slots__ = ()


class Aborted(ConnectionEvent):
    """A-ABORT or A-P-ABORT: the association is gone.

    ``source``/``reason`` are the A-ABORT fields (PS3.8 Table 9-26) or None when the
    transport closed under us; ``local`` says we sent the abort ourselves.
    """

    __slots__ = ("source", "reason", "local", "detail")

    def __init__(
        self, source: int | None, reason: int | None, *, local: bool, detail: str = ""
    ) -> None:
        self.source = source
        self.reason = reason
        self.local = local
        self.detail = detail


class Connection:
    """The protocol stack of one transport connection (either role).

    ``max_pdu_receive`` is the Maximum Length we advertise (0: none) and is enforced on
    every received P-DATA-TF. ``acceptable`` (acceptor only) is the service provider's
    check in AE-6: it returns None or the A-ASSOCIATE-RJ to send.
    """

    __slots__ = (
        "machine",
        "decoder",
        "assembler",
        "peer_max_pdu",
        "wants_close",
        "wants_connect",
        "_out",
        "_events",
        "protocol_error",
        "_release_requested",
        "_dead_input",
        "_dimse_dead",
        "_pending_request_max",
    )

    def __init__(
        self,
        *,
        is_requestor: bool,
        max_pdu_receive: int = 16382,
        artim_timeout: float | None = 30.0,
        acceptable: Callable[[AAssociateRQ], AAssociateRJ | None] | None = None,
        max_associate_length: int = 1 << 20,
    ) -> None:
        self.machine = DULStateMachine(
            is_requestor=is_requestor, artim_timeout=artim_timeout, acceptable=acceptable
        )
        self.decoder = PDUDecoder(
            max_pdata_length=max_pdu_receive, max_associate_length=max_associate_length
        )
        self.assembler = MessageAssembler()
        self.peer_max_pdu = 0
        self.wants_close = False
        self.wants_connect = False
        self._out: list[bytes | memoryview] = []
        self._events: list[ConnectionEvent] = []
        #: The peer's protocol error that ended this connection, for logs.
        self.protocol_error: RemoteProtocolError | None = None
        self._release_requested = False
        self._dead_input = False
        self._dimse_dead = False
        self._pending_request_max = 0

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def is_established(self) -> bool:
        """Sta6 or one of the release states that still carry data (Sta7, Sta8)."""
        return self.machine.state in (State.Sta6, State.Sta7, State.Sta8)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next needs to be called (the ARTIM deadline)."""
        return self.machine.artim_deadline

    # -- output drains ----------------------------------------------------------------------

    def data_to_send(self) -> list[bytes | memoryview]:
        """Buffers to write to the transport, in order; the list is handed over."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[ConnectionEvent]:
        """Events for the service user since the last call; the list is handed over."""
        events, self._events = self._events, []
        return events

    # -- transport events ----------------------------------------------------------------

    def connection_made(self, now: float) -> None:
        """Transport Connection Indication (Evt5, acceptor) or Confirm (Evt2, requestor)."""
        if self.machine.is_requestor:
            self.wants_connect = False
            self._run(Event.Evt2, now, None)
        else:
            self._run(Event.Evt5, now, None)

    def connection_lost(self, now: float) -> None:
        """Transport connection closed indication (Evt17)."""
        if self.machine.state is not State.Sta1:
            self._run(Event.Evt17, now, None)

    def handle_timer(self, now: float) -> None:
        """ARTIM timer expired (Evt18) if its deadline has passed."""
        if self.machine.artim_expired(now):
            self._run(Event.Evt18, now, None)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the transport: each PDU becomes its Table 9-10 event."""
        if self._dead_input or self.machine.state is State.Sta1:
            return
        try:
            pdus = self.decoder.feed(data)
        except RemoteProtocolError as exc:
            self._dead_input = True
            self.protocol_error = exc
            self._run(Event.Evt19, now, exc)
            return
        for pdu in pdus:
            if self.machine.state is State.Sta1:
                return
            self._run(_PDU_EVENTS[type(pdu)], now, pdu)

    # -- service-user requests -----------------------------------------------------------

    def request_association(self, request: AAssociateRQ, now: float) -> None:
        """A-ASSOCIATE request (Evt1): asks the adapter to open the transport."""
        self._run(Event.Evt1, now, request)

    def accept(self, accept: AAssociateAC, now: float) -> None:
        """A-ASSOCIATE response, accept (Evt7)."""
        self.peer_max_pdu = self._pending_request_max
        self._run(Event.Evt7, now, accept)

    def reject(self, reject: AAssociateRJ, now: float) -> None:
        """A-ASSOCIATE response, reject (Evt8)."""
        self._run(Event.Evt8, now, reject)

    def send_message(
        self,
        context_id: int,
        command: Any,
        dataset: bytes | memoryview | None,
        now: float,
    ) -> None:
        """P-DATA request (Evt9) carrying one whole DIMSE message, fragmented to fit."""
        buffers = fragment_message(
            context_id, encode_command(command), dataset, self.peer_max_pdu
        )
        self._run(Event.Evt9, now, buffers)

    def send_buffers(self, buffers: list[bytes | memoryview], now: float) -> None:
        """P-DATA request (Evt9) with already-encoded P-DATA-TF PDUs (streaming sends)."""
        self._run(Event.Evt9, now, buffers)

    def release(self, now: float) -> None:
        """A-RELEASE request (Evt11)."""
        self._run(Event.Evt11, now, AReleaseRQ())
        self._release_requested = True

    def release_response(self, now: float) -> None:
        """A-RELEASE response (Evt14)."""
        self._run(Event.Evt14, now, AReleaseRP())

    def abort(self, now: float, source: int = ABORT_SOURCE_USER, reason: int = 0) -> None:
        """A-ABORT request (Evt15); a no-op once the association is already gone."""
        if self.machine.transition_for(Event.Evt15) is None:
            return
        self._run(Event.Evt15, now, AAbort(source=source, reason=reason))

    # -- the engine ---------------------------------------------------------------------

    def _run(self, event: Event, now: float, payload: Any) -> None:
        for out in self.machine.handle(event, now, payload):
            kind = type(out)
            if kind is Indicate:
                self._indicate(out, now, event)
            elif kind is SendBuffers:
                self._out.extend(out.buffers)
            elif kind is SendPDU:
                self._out.append(encode_pdu(out.pdu))
            elif kind is CloseTransport:
                self.wants_close = True
            elif kind is ConnectTransport:
                self.wants_connect = True

    def _indicate(self, out: Indicate, now: float, event: Event) -> None:
        primitive = out.primitive
        if primitive is Primitive.P_DATA_INDICATION:
            self._deliver_pdata(out.pdu, now)
        elif primitive is Primitive.A_ASSOCIATE_INDICATION:
            rq = out.pdu
            # Kept for the accept: the requestor's Maximum Length bounds what we send.
            self._pending_request_max = rq.user_information.max_length or 0
            self._events.append(AssociationRequested(rq))
        elif primitive is Primitive.A_ASSOCIATE_ACCEPT_CONFIRMATION:
            # The peer's Maximum Length bounds what we send; 0 means none (PS3.8 D.1).
            self.peer_max_pdu = out.pdu.user_information.max_length or 0
            self._events.append(AssociationAccepted(out.pdu))
        elif primitive is Primitive.A_ASSOCIATE_REJECT_CONFIRMATION:
            self._events.append(AssociationRejected(out.pdu))
        elif primitive is Primitive.A_RELEASE_INDICATION:
            self._events.append(ReleaseRequested(collision=self._release_requested))
        elif primitive is Primitive.A_RELEASE_CONFIRMATION:
            self._events.append(ReleaseConfirmed())
        elif primitive is Primitive.A_ABORT_INDICATION:
            pdu = out.pdu
            self._events.append(Aborted(pdu.source, pdu.reason, local=False))
        elif primitive is Primitive.A_P_ABORT_INDICATION:
            pdu = out.pdu
            if pdu is None:
                self._events.append(
                    Aborted(None, None, local=False, detail="transport connection closed")
                )
            else:
                # AA-3 (Evt16): the peer's provider-source A-ABORT; AA-8: we detected the
                # error and sent this provider A-ABORT ourselves (PS3.8 Table 9-9).
                self._events.append(
                    Aborted(pdu.source, pdu.reason, local=event is not Event.Evt16)
                )

    def _deliver_pdata(self, pdu: PDataTF, now: float) -> None:
        if self._dimse_dead:
            return
        feed = self.assembler.feed
        events = self._events
        try:
            for pdv in pdu.pdvs:
                events.extend(feed(pdv))
        except RemoteProtocolError as exc:
            # DIMSE is the DUL's service user: its protocol errors are service-user
            # aborts (A-ABORT request, Evt15), not provider ones.
            # The PDU framer still runs: the peer's A-ABORT or close ends Sta13 (AA-2).
            self._dimse_dead = True
            self.protocol_error = exc
            self._events.append(
                Aborted(ABORT_SOURCE_USER, 0, local=True, detail=str(exc))
            )
            self.abort(now, ABORT_SOURCE_USER, 0)

