"""One transport connection's protocol stack, sans-IO.

Theory of operation: a :class:`Connection` joins the three pieces of the core for one
TCP connection: the incremental PDU framer (:mod:`engine._pdu`), the Upper Layer
protocol machine (:mod:`engine._fsm`) and DIMSE message assembly
(:mod:`engine._dimse`). Bytes go in through :meth:`Connection.receive_data`; user
requests (accept, send a message, release, abort) through the other methods; every
call takes ``now`` from the caller's clock. What comes out is drained by the I/O
adapter: :meth:`data_to_send` gives buffers for ``transport.writelines``,
:meth:`events` gives :class:`ConnectionEvent` objects for the service user, and
:attr:`wants_close` says the transport is to be closed (after what is queued is sent).

Every timer of the connection lives here, as deadlines on the caller's clock (aioquic's
``get_timer``/``handle_timer``): :meth:`next_deadline` says when :meth:`handle_timer`
must next be called. Three timers share it:

* **ARTIM** (PS3.8 9.1.5), run by the state machine during association set-up and
  release; the same ACSE timeout bounds our wait for the peer's A-ASSOCIATE-AC/RJ
  (Sta5) and A-RELEASE-RP (Sta7);
* the **DIMSE timeout**: a message from the peer stalled halfway, or a response we are
  waiting for (a request we sent) not coming;
* the **network timeout**: an established association on which nothing happens. It
  does not run while we owe the peer a response (our service user is working), and the
  DIMSE timeout falls back to it when none is set.

An ACSE, DIMSE or network timeout aborts the association (A-ABORT, service-user source) and
reports :class:`Aborted` with ``local=True`` and the timer's name in ``detail``. To
know which timer applies, the connection counts the requests in each direction that
still await their final response (PS3.7 9.1.2: a Pending status is not final).

A release collision (PS3.8 7.2, Table 9-10 Sta9-Sta12) is resolved here too: the user
answers every :class:`ReleaseRequested` with :meth:`release_response` whenever it is
ready; on the acceptor side of a collision the answer is held until the peer's
A-RELEASE-RP has arrived (AR-10) and then sent. :class:`ReleaseConfirmed` says the
association is released.

It never performs I/O, never reads a clock, never decides policy: whether to accept an
association is the ACSE user's business (:mod:`engine._acse`), where a data set goes is
storage's. Received data-set fragments pass through as the memoryviews the framer made.
"""

from __future__ import annotations

from typing import Any, Callable

from ._dimse import (
    C_CANCEL_RQ,
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
    "AssociationRequestSent",
    "AssociationAccepted",
    "AssociationRejected",
    "ReleaseRequested",
    "ReleaseConfirmed",
    "Aborted",
    "CommandReceived",
    "DatasetFragment",
]

#: PS3.8 Table 9-10's two cells that every DIMSE message crosses: in Sta6 (Data Transfer)
#: Evt9 (P-DATA request) is DT-1, send the P-DATA-TF, and Evt10 (P-DATA-TF received) is
#: DT-2, issue the P-DATA indication; both stay in Sta6. :class:`Connection` takes them
#: without walking the table, as if it had: the table (_fsm.TRANSITIONS) still defines
#: them, and tests/engine/test_connection.py checks that the two agree.
_DATA_TRANSFER = State.Sta6

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


class AssociationRequestSent(ConnectionEvent):
    """Our A-ASSOCIATE-RQ was queued for the transport (AE-2, Sta4 + Evt2): the adapter
    has written it by the time it hands this event over (requestor only)."""

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
    """A-RELEASE indication: answer it with :meth:`Connection.release_response` once
    every response owed has been sent. ``collision`` when we had asked for release
    too; the association is then released at :class:`ReleaseConfirmed`."""

    __slots__ = ("collision",)

    def __init__(self, collision: bool) -> None:
        self.collision = collision


class ReleaseConfirmed(ConnectionEvent):
    """A-RELEASE confirmation: our release request was answered, so the association
    is released (after a collision, once both answers have crossed)."""

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
    check in AE-6: it returns None or the A-ASSOCIATE-RJ to send. ``artim_timeout``,
    ``dimse_timeout`` and ``network_timeout`` are in seconds of the caller's clock (None:
    that timer never runs); see the module docstring.
    """

    __slots__ = (
        "machine",
        "decoder",
        "assembler",
        "peer_max_pdu",
        "wants_close",
        "wants_connect",
        "dimse_timeout",
        "network_timeout",
        "_out",
        "_events",
        "protocol_error",
        "_release_requested",
        "_release_answered",
        "_dead_input",
        "_dimse_dead",
        "_pending_request_max",
        "_last_activity",
        "_owed",
        "_awaited",
    )

    def __init__(
        self,
        *,
        is_requestor: bool,
        max_pdu_receive: int = 16382,
        artim_timeout: float | None = 30.0,
        acceptable: Callable[[AAssociateRQ], AAssociateRJ | None] | None = None,
        max_associate_length: int = 1 << 20,
        dimse_timeout: float | None = None,
        network_timeout: float | None = None,
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
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self._out: list[bytes | memoryview] = []
        self._events: list[ConnectionEvent] = []
        #: The peer's protocol error that ended this connection, for logs.
        self.protocol_error: RemoteProtocolError | None = None
        self._release_requested = False
        # The user answered a collision's A-RELEASE indication in Sta10 (acceptor side):
        # the A-RELEASE-RP goes out once the peer's has arrived (AR-10, Sta12).
        self._release_answered = False
        self._dead_input = False
        self._dimse_dead = False
        self._pending_request_max = 0
        # Last time bytes were received or queued for sending: the idle timers count
        # from it.
        self._last_activity = 0.0
        # Message IDs of requests received that we have not finally answered (owed), and
        # of requests we sent whose final response has not come (awaited).
        self._owed: set[int | None] = set()
        self._awaited: set[int] = set()

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def is_established(self) -> bool:
        """Sta6 or one of the release states that still carry data (Sta7, Sta8)."""
        return self.machine.state in (State.Sta6, State.Sta7, State.Sta8)

    @property
    def awaiting_association_response(self) -> bool:
        """An A-ASSOCIATE indication awaits the user's accept or reject (Sta3). False
        when a PDU read with the request already ended the association."""
        return self.machine.state is State.Sta3

    @property
    def can_abort(self) -> bool:
        """Whether an A-ABORT request is still meaningful (the association exists)."""
        return self.machine.transition_for(Event.Evt15) is not None

    @property
    def last_activity(self) -> float:
        """When bytes were last received or queued for sending (the caller's clock)."""
        return self._last_activity

    @property
    def owes_response(self) -> bool:
        """Whether a received request still awaits our final response."""
        return bool(self._owed)

    # -- timers ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next needs to be called (ARTIM, DIMSE or network
        timeout, whichever comes first), or None when no timer runs."""
        deadline = self.machine.artim_deadline
        idle = self._idle_deadline()[0]
        if idle is not None and (deadline is None or idle < deadline):
            return idle
        return deadline

    def _idle_deadline(self) -> tuple[float | None, str]:
        """The ACSE, DIMSE or network deadline and its name (None when none runs)."""
        state = self.machine.state
        if state is State.Sta5 or state is State.Sta7:
            # Awaiting the peer's A-ASSOCIATE-AC/RJ or A-RELEASE-RP: the ACSE timeout
            # (PS3.8 leaves ARTIM off here; pynetdicom's acse_timeout bounds the wait).
            timeout = self.machine.artim_timeout
            if timeout is None:
                return None, ""
            return self._last_activity + timeout, "ACSE"
        if state is not State.Sta6 and state is not State.Sta8:
            return None, ""
        timeout = None
        kind = "network"
        if self._awaited or self.assembler.in_message:
            timeout = self.dimse_timeout
            kind = "DIMSE"
        elif self._owed:
            return None, ""  # our own service user is at work: nothing to time out
        if timeout is None:
            timeout = self.network_timeout
            kind = "network"
        if timeout is None:
            return None, ""
        return self._last_activity + timeout, kind

    def _acse_expired(self, now: float) -> bool:
        timeout = self.machine.artim_timeout
        return timeout is not None and now >= self._last_activity + timeout

    def handle_timer(self, now: float) -> None:
        """Handle every timer whose deadline has passed: ARTIM expiry is Evt18; a DIMSE
        or network timeout aborts the association (AA-1) and reports :class:`Aborted`."""
        if self.machine.artim_expired(now):
            self._run(Event.Evt18, now, None)
        deadline, kind = self._idle_deadline()
        if deadline is not None and now >= deadline:
            self._events.append(
                Aborted(ABORT_SOURCE_USER, 0, local=True, detail=f"{kind} timeout")
            )
            self.abort(now, close=True)

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
        self._last_activity = now
        if self.machine.is_requestor:
            self.wants_connect = False
            timeout = self.machine.artim_timeout
            if timeout is not None and timeout <= 0:
                # An ACSE wait of zero is over as it starts: no answer could be taken,
                # so the A-ASSOCIATE-RQ is not sent (a peer could otherwise establish
                # an association we have already given up). A-ABORT request in Sta4:
                # AA-2, the transport is closed.
                self._events.append(
                    Aborted(ABORT_SOURCE_USER, 0, local=True, detail="ACSE timeout")
                )
                self.abort(now, close=True)
                return
            self._run(Event.Evt2, now, None)
        else:
            self._run(Event.Evt5, now, None)

    def connection_lost(self, now: float) -> None:
        """Transport connection closed indication (Evt17)."""
        if self.machine.state is not State.Sta1:
            self._run(Event.Evt17, now, None)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the transport: each PDU becomes its Table 9-10 event.

        An ACSE wait (Sta5, Sta7) whose timeout has passed by ``now`` ends first, however
        the adapter's loop happened to order the timer and the bytes: an answer that
        comes after the ACSE timeout is not taken (a timeout of 0 sends no request at
        all: :meth:`connection_made`).
        """
        state = self.machine.state
        if self._dead_input or state is State.Sta1:
            return
        if (state is State.Sta5 or state is State.Sta7) and self._acse_expired(now):
            self.handle_timer(now)
            return
        self._last_activity = now
        try:
            pdus = self.decoder.feed(data)
        except RemoteProtocolError as exc:
            self._dead_input = True
            self.protocol_error = exc
            self._run(Event.Evt19, now, exc)
            return
        machine = self.machine
        for pdu in pdus:
            state = machine.state
            if state is _DATA_TRANSFER and type(pdu) is PDataTF:
                self._deliver_pdata(pdu, now)  # Evt10 in Sta6: DT-2, stay in Sta6
                continue
            if state is State.Sta1:
                return
            self._run(_PDU_EVENTS[type(pdu)], now, pdu)

    # -- service-user requests -----------------------------------------------------------

    def request_association(self, request: AAssociateRQ, now: float) -> None:
        """A-ASSOCIATE request (Evt1): asks the adapter to open the transport."""
        self._last_activity = now
        self._run(Event.Evt1, now, request)

    def accept(self, accept: AAssociateAC, now: float) -> None:
        """A-ASSOCIATE response, accept (Evt7)."""
        self.peer_max_pdu = self._pending_request_max
        self._last_activity = now
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
        self._send_pdata(buffers, now)
        self._sent(command, now)

    def send_command(self, context_id: int, command: Any, now: float) -> None:
        """P-DATA request (Evt9) with a message's command set only: its data set follows
        through :meth:`send_buffers` (a streamed send)."""
        buffers = fragment_message(context_id, encode_command(command), None, self.peer_max_pdu)
        self._send_pdata(buffers, now)
        self._sent(command, now)

    def send_buffers(self, buffers: list[bytes | memoryview], now: float) -> None:
        """P-DATA request (Evt9) with already-encoded P-DATA-TF PDUs (a streamed data set,
        after :meth:`send_command`)."""
        self._send_pdata(buffers, now)
        self._last_activity = now

    def _send_pdata(self, buffers: list[bytes | memoryview], now: float) -> None:
        """P-DATA request (Evt9): in Sta6 DT-1, the buffers queued as they are; in any
        other state the table decides (AR-7 in Sta8, else a LocalProtocolError)."""
        if self.machine.state is _DATA_TRANSFER:
            self._out.extend(buffers)
        else:
            self._run(Event.Evt9, now, buffers)

    def _sent(self, command: Any, now: float) -> None:
        """Count what a message sent changes in the requests awaiting an answer."""
        self._last_activity = now
        field = command.command_field
        if field & 0x8000:
            if command.status not in _PENDING:
                self._owed.discard(command.message_id_being_responded_to)
        elif field != C_CANCEL_RQ:
            self._awaited.add(command.message_id)

    def release(self, now: float) -> None:
        """A-RELEASE request (Evt11)."""
        self._last_activity = now
        self._run(Event.Evt11, now, AReleaseRQ())
        self._release_requested = True

    def release_response(self, now: float) -> None:
        """A-RELEASE response (Evt14) to a :class:`ReleaseRequested`.

        On the acceptor side of a release collision (Sta10) the response is held until
        the peer's A-RELEASE-RP arrives (PS3.8 Table 9-10: AR-10, then AR-4 in Sta12).
        A no-op once the association is gone; a LocalProtocolError when no release was
        requested.
        """
        state = self.machine.state
        if state is State.Sta10:
            self._release_answered = True
            return
        if state is State.Sta1 or state is State.Sta13:
            return  # the association ended (abort, closed transport): nothing to answer
        self._run(Event.Evt14, now, AReleaseRP())

    def abort(
        self, now: float, source: int = ABORT_SOURCE_USER, reason: int = 0, *, close: bool = False
    ) -> None:
        """A-ABORT request (Evt15); a no-op once the association is already gone.

        ``close``: the transport is to be closed as soon as the A-ABORT is written,
        rather than waiting for the peer to close it (AA-1 leaves us in Sta13 until
        then, bounded by ARTIM).
        """
        if self.machine.transition_for(Event.Evt15) is None:
            return
        self._run(Event.Evt15, now, AAbort(source=source, reason=reason))
        if close:
            self.wants_close = True

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
                if event is Event.Evt2:
                    self._events.append(AssociationRequestSent(out.pdu))
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
            if self._release_answered and self.machine.state is State.Sta12:
                # The collision's held answer (see release_response): AR-4.
                self._release_answered = False
                self._run(Event.Evt14, now, AReleaseRP())
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
                for received in feed(pdv):
                    if type(received) is CommandReceived:
                        self._received(received.command)
                    events.append(received)
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

    def _received(self, command: Any) -> None:
        """Count what a received command changes in the requests awaiting an answer."""
        field = command.command_field
        if field & 0x8000:
            status = getattr(command, "status", None)
            if status not in _PENDING:
                self._awaited.discard(getattr(command, "message_id_being_responded_to", None))
        elif field != C_CANCEL_RQ:
            self._owed.add(command.message_id)


#: PS3.7 C.1.3: Pending statuses say more responses to the same request follow.
_PENDING = frozenset((0xFF00, 0xFF01))
