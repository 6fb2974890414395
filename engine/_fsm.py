"""The DICOM Upper Layer protocol machine (PS3.8 9.2), sans-IO.

Theory of operation: :data:`TRANSITIONS` is PS3.8 Table 9-10 cell for cell: a
``(State, Event)`` key gives the action to perform and the state that follows it.
The two actions whose next state depends on a condition (AE-6: was the request
acceptable to the service provider; AR-8: are we the association-requestor) hold
both candidate states in their cell, in the order the standard lists them.
:class:`DULStateMachine` looks an event up, runs the action and returns what the
action *produced* -- PDUs to send, primitives to indicate to the service user,
transport requests -- as a list of output objects. It never reads from queues,
opens sockets, sleeps or reads the clock: the ARTIM timer is a deadline computed
from the ``now`` the caller passes in, exposed through :attr:`artim_deadline`, and
expired through ``handle(Event.Evt18, now)``.

A ``(State, Event)`` pair with no cell is, for a primitive from our own service user,
a :class:`LocalProtocolError`; PDU events and transport events have a cell in every
state where a transport connection can exist (Table 9-10 is complete for them).

Requestor and acceptor share the one table; ``is_requestor`` only picks AR-8's
next state.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Final

from ._errors import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_REASON_UNEXPECTED_PDU,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._pdu import AAbort

__all__ = [
    "State",
    "Event",
    "Action",
    "Primitive",
    "TRANSITIONS",
    "DULStateMachine",
    "SendPDU",
    "SendBuffers",
    "Indicate",
    "ConnectTransport",
    "CloseTransport",
]


class State(enum.Enum):
    """PS3.8 Table 9-10 states."""

    # Members are singletons: identity hashing, in C, instead of Enum's hash of the
    # name in Python (every transition looks up a (state, event) pair).
    __hash__ = object.__hash__

    Sta1 = "Idle"
    Sta2 = "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)"
    Sta3 = "Awaiting local A-ASSOCIATE response primitive (from local user)"
    Sta4 = "Awaiting transport connection opening to complete (from local transport service)"
    Sta5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    Sta6 = "Association established and ready for data transfer"
    Sta7 = "Awaiting A-RELEASE-RP PDU"
    Sta8 = "Awaiting local A-RELEASE response primitive (from local user)"
    Sta9 = "Release collision requestor side; awaiting A-RELEASE response (from local user)"
    Sta10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    Sta11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    Sta12 = "Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)"
    Sta13 = "Awaiting Transport Connection Close Indication (Association no longer exists)"


class Event(enum.Enum):
    """PS3.8 Table 9-10 events."""

    # Members are singletons: identity hashing, in C, instead of Enum's hash of the
    # name in Python (every transition looks up a (state, event) pair).
    __hash__ = object.__hash__

    Evt1 = "A-ASSOCIATE Request (local user)"
    Evt2 = "Transport Conn. Confirm (local transport service)"
    Evt3 = "A-ASSOCIATE-AC PDU (received on transport connection)"
    Evt4 = "A-ASSOCIATE-RJ PDU (received on transport connection)"
    Evt5 = "Transport Connection Indication (local transport service)"
    Evt6 = "A-ASSOCIATE-RQ PDU (on transport connection)"
    Evt7 = "A-ASSOCIATE response primitive (accept)"
    Evt8 = "A-ASSOCIATE response primitive (reject)"
    Evt9 = "P-DATA request primitive"
    Evt10 = "P-DATA-TF PDU"
    Evt11 = "A-RELEASE Request primitive"
    Evt12 = "A-RELEASE-RQ PDU (on transport)"
    Evt13 = "A-RELEASE-RP PDU (on transport)"
    Evt14 = "A-RELEASE response primitive"
    Evt15 = "A-ABORT Request primitive"
    Evt16 = "A-ABORT PDU (on transport)"
    Evt17 = "Transport connection closed indication (local transport service)"
    Evt18 = "ARTIM timer expired (Association reject/release timer)"
    Evt19 = "Unrecognized or invalid PDU received"


@enum.unique
class Action(enum.Enum):
    """PS3.8 Tables 9-6 to 9-9 actions.

    AR-5 and AA-5 have the same wording in the standard; their values name their table
    so that the two stay distinct members (equal values would make one an alias).
    """

    # Members are singletons: identity hashing, in C, instead of Enum's hash of the
    # name in Python (every transition looks up a (state, event) pair).
    __hash__ = object.__hash__

    AE_1 = "Issue TRANSPORT CONNECT request primitive to local transport service"
    AE_2 = "Send A-ASSOCIATE-RQ-PDU"
    AE_3 = "Issue A-ASSOCIATE confirmation (accept) primitive"
    AE_4 = "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection"
    AE_5 = "Issue Transport connection response primitive; start ARTIM timer"
    AE_6 = (
        "Stop ARTIM timer and if A-ASSOCIATE-RQ acceptable by service-provider: issue "
        "A-ASSOCIATE indication primitive; otherwise issue A-ASSOCIATE-RJ-PDU and start "
        "ARTIM timer"
    )
    AE_7 = "Send A-ASSOCIATE-AC PDU"
    AE_8 = "Send A-ASSOCIATE-RJ PDU and start ARTIM timer"
    DT_1 = "Send P-DATA-TF PDU"
    DT_2 = "Send P-DATA indication primitive"
    AR_1 = "Send A-RELEASE-RQ PDU"
    AR_2 = "Issue A-RELEASE indication primitive"
    AR_3 = "Issue A-RELEASE confirmation primitive, and close transport connection"
    AR_4 = "Issue A-RELEASE-RP PDU and start ARTIM timer"
    AR_5 = "Stop ARTIM timer (Table 9-8, association release)"
    AR_6 = "Issue P-DATA indication"
    AR_7 = "Issue P-DATA-TF PDU"
    AR_8 = "Issue A-RELEASE indication (release collision)"
    AR_9 = "Send A-RELEASE-RP PDU"
    AR_10 = "Issue A-RELEASE confirmation primitive"
    AA_1 = (
        "Send A-ABORT PDU (service-user source) and start (or restart if already "
        "started) ARTIM timer"
    )
    AA_2 = "Stop ARTIM timer if running. Close transport connection"
    AA_3 = (
        "If (service-user initiated abort): issue A-ABORT indication and close transport "
        "connection; otherwise (service-provider initiated abort): issue A-P-ABORT "
        "indication and close transport connection"
    )
    AA_4 = "Issue A-P-ABORT indication primitive"
    AA_5 = "Stop ARTIM timer (Table 9-9, association abort)"
    AA_6 = "Ignore PDU"
    AA_7 = "Send A-ABORT PDU"
    AA_8 = (
        "Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and "
        "start ARTIM timer"
    )

    @property
    def label(self) -> str:
        """The action's name as the standard spells it (``AE-1``)."""
        return self.name.replace("_", "-")


class Primitive(enum.Enum):
    """Service primitives the machine indicates to its service user (PS3.8 7)."""

    A_ASSOCIATE_INDICATION = "A-ASSOCIATE indication"
    A_ASSOCIATE_ACCEPT_CONFIRMATION = "A-ASSOCIATE confirmation (accept)"
    A_ASSOCIATE_REJECT_CONFIRMATION = "A-ASSOCIATE confirmation (reject)"
    P_DATA_INDICATION = "P-DATA indication"
    A_RELEASE_INDICATION = "A-RELEASE indication"
    A_RELEASE_CONFIRMATION = "A-RELEASE confirmation"
    A_ABORT_INDICATION = "A-ABORT indication"
    A_P_ABORT_INDICATION = "A-P-ABORT indication"


S = State
E = Event
A = Action

# fmt: off
#: PS3.8 Table 9-10, one entry per non-empty cell: (state, event) -> (action, next state).
#: AE-6 and AR-8 list both of the next states the standard gives for them, first the one
#: taken when the condition holds (request acceptable / we are the requestor).
TRANSITIONS: Final[dict[tuple[State, Event], tuple[Action, State | tuple[State, State]]]] = {
    # Evt1: A-ASSOCIATE Request (local user)
    (S.Sta1, E.Evt1): (A.AE_1, S.Sta4),
    # Evt2: Transport Conn. Confirm
    (S.Sta4, E.Evt2): (A.AE_2, S.Sta5),
    # Evt3: A-ASSOCIATE-AC PDU
    (S.Sta2, E.Evt3): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt3): (A.AE_3, S.Sta6),
    (S.Sta6, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta7, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta8, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt3): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt3): (A.AA_6, S.Sta13),
    # Evt4: A-ASSOCIATE-RJ PDU
    (S.Sta2, E.Evt4): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt4): (A.AE_4, S.Sta1),
    (S.Sta6, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta7, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta8, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt4): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt4): (A.AA_6, S.Sta13),
    # Evt5: Transport Connection Indication
    (S.Sta1, E.Evt5): (A.AE_5, S.Sta2),
    # Evt6: A-ASSOCIATE-RQ PDU
    (S.Sta2, E.Evt6): (A.AE_6, (S.Sta3, S.Sta13)),
    (S.Sta3, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta6, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta7, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta8, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt6): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt6): (A.AA_7, S.Sta13),
    # Evt7: A-ASSOCIATE response primitive (accept)
    (S.Sta3, E.Evt7): (A.AE_7, S.Sta6),
    # Evt8: A-ASSOCIATE response primitive (reject)
    (S.Sta3, E.Evt8): (A.AE_8, S.Sta13),
    # Evt9: P-DATA request primitive
    (S.Sta6, E.Evt9): (A.DT_1, S.Sta6),
    (S.Sta8, E.Evt9): (A.AR_7, S.Sta8),
    # Evt10: P-DATA-TF PDU
    (S.Sta2, E.Evt10): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta6, E.Evt10): (A.DT_2, S.Sta6),
    (S.Sta7, E.Evt10): (A.AR_6, S.Sta7),
    (S.Sta8, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt10): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt10): (A.AA_6, S.Sta13),
    # Evt11: A-RELEASE Request primitive
    (S.Sta6, E.Evt11): (A.AR_1, S.Sta7),
    # Evt12: A-RELEASE-RQ PDU
    (S.Sta2, E.Evt12): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta6, E.Evt12): (A.AR_2, S.Sta8),
    (S.Sta7, E.Evt12): (A.AR_8, (S.Sta9, S.Sta10)),
    (S.Sta8, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt12): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt12): (A.AA_6, S.Sta13),
    # Evt13: A-RELEASE-RP PDU
    (S.Sta2, E.Evt13): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta6, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta7, E.Evt13): (A.AR_3, S.Sta1),
    (S.Sta8, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt13): (A.AR_10, S.Sta12),
    (S.Sta11, E.Evt13): (A.AR_3, S.Sta1),
    (S.Sta12, E.Evt13): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt13): (A.AA_6, S.Sta13),
    # Evt14: A-RELEASE response primitive
    (S.Sta8, E.Evt14): (A.AR_4, S.Sta13),
    (S.Sta9, E.Evt14): (A.AR_9, S.Sta11),
    (S.Sta12, E.Evt14): (A.AR_4, S.Sta13),
    # Evt15: A-ABORT Request primitive
    (S.Sta3, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta4, E.Evt15): (A.AA_2, S.Sta1),
    (S.Sta5, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta6, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta7, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta8, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta9, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta10, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta11, E.Evt15): (A.AA_1, S.Sta13),
    (S.Sta12, E.Evt15): (A.AA_1, S.Sta13),
    # Evt16: A-ABORT PDU
    (S.Sta2, E.Evt16): (A.AA_2, S.Sta1),
    (S.Sta3, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta5, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta6, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta7, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta8, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta9, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta10, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta11, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta12, E.Evt16): (A.AA_3, S.Sta1),
    (S.Sta13, E.Evt16): (A.AA_2, S.Sta1),
    # Evt17: Transport connection closed indication
    (S.Sta2, E.Evt17): (A.AA_5, S.Sta1),
    (S.Sta3, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta4, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta5, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta6, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta7, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta8, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta9, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta10, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta11, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta12, E.Evt17): (A.AA_4, S.Sta1),
    (S.Sta13, E.Evt17): (A.AR_5, S.Sta1),
    # Evt18: ARTIM timer expired
    (S.Sta2, E.Evt18): (A.AA_2, S.Sta1),
    (S.Sta13, E.Evt18): (A.AA_2, S.Sta1),
    # Evt19: Unrecognized or invalid PDU received
    (S.Sta2, E.Evt19): (A.AA_1, S.Sta13),
    (S.Sta3, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta5, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta6, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta7, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta8, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta9, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta10, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta11, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta12, E.Evt19): (A.AA_8, S.Sta13),
    (S.Sta13, E.Evt19): (A.AA_7, S.Sta13),
}
# fmt: on

#: Events that are primitives from the local service user (a missing cell is our bug).
USER_EVENTS: Final = frozenset({E.Evt1, E.Evt7, E.Evt8, E.Evt9, E.Evt11, E.Evt14, E.Evt15})


# ---------------------------------------------------------------------------------------
# Outputs: what an action asks of the layers around the machine.


class SendPDU:
    """Encode and send ``pdu`` on the transport connection."""

    __slots__ = ("pdu",)

    def __init__(self, pdu: Any) -> None:
        self.pdu = pdu

    def __repr__(self) -> str:
        return f"SendPDU({self.pdu!r})"


class SendBuffers:
    """Send already-encoded P-DATA-TF PDUs (the DIMSE layer fragments them)."""

    __slots__ = ("buffers",)

    def __init__(self, buffers: list) -> None:
        self.buffers = buffers

    def __repr__(self) -> str:
        return f"SendBuffers({len(self.buffers)} buffers)"


class Indicate:
    """Issue ``primitive`` to the service user; ``pdu`` carries its parameters."""

    __slots__ = ("primitive", "pdu")

    def __init__(self, primitive: Primitive, pdu: Any = None) -> None:
        self.primitive = primitive
        self.pdu = pdu

    def __repr__(self) -> str:
        return f"Indicate({self.primitive.name}, {self.pdu!r})"


class ConnectTransport:
    """Issue a TRANSPORT CONNECT request to the local transport service (AE-1)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectTransport()"


class CloseTransport:
    """Close the transport connection."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CloseTransport()"


_CONNECT = ConnectTransport()
_CLOSE = CloseTransport()

#: AA-1 sends a service-user-source A-ABORT (PS3.8 Table 9-9); its reason is not significant.
_USER_ABORT = AAbort(source=ABORT_SOURCE_USER, reason=ABORT_REASON_NOT_SPECIFIED)


class DULStateMachine:
    """One association's Upper Layer protocol machine (PS3.8 9.2, Table 9-10).

    ``handle(event, now, payload)`` performs the cell's action and moves to the cell's
    next state, returning the outputs. ``payload`` is what the event carries: the PDU
    received (Evt3, Evt4, Evt6, Evt10, Evt12, Evt13, Evt16), the PDU the user asks to
    send (Evt1: the A-ASSOCIATE-RQ; Evt7: the AC; Evt8: the RJ; Evt15: the A-ABORT),
    the encoded P-DATA-TF buffers (Evt9), or for Evt19 the A-ABORT to answer with.

    ``acceptable`` is the service provider's half of AE-6: called with the received
    A-ASSOCIATE-RQ, it returns ``None`` to pass the request on to the user, or the
    A-ASSOCIATE-RJ PDU to answer with (protocol version, local limits).
    """

    __slots__ = ("state", "is_requestor", "artim_timeout", "artim_deadline", "acceptable",
                 "_actions", "_pending_rq")

    def __init__(
        self,
        *,
        is_requestor: bool,
        artim_timeout: float | None = 30.0,
        acceptable: Callable[[Any], Any] | None = None,
    ) -> None:
        self.state = State.Sta1
        self.is_requestor = is_requestor
        self.artim_timeout = artim_timeout
        self.artim_deadline: float | None = None
        self.acceptable = acceptable
        self._pending_rq: Any = None
        self._actions: dict[Action, Callable[..., tuple[list, int]]] = {
            a: getattr(self, "_" + a.name) for a in Action
        }

    # -- the machine --------------------------------------------------------------------

    def handle(self, event: Event, now: float, payload: Any = None) -> list:
        """Process ``event`` in the current state (PS3.8 9.2.1); return the outputs."""
        try:
            action, next_state = TRANSITIONS[(self.state, event)]
        except KeyError:
            if event in USER_EVENTS:
                raise LocalProtocolError(
                    f"{event.name} ({event.value}) is not allowed in {self.state.name} "
                    f"({self.state.value})"
                ) from None
            # Transport events can only reach a state without a cell through a caller
            # bug (e.g. data after Sta1); treat it like the user's bug it is.
            raise LocalProtocolError(
                f"{event.name} cannot occur in {self.state.name}"
            ) from None
        outputs, choice = self._actions[action](now, payload)
        self.state = next_state if isinstance(next_state, State) else next_state[choice]
        return outputs

    def transition_for(self, event: Event) -> tuple[Action, State | tuple[State, State]] | None:
        """The Table 9-10 cell for ``event`` in the current state, or None if empty."""
        return TRANSITIONS.get((self.state, event))

    # -- timers ---------------------------------------------------------------------------

    def _start_artim(self, now: float) -> None:
        if self.artim_timeout is not None:
            self.artim_deadline = now + self.artim_timeout

    def _stop_artim(self) -> None:
        self.artim_deadline = None

    def artim_expired(self, now: float) -> bool:
        """Whether the ARTIM timer is running and its deadline has passed."""
        return self.artim_deadline is not None and now >= self.artim_deadline

    # -- actions (PS3.8 Tables 9-6 to 9-9) -------------------------------------------------
    # Each returns (outputs, choice); choice picks among a cell's conditional next states.

    def _AE_1(self, now: float, rq: Any) -> tuple[list, int]:
        self._pending_rq = rq
        return [_CONNECT], 0

    def _AE_2(self, now: float, rq: Any) -> tuple[list, int]:
        rq = rq if rq is not None else self._pending_rq
        return [SendPDU(rq)], 0

    def _AE_3(self, now: float, ac: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_ASSOCIATE_ACCEPT_CONFIRMATION, ac)], 0

    def _AE_4(self, now: float, rj: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_ASSOCIATE_REJECT_CONFIRMATION, rj), _CLOSE], 0

    def _AE_5(self, now: float, _: Any) -> tuple[list, int]:
        self._start_artim(now)
        return [], 0

    def _AE_6(self, now: float, rq: Any) -> tuple[list, int]:
        self._stop_artim()
        rj = self.acceptable(rq) if self.acceptable is not None else None
        if rj is None:
            return [Indicate(Primitive.A_ASSOCIATE_INDICATION, rq)], 0
        self._start_artim(now)
        return [SendPDU(rj)], 1

    def _AE_7(self, now: float, ac: Any) -> tuple[list, int]:
        return [SendPDU(ac)], 0

    def _AE_8(self, now: float, rj: Any) -> tuple[list, int]:
        self._start_artim(now)
        return [SendPDU(rj)], 0

    def _DT_1(self, now: float, buffers: Any) -> tuple[list, int]:
        return [SendBuffers(buffers)], 0

    def _DT_2(self, now: float, pdu: Any) -> tuple[list, int]:
        return [Indicate(Primitive.P_DATA_INDICATION, pdu)], 0

    def _AR_1(self, now: float, rq: Any) -> tuple[list, int]:
        return [SendPDU(rq)], 0

    def _AR_2(self, now: float, rq: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_RELEASE_INDICATION, rq)], 0

    def _AR_3(self, now: float, rp: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_RELEASE_CONFIRMATION, rp), _CLOSE], 0

    def _AR_4(self, now: float, rp: Any) -> tuple[list, int]:
        self._start_artim(now)
        return [SendPDU(rp)], 0

    def _AR_5(self, now: float, _: Any) -> tuple[list, int]:
        # Only Sta13 + Evt17: the transport is already closed, so nothing is left to close.
        self._stop_artim()
        return [], 0

    def _AR_6(self, now: float, pdu: Any) -> tuple[list, int]:
        return [Indicate(Primitive.P_DATA_INDICATION, pdu)], 0

    def _AR_7(self, now: float, buffers: Any) -> tuple[list, int]:
        return [SendBuffers(buffers)], 0

    def _AR_8(self, now: float, rq: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_RELEASE_INDICATION, rq)], 0 if self.is_requestor else 1

    def _AR_9(self, now: float, rp: Any) -> tuple[list, int]:
        return [SendPDU(rp)], 0

    def _AR_10(self, now: float, rp: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_RELEASE_CONFIRMATION, rp)], 0

    def _AA_1(self, now: float, abort: Any) -> tuple[list, int]:
        # Evt15 carries the user's A-ABORT; a PDU received in Sta2 carries none, and the
        # table sends a service-user-source A-ABORT (PS3.8 Table 9-9).
        pdu = abort if isinstance(abort, AAbort) else _USER_ABORT
        self._start_artim(now)
        return [SendPDU(pdu)], 0

    def _AA_2(self, now: float, _: Any) -> tuple[list, int]:
        self._stop_artim()
        return [_CLOSE], 0

    def _AA_3(self, now: float, abort: Any) -> tuple[list, int]:
        source = getattr(abort, "source", ABORT_SOURCE_PROVIDER)
        primitive = (
            Primitive.A_ABORT_INDICATION
            if source == ABORT_SOURCE_USER
            else Primitive.A_P_ABORT_INDICATION
        )
        return [Indicate(primitive, abort), _CLOSE], 0

    def _AA_4(self, now: float, _: Any) -> tuple[list, int]:
        return [Indicate(Primitive.A_P_ABORT_INDICATION, None)], 0

    def _AA_5(self, now: float, _: Any) -> tuple[list, int]:
        self._stop_artim()
        return [], 0

    def _AA_6(self, now: float, _: Any) -> tuple[list, int]:
        return [], 0

    def _AA_7(self, now: float, cause: Any) -> tuple[list, int]:
        return [SendPDU(_provider_abort(cause))], 0

    def _AA_8(self, now: float, cause: Any) -> tuple[list, int]:
        pdu = _provider_abort(cause)
        self._start_artim(now)
        return [SendPDU(pdu), Indicate(Primitive.A_P_ABORT_INDICATION, pdu)], 0


#: The A-ABORT for a well-formed PDU received where Table 9-10 does not expect it.
_UNEXPECTED_PDU_ABORT = AAbort(source=ABORT_SOURCE_PROVIDER, reason=ABORT_REASON_UNEXPECTED_PDU)


def _provider_abort(cause: Any) -> AAbort:
    """The service-provider A-ABORT for ``cause`` (PS3.8 Table 9-26).

    A :class:`RemoteProtocolError` (Evt19) names its own reason; a well-formed PDU that
    arrived out of place is "unexpected-PDU".
    """
    if isinstance(cause, RemoteProtocolError):
        return AAbort(source=ABORT_SOURCE_PROVIDER, reason=cause.abort_reason)
    return _UNEXPECTED_PDU_ABORT
