"""Tests of the Upper Layer state machine (engine/_fsm.py) against PS3.8 9.2.

The table below is transcribed from PS3.8 Table 9-10 independently of the engine; the
next states come from the action definitions of PS3.8 Tables 9-6 to 9-9. Every one of
the 13 x 19 cells is compared with engine._fsm.TRANSITIONS and then driven through a
DULStateMachine, each cell its own test id ("Sta6-Evt12-AR-2", "Sta4-Evt3-empty").
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._errors import (
    ABORT_REASON_UNRECOGNIZED_PDU,
    LocalProtocolError,
    RemoteProtocolError,
)
from engine._fsm import (
    TRANSITIONS,
    Action,
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
from engine._pdu import (
    APPLICATION_CONTEXT_NAME,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_pdu,
    encode_pdu,
    pdata_header,
)

# --------------------------------------------------------------------------
# PS3.8 Table 9-10, one row per event, columns Sta1..Sta13; "-" is an empty cell.

TABLE_9_10 = """
Evt1:  AE-1 -    -    -    -    -    -    -    -    -     -    -    -
Evt2:  -    -    -    AE-2 -    -    -    -    -    -     -    -    -
Evt3:  -    AA-1 AA-8 -    AE-3 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt4:  -    AA-1 AA-8 -    AE-4 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt5:  AE-5 -    -    -    -    -    -    -    -    -     -    -    -
Evt6:  -    AE-6 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
Evt7:  -    -    AE-7 -    -    -    -    -    -    -     -    -    -
Evt8:  -    -    AE-8 -    -    -    -    -    -    -     -    -    -
Evt9:  -    -    -    -    -    DT-1 -    AR-7 -    -     -    -    -
Evt10: -    AA-1 AA-8 -    AA-8 DT-2 AR-6 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt11: -    -    -    -    -    AR-1 -    -    -    -     -    -    -
Evt12: -    AA-1 AA-8 -    AA-8 AR-2 AR-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt13: -    AA-1 AA-8 -    AA-8 AA-8 AR-3 AA-8 AA-8 AR-10 AR-3 AA-8 AA-6
Evt14: -    -    -    -    -    -    -    AR-4 AR-9 -     -    AR-4 -
Evt15: -    -    AA-1 AA-2 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1  AA-1 AA-1 -
Evt16: -    AA-2 AA-3 -    AA-3 AA-3 AA-3 AA-3 AA-3 AA-3  AA-3 AA-3 AA-2
Evt17: -    AA-5 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4  AA-4 AA-4 AR-5
Evt18: -    AA-2 -    -    -    -    -    -    -    -     -    -    AA-2
Evt19: -    AA-1 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
"""

# PS3.8 Tables 9-6 to 9-9: the state each action leads to. AE-6: (request acceptable to
# the service provider, not acceptable); AR-8: (association-requestor, acceptor).
NEXT_STATE: dict[str, str | tuple[str, str]] = {
    "AE-1": "Sta4", "AE-2": "Sta5", "AE-3": "Sta6", "AE-4": "Sta1", "AE-5": "Sta2",
    "AE-6": ("Sta3", "Sta13"), "AE-7": "Sta6", "AE-8": "Sta13",
    "DT-1": "Sta6", "DT-2": "Sta6",
    "AR-1": "Sta7", "AR-2": "Sta8", "AR-3": "Sta1", "AR-4": "Sta13", "AR-5": "Sta1",
    "AR-6": "Sta7", "AR-7": "Sta8", "AR-8": ("Sta9", "Sta10"), "AR-9": "Sta11",
    "AR-10": "Sta12",
    "AA-1": "Sta13", "AA-2": "Sta1", "AA-3": "Sta1", "AA-4": "Sta1", "AA-5": "Sta1",
    "AA-6": "Sta13", "AA-7": "Sta13", "AA-8": "Sta13",
}  # fmt: skip

STATES = [f"Sta{i}" for i in range(1, 14)]
EVENTS = [f"Evt{i}" for i in range(1, 20)]
#: Primitives from the local service user (PS3.8 Table 9-10 events 1, 7-9, 11, 14, 15).
USER_EVENTS = {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"}


def _parse_table(text: str) -> dict[tuple[str, str], str]:
    grid: dict[tuple[str, str], str] = {}
    rows = [line.split() for line in text.strip().splitlines()]
    assert [row[0] for row in rows] == [f"{e}:" for e in EVENTS]
    for row in rows:
        assert len(row) == 14, row
        event = row[0].rstrip(":")
        for state, cell in zip(STATES, row[1:]):
            if cell != "-":
                grid[(state, event)] = cell
    return grid


GRID = _parse_table(TABLE_9_10)
ALL_CELLS = [(s, e) for e in EVENTS for s in STATES]


def _cell_id(cell: tuple[str, str]) -> str:
    state, event = cell
    return f"{state}-{event}-{GRID.get(cell, 'empty')}"


def _next_states(action: str) -> set[State]:
    nxt = NEXT_STATE[action]
    return {State[s] for s in ((nxt,) if isinstance(nxt, str) else nxt)}


# --------------------------------------------------------------------------
# (a) The engine's table is the standard's, cell for cell.


def test_grid_transcription_is_complete() -> None:
    # Sanity of the transcription itself: 19 rows, every action of Tables 9-6..9-9 used.
    assert set(GRID.values()) == set(NEXT_STATE)
    assert {a.label for a in Action} == set(NEXT_STATE)
    assert len(GRID) == len(TRANSITIONS)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=_cell_id)
def test_transitions_cell_matches_table_9_10(cell: tuple[str, str]) -> None:
    state, event = cell
    key = (State[state], Event[event])
    if cell not in GRID:
        assert key not in TRANSITIONS
        return
    action, next_state = TRANSITIONS[key]
    assert action.label == GRID[cell]
    expected = NEXT_STATE[GRID[cell]]
    if isinstance(expected, str):
        assert next_state is State[expected]
    else:
        assert next_state == (State[expected[0]], State[expected[1]])


# --------------------------------------------------------------------------
# (b) Every cell driven through the machine.

NOW = 100.0
ARTIM_TIMEOUT = 30.0
# A deadline set before each event, to tell "started", "stopped" and "left alone" apart.
SENTINEL_DEADLINE = 42.0

# AE titles as they travel: 16 bytes, space padded (PS3.8 Table 9-11).
RQ = AAssociateRQ(
    called_ae_title=b"STORESCP".ljust(16),
    calling_ae_title=b"STORESCU".ljust(16),
    application_context_name=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(
        PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
    ),
    user_information=UserInformation(max_length=16382, implementation_class_uid="1.2.3.4"),
)
AC = AAssociateAC(
    called_ae_title=b"STORESCP".ljust(16),
    calling_ae_title=b"STORESCU".ljust(16),
    application_context_name=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
    user_information=UserInformation(max_length=16382, implementation_class_uid="1.2.3.5"),
)
# Rejected-permanent, service-user, calling-AE-title-not-recognized (PS3.8 Table 9-21).
RJ = AAssociateRJ(result=1, source=1, reason=3)
RJ_BYTES = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"
# One command PDV, last fragment, carrying two bytes.
PDATA = PDataTF((PDV(1, True, True, memoryview(b"\x00\x00")),))
# A P-DATA request as the DIMSE layer hands it over: header and payload buffers.
BUFFERS = [pdata_header(1, True, True, 4), b"abcd"]
# A-ABORT, service-user source, reason not significant (0) (PS3.8 Table 9-26).
USER_ABORT = AAbort(source=0, reason=0)
USER_ABORT_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A-ABORT, service-provider source, reason unrecognized-PDU (1).
PEER_PROVIDER_ABORT = AAbort(source=2, reason=1)
# A-ABORT, service-provider source, unexpected-PDU (2): a PDU where Table 9-10 has AA-7/8.
UNEXPECTED_PDU_ABORT = AAbort(source=2, reason=2)
UNEXPECTED_PDU_ABORT_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x02"
# A-ABORT, service-provider source, unrecognized-PDU (1): the answer to Evt19 below.
UNRECOGNIZED_PDU_ABORT_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"
RELEASE_RQ_BYTES = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP_BYTES = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
BAD_PDU = RemoteProtocolError(
    "unrecognized PDU type 0xFF", abort_reason=ABORT_REASON_UNRECOGNIZED_PDU
)

#: Known encodings of the fixed-length PDUs the machine sends (PS3.8 9.3.4-9.3.8).
KNOWN_BYTES: dict[Any, bytes] = {
    RJ: RJ_BYTES,
    USER_ABORT: USER_ABORT_BYTES,
    UNEXPECTED_PDU_ABORT: UNEXPECTED_PDU_ABORT_BYTES,
    AAbort(source=2, reason=1): UNRECOGNIZED_PDU_ABORT_BYTES,
    AReleaseRQ(): RELEASE_RQ_BYTES,
    AReleaseRP(): RELEASE_RP_BYTES,
}

#: What each event carries into handle(); Evt16 is tried with both abort sources.
PAYLOADS: dict[str, list[Any]] = {
    "Evt1": [RQ],
    "Evt2": [None],
    "Evt3": [AC],
    "Evt4": [RJ],
    "Evt5": [None],
    "Evt6": [RQ],
    "Evt7": [AC],
    "Evt8": [RJ],
    "Evt9": [BUFFERS],
    "Evt10": [PDATA],
    "Evt11": [AReleaseRQ()],
    "Evt12": [AReleaseRQ()],
    "Evt13": [AReleaseRP()],
    "Evt14": [AReleaseRP()],
    "Evt15": [USER_ABORT],
    "Evt16": [PEER_PROVIDER_ABORT, USER_ABORT],
    "Evt17": [None],
    "Evt18": [None],
    "Evt19": [BAD_PDU],
}

P = Primitive


def _provider_abort(event: str) -> AAbort:
    if event == "Evt19":
        return AAbort(source=2, reason=BAD_PDU.abort_reason)
    return UNEXPECTED_PDU_ABORT


def _expected(
    action: str, event: str, payload: Any, *, is_requestor: bool, acceptable: bool
) -> tuple[list[tuple], str, State]:
    """(outputs, ARTIM effect, next state) that PS3.8 Tables 9-6..9-9 give ``action``."""
    keep, start, stop = "keep", "start", "stop"
    nxt = NEXT_STATE[action]
    if action == "AE-6":
        nxt = nxt[0] if acceptable else nxt[1]
    elif action == "AR-8":
        nxt = nxt[0] if is_requestor else nxt[1]
    table: dict[str, tuple[list[tuple], str]] = {
        "AE-1": ([("connect",)], keep),
        "AE-2": ([("send", RQ)], keep),
        "AE-3": ([("indicate", P.A_ASSOCIATE_ACCEPT_CONFIRMATION, AC)], keep),
        "AE-4": ([("indicate", P.A_ASSOCIATE_REJECT_CONFIRMATION, RJ), ("close",)], keep),
        "AE-5": ([], start),
        "AE-6": (
            ([("indicate", P.A_ASSOCIATE_INDICATION, RQ)], stop)
            if acceptable
            # Stop ARTIM, send the RJ, start ARTIM: the net effect is a fresh deadline.
            else ([("send", RJ)], start)
        ),
        "AE-7": ([("send", AC)], keep),
        "AE-8": ([("send", RJ)], start),
        "DT-1": ([("buffers", BUFFERS)], keep),
        "DT-2": ([("indicate", P.P_DATA_INDICATION, PDATA)], keep),
        "AR-1": ([("send", AReleaseRQ())], keep),
        "AR-2": ([("indicate", P.A_RELEASE_INDICATION, AReleaseRQ())], keep),
        "AR-3": ([("indicate", P.A_RELEASE_CONFIRMATION, AReleaseRP()), ("close",)], keep),
        "AR-4": ([("send", AReleaseRP())], start),
        "AR-5": ([], stop),
        "AR-6": ([("indicate", P.P_DATA_INDICATION, PDATA)], keep),
        "AR-7": ([("buffers", BUFFERS)], keep),
        "AR-8": ([("indicate", P.A_RELEASE_INDICATION, AReleaseRQ())], keep),
        "AR-9": ([("send", AReleaseRP())], keep),
        "AR-10": ([("indicate", P.A_RELEASE_CONFIRMATION, AReleaseRP())], keep),
        # Service-user source: the user's own A-ABORT on Evt15, else reason 0.
        "AA-1": ([("send", payload if event == "Evt15" else USER_ABORT)], start),
        "AA-2": ([("close",)], stop),
        "AA-3": (
            [
                (
                    "indicate",
                    # Service-user source (0): A-ABORT; service-provider source: A-P-ABORT.
                    P.A_ABORT_INDICATION
                    if getattr(payload, "source", None) == 0
                    else P.A_P_ABORT_INDICATION,
                    payload,
                ),
                ("close",),
            ],
            keep,
        ),
        "AA-4": ([("indicate", P.A_P_ABORT_INDICATION, None)], keep),
        "AA-5": ([], stop),
        "AA-6": ([], keep),
        "AA-7": ([("send", _provider_abort(event))], keep),
        "AA-8": (
            [
                ("send", _provider_abort(event)),
                ("indicate", P.A_P_ABORT_INDICATION, _provider_abort(event)),
            ],
            start,
        ),
    }
    outputs, artim = table[action]
    return outputs, artim, State[nxt]


def _describe(outputs: list) -> list[tuple]:
    """The machine's output objects as comparable tuples; checks each sent PDU's bytes."""
    described: list[tuple] = []
    for out in outputs:
        if type(out) is SendPDU:
            data = encode_pdu(out.pdu)
            if out.pdu in KNOWN_BYTES:
                assert data == KNOWN_BYTES[out.pdu]
            else:
                assert decode_pdu(data) == out.pdu
            described.append(("send", out.pdu))
        elif type(out) is SendBuffers:
            described.append(("buffers", out.buffers))
        elif type(out) is Indicate:
            described.append(("indicate", out.primitive, out.pdu))
        elif type(out) is CloseTransport:
            described.append(("close",))
        elif type(out) is ConnectTransport:
            described.append(("connect",))
        else:
            raise AssertionError(f"unexpected output {out!r}")
    return described


def _machine_in(state: str, *, is_requestor: bool, acceptable: bool) -> DULStateMachine:
    machine = DULStateMachine(
        is_requestor=is_requestor,
        artim_timeout=ARTIM_TIMEOUT,
        acceptable=(lambda rq: None) if acceptable else (lambda rq: RJ),
    )
    if state == "Sta4":
        # Reached the way the requestor reaches it, so AE-2 has the request to send.
        assert _describe(machine.handle(Event.Evt1, 0.0, RQ)) == [("connect",)]
    machine.state = State[state]
    machine.artim_deadline = SENTINEL_DEADLINE
    return machine


def _variants(cell: tuple[str, str]) -> list[tuple[bool, bool, Any]]:
    """(is_requestor, acceptable, payload) combinations worth driving through ``cell``."""
    return [
        (is_requestor, acceptable, payload)
        for is_requestor in (True, False)
        for acceptable in (True, False)
        for payload in PAYLOADS[cell[1]]
    ]


@pytest.mark.parametrize("cell", ALL_CELLS, ids=_cell_id)
def test_cell_behaviour(cell: tuple[str, str]) -> None:
    state, event = cell
    action = GRID.get(cell)
    for is_requestor, acceptable, payload in _variants(cell):
        machine = _machine_in(state, is_requestor=is_requestor, acceptable=acceptable)
        context = f"requestor={is_requestor} acceptable={acceptable} payload={payload!r}"
        if action is None:
            with pytest.raises(LocalProtocolError):
                machine.handle(Event[event], NOW, payload)
            assert machine.state is State[state], context
            assert machine.artim_deadline == SENTINEL_DEADLINE, context
            continue
        outputs = machine.handle(Event[event], NOW, payload)
        want_outputs, artim, want_state = _expected(
            action, event, payload, is_requestor=is_requestor, acceptable=acceptable
        )
        assert machine.state is want_state, context
        described = _describe(outputs)
        assert described == want_outputs, context
        # Payloads pass through untouched, not copied.
        for got, want in zip(described, want_outputs):
            if want[0] in ("buffers",) or (want[0] == "indicate" and want[2] is payload):
                assert got[-1] is want[-1], context
        if artim == "start":
            assert machine.artim_deadline == NOW + ARTIM_TIMEOUT, context
            assert machine.artim_expired(NOW + ARTIM_TIMEOUT)
            assert not machine.artim_expired(NOW + ARTIM_TIMEOUT - 0.001)
        elif artim == "stop":
            assert machine.artim_deadline is None, context
            assert not machine.artim_expired(NOW + 1e9)
        else:
            assert machine.artim_deadline == SENTINEL_DEADLINE, context


def test_user_primitive_in_empty_cell_names_event_and_state() -> None:
    machine = DULStateMachine(is_requestor=False)
    with pytest.raises(LocalProtocolError, match=r"Evt9 .*Sta1"):
        machine.handle(Event.Evt9, NOW, BUFFERS)


def test_transition_for_reports_cells() -> None:
    machine = DULStateMachine(is_requestor=True)
    assert machine.transition_for(Event.Evt1) == (Action.AE_1, State.Sta4)
    assert machine.transition_for(Event.Evt9) is None


def test_artim_disabled_never_runs() -> None:
    machine = DULStateMachine(is_requestor=False, artim_timeout=None)
    machine.handle(Event.Evt5, NOW)
    assert machine.artim_deadline is None
    assert not machine.artim_expired(NOW + 1e9)


def test_requestor_association_and_release_walk() -> None:
    """Evt1, Evt2, Evt3, Evt9, Evt11, Evt13: the requestor's normal life (PS3.8 9.2)."""
    machine = DULStateMachine(is_requestor=True)
    walk = [
        (Event.Evt1, RQ, State.Sta4),
        (Event.Evt2, None, State.Sta5),
        (Event.Evt3, AC, State.Sta6),
        (Event.Evt9, BUFFERS, State.Sta6),
        (Event.Evt11, AReleaseRQ(), State.Sta7),
        (Event.Evt13, AReleaseRP(), State.Sta1),
    ]
    for event, payload, state in walk:
        machine.handle(event, NOW, payload)
        assert machine.state is state
    assert machine.artim_deadline is None


# --------------------------------------------------------------------------
# (c) Random event sequences.

_EVENT_CHOICES = st.tuples(
    st.sampled_from(EVENTS), st.integers(min_value=0, max_value=1)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(STATES),
    is_requestor=st.booleans(),
    acceptable=st.booleans(),
    steps=st.lists(_EVENT_CHOICES, max_size=40),
)
def test_random_sequences_stay_inside_the_table(
    start: str, is_requestor: bool, acceptable: bool, steps: list[tuple[str, int]]
) -> None:
    machine = DULStateMachine(
        is_requestor=is_requestor,
        acceptable=(lambda rq: None) if acceptable else (lambda rq: RJ),
    )
    machine.state = State[start]
    now = 0.0
    for event, pick in steps:
        now += 1.0
        payloads = PAYLOADS[event]
        payload = payloads[pick % len(payloads)]
        before = machine.state
        cell = GRID.get((before.name, event))
        try:
            outputs = machine.handle(Event[event], now, payload)
        except LocalProtocolError:
            assert cell is None
            assert machine.state is before
            continue
        assert cell is not None
        assert machine.state in _next_states(cell)
        assert all(
            type(o) in (SendPDU, SendBuffers, Indicate, CloseTransport, ConnectTransport)
            for o in outputs
        )
        # ARTIM runs only while awaiting an A-ASSOCIATE-RQ or the transport close.
        if machine.artim_deadline is not None:
            assert machine.state in (State.Sta2, State.Sta13)
