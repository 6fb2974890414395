"""Tests of the sans-IO Connection (engine/_connection.py) as an in-memory pair.

A requestor Connection and an acceptor Connection are wired together by handing each
one's data_to_send() to the other's receive_data(): no sockets, no event loop, the clock
is a float the test advances. Covers association (PS3.8 7.1), P-DATA with fragmentation
(PS3.8 9.3.5, Annex E), release and release collision (PS3.8 7.2, Table 9-10 Sta7-Sta12),
abort (PS3.8 7.3, 7.4), rejection (PS3.8 9.3.4), ARTIM (PS3.8 9.1.5) and invalid PDUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine._acse import AcceptorPolicy, build_request, evaluate_request, provider_check
from engine._errors import ABORT_SOURCE_USER
from engine._connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    AssociationRequestSent,
    CommandReceived,
    Connection,
    ConnectionEvent,
    DatasetFragment,
    ReleaseConfirmed,
    ReleaseRequested,
)
from engine._dimse import CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, encode_command, fragment_message
from engine._errors import LocalProtocolError
from engine._fsm import State
from engine._pdu import PDV, AAssociateRJ, PDataTF, encode_pdu, pdata_header
from engine.presentation import assign_context_ids, build_context

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.1"

# A-ABORT, service-user source (0), reason 0 (PS3.8 Table 9-26).
USER_ABORT_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A-ABORT, service-provider source (2), reason 1 unrecognized-PDU.
PROVIDER_ABORT_UNRECOGNIZED_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"
# A-ABORT, service-provider source (2), reason 2 unexpected-PDU.
PROVIDER_ABORT_UNEXPECTED_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x02"
# A-ABORT, service-provider source (2), reason 6 invalid-PDU-parameter value.
PROVIDER_ABORT_INVALID_BYTES = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
# A-RELEASE-RQ and A-RELEASE-RP: type, reserved, length 4, 4 reserved bytes.
RELEASE_RQ_BYTES = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP_BYTES = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A P-DATA-TF header claiming a 200-byte variable field (PS3.8 Table 9-22).
PDATA_200_HEADER = b"\x04\x00\x00\x00\x00\xc8"
# Six bytes of a PDU type that does not exist (FFH), length 4.
GARBAGE = b"\xff\x00\x00\x00\x00\x04"

ARTIM = 30.0  # the PS3.8 9.1.5 timer as configured on both sides


def _events_of(events: list[ConnectionEvent], kind: type) -> list[Any]:
    return [e for e in events if type(e) is kind]


class Pair:
    """A requestor and an acceptor Connection joined in memory."""

    def __init__(
        self,
        *,
        requestor_max: int = 16382,
        acceptor_max: int = 16382,
        acceptable: Callable[[Any], Any] | None = provider_check,
        contexts: tuple[str, ...] = (VERIFICATION, CT_IMAGE_STORAGE),
        one_byte: bool = False,
        dimse_timeout: float | None = None,
        network_timeout: float | None = None,
    ) -> None:
        self.now = 1000.0
        self.one_byte = one_byte
        self.requestor_max = requestor_max
        self.acceptor_max = acceptor_max
        self.contexts = assign_context_ids([build_context(uid) for uid in contexts])
        timers = dict(dimse_timeout=dimse_timeout, network_timeout=network_timeout)
        self.req = Connection(
            is_requestor=True, max_pdu_receive=requestor_max, artim_timeout=ARTIM, **timers
        )
        self.acc = Connection(
            is_requestor=False,
            max_pdu_receive=acceptor_max,
            artim_timeout=ARTIM,
            acceptable=acceptable,
            **timers,
        )
        self.req_events: list[ConnectionEvent] = []
        self.acc_events: list[ConnectionEvent] = []
        self.policy = AcceptorPolicy(
            ae_title=b"STORESCP",
            supported_contexts=[build_context(uid) for uid in contexts],
            maximum_pdu_size=acceptor_max,
            implementation_class_uid="1.2.826.0.1.3680043.8.498.2",
            implementation_version_name="TEST_ACC",
        )

    # -- plumbing -----------------------------------------------------------------------

    def wire(self, src: Connection) -> bytes:
        """Everything ``src`` wants to send, as one bytes object."""
        return b"".join(bytes(b) for b in src.data_to_send())

    def deliver(self, data: bytes, dst: Connection) -> None:
        if self.one_byte:
            for i in range(len(data)):
                dst.receive_data(data[i : i + 1], self.now)
        else:
            dst.receive_data(data, self.now)

    def to_acceptor(self) -> bytes:
        data = self.wire(self.req)
        self.deliver(data, self.acc)
        self.acc_events.extend(self.acc.events())
        return data

    def to_requestor(self) -> bytes:
        data = self.wire(self.acc)
        self.deliver(data, self.req)
        self.req_events.extend(self.req.events())
        return data

    def take(self) -> tuple[list[ConnectionEvent], list[ConnectionEvent]]:
        """(requestor events, acceptor events) collected since the last take()."""
        self.req_events.extend(self.req.events())
        self.acc_events.extend(self.acc.events())
        req, acc = self.req_events, self.acc_events
        self.req_events, self.acc_events = [], []
        return req, acc

    # -- scenarios ------------------------------------------------------------------------

    def request(self, **overrides: Any) -> AssociationRequested:
        fields: dict[str, Any] = dict(
            called_ae_title=b"STORESCP",
            calling_ae_title=b"STORESCU",
            contexts=self.contexts,
            maximum_pdu_size=self.requestor_max,
            implementation_class_uid="1.2.826.0.1.3680043.8.498.3",
            implementation_version_name="TEST_REQ",
        )
        fields.update(overrides)
        rq = build_request(**fields)
        self.req.request_association(rq, self.now)
        assert self.req.wants_connect and self.req.state is State.Sta4
        # The adapter opens the transport: both ends learn of it.
        self.acc.connection_made(self.now)
        assert self.acc.state is State.Sta2
        self.req.connection_made(self.now)
        assert not self.req.wants_connect and self.req.state is State.Sta5
        self.to_acceptor()
        _, acc = self.take()
        if self.acc.state is State.Sta13:
            return None  # type: ignore[return-value]  # refused by the provider
        (requested,) = acc
        assert type(requested) is AssociationRequested
        assert self.acc.state is State.Sta3
        return requested

    def associate(self) -> None:
        requested = self.request()
        ac, contexts = evaluate_request(requested.request, self.policy)
        assert [cx.context_id for cx in contexts] == [cx.context_id for cx in self.contexts]
        self.acc.accept(ac, self.now)
        assert self.acc.state is State.Sta6
        self.to_requestor()
        req, acc = self.take()
        assert [type(e) for e in req] == [AssociationAccepted]
        assert req[0].accept == ac
        assert acc == []
        assert self.req.state is State.Sta6
        assert self.req.peer_max_pdu == self.acceptor_max
        assert self.acc.peer_max_pdu == self.requestor_max
        assert self.req.is_established and self.acc.is_established


def _assert_aborted(
    event: ConnectionEvent, source: int | None, reason: int | None, *, local: bool
) -> None:
    assert type(event) is Aborted
    assert (event.source, event.reason, event.local) == (source, reason, local)


# --------------------------------------------------------------------------
# Association establishment.


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_association_accepted(one_byte: bool) -> None:
    pair = Pair(one_byte=one_byte)
    requested = pair.request()
    rq = requested.request
    assert rq.called_ae_title == b"STORESCP".ljust(16)
    assert rq.calling_ae_title == b"STORESCU".ljust(16)
    assert rq.user_information.max_length == 16382
    assert [pc.abstract_syntax for pc in rq.presentation_contexts] == [
        VERIFICATION,
        CT_IMAGE_STORAGE,
    ]
    # AE-6 stopped the ARTIM timer that AE-5 started.
    assert pair.acc.next_deadline() is None
    ac, contexts = evaluate_request(rq, pair.policy)
    pair.acc.accept(ac, pair.now)
    pair.to_requestor()
    req_events, acc_events = pair.take()
    (accepted,) = req_events
    assert type(accepted) is AssociationAccepted
    assert accepted.accept.user_information.max_length == 16382
    assert [pc.result for pc in accepted.accept.presentation_contexts] == [0, 0]
    assert pair.req.state is State.Sta6 and pair.acc.state is State.Sta6
    assert not pair.req.wants_close and not pair.acc.wants_close


def test_association_requestor_connect_failure_is_a_provider_abort() -> None:
    pair = Pair()
    pair.req.request_association(
        build_request(
            called_ae_title=b"SCP",
            calling_ae_title=b"SCU",
            contexts=pair.contexts,
            maximum_pdu_size=0,
            implementation_class_uid="1.2.3",
            implementation_version_name=None,
        ),
        pair.now,
    )
    # Transport connection closed while awaiting its opening: Sta4 + Evt17, AA-4.
    pair.req.connection_lost(pair.now)
    (event,) = pair.req.events()
    _assert_aborted(event, None, None, local=False)
    assert pair.req.state is State.Sta1


# --------------------------------------------------------------------------
# Rejection (PS3.8 9.3.4, Table 9-21).


@pytest.mark.parametrize(
    "rj",
    [(1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 7), (2, 1, 1), (1, 2, 2), (2, 3, 1), (2, 3, 2)],
    ids=lambda rj: "RJ-%d-%d-%d" % rj,
)
def test_rejected_by_user(rj: tuple[int, int, int]) -> None:
    pair = Pair()
    pair.request()
    reject = AAssociateRJ(*rj)
    pair.acc.reject(reject, pair.now)
    assert pair.acc.state is State.Sta13
    # AE-8 started ARTIM: the acceptor waits for the requestor to close.
    assert pair.acc.next_deadline() == pair.now + ARTIM
    data = pair.to_requestor()
    # A-ASSOCIATE-RJ: type 03H, length 4, reserved, result, source, reason/diag.
    assert data == b"\x03\x00\x00\x00\x00\x04\x00" + bytes(rj)
    req_events, _ = pair.take()
    (rejected,) = req_events
    assert type(rejected) is AssociationRejected and rejected.reject == reject
    assert pair.req.state is State.Sta1 and pair.req.wants_close
    # The requestor closes; the acceptor sees Evt17 in Sta13 (AR-5).
    pair.acc.connection_lost(pair.now)
    assert pair.acc.state is State.Sta1 and pair.acc.next_deadline() is None
    assert pair.acc.events() == []


def test_rejected_by_provider_protocol_version() -> None:
    pair = Pair()
    pair.req.request_association(
        build_request(
            called_ae_title=b"STORESCP",
            calling_ae_title=b"STORESCU",
            contexts=pair.contexts,
            maximum_pdu_size=16382,
            implementation_class_uid="1.2.3",
            implementation_version_name=None,
        ),
        pair.now,
    )
    pair.acc.connection_made(pair.now)
    pair.req.connection_made(pair.now)
    data = bytearray(pair.wire(pair.req))
    data[7] = 0x02  # protocol-version 0002H: bit 0 (version 1) clear (PS3.8 9.3.2)
    pair.acc.receive_data(bytes(data), pair.now)
    # AE-6, not acceptable: the user never hears of it; RJ (1, 2, 2) goes out.
    assert pair.acc.events() == []
    assert pair.acc.state is State.Sta13
    assert pair.acc.next_deadline() == pair.now + ARTIM
    assert pair.to_requestor() == b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02"
    req_events, _ = pair.take()
    sent, rejected = req_events
    assert isinstance(sent, AssociationRequestSent)
    assert (rejected.reject.result, rejected.reject.source, rejected.reject.reason) == (1, 2, 2)


def test_rejected_by_provider_local_limit() -> None:
    pair = Pair(acceptable=lambda rq: provider_check(rq, active=4, maximum=4))
    assert pair.request() is None
    assert pair.to_requestor() == b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02"
    assert pair.req.state is State.Sta1


# --------------------------------------------------------------------------
# Data transfer with fragmentation (PS3.8 9.3.5, Annex E).

DATASET_SIZES = [0, 1, 121, 122, 123, 1000, 4099]


def _dataset(size: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


def _store_roundtrip(pair: Pair, size: int) -> None:
    dataset = _dataset(size)
    command = CStoreRQ(
        message_id=7,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
    )
    pair.req.send_message(3, command, dataset, pair.now)
    wire = pair.to_acceptor()
    # Every P-DATA-TF respects the acceptor's Maximum Length (PS3.8 D.1).
    pos = 0
    while pos < len(wire):
        assert wire[pos] == 0x04
        length = int.from_bytes(wire[pos + 2 : pos + 6], "big")
        assert length <= pair.acceptor_max
        pos += 6 + length
    assert pos == len(wire)
    _, acc_events = pair.take()
    received, *fragments = acc_events
    assert received == CommandReceived(3, command)
    assert all(type(f) is DatasetFragment for f in fragments)
    assert all(type(f.data) is memoryview for f in fragments)
    assert all(f.context_id == 3 for f in fragments)
    assert [f.is_last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert b"".join(bytes(f.data) for f in fragments) == dataset
    limit = pair.acceptor_max - 6  # PDV item header: length, context ID, control byte
    assert len(fragments) == max(1, -(-size // limit))

    response = CStoreRSP(
        message_id_being_responded_to=7,
        status=0x0000,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
    )
    pair.acc.send_message(3, response, None, pair.now)
    pair.to_requestor()
    req_events, _ = pair.take()
    assert req_events == [CommandReceived(3, response)]


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("size", DATASET_SIZES)
def test_c_store_fragmented(size: int, one_byte: bool) -> None:
    # Maximum Length 128 on the acceptor: PDVs carry at most 122 data bytes.
    pair = Pair(acceptor_max=128, requestor_max=256, one_byte=one_byte)
    pair.associate()
    _store_roundtrip(pair, size)


def test_the_data_transfer_shortcut_is_table_9_10s_cells() -> None:
    """Connection takes Sta6's Evt9 and Evt10 without walking the table: the table must
    say exactly that (DT-1 and DT-2, staying in Sta6), and those actions must output
    only the P-DATA they carry."""
    import engine._connection as connection
    from engine._fsm import TRANSITIONS, Action, DULStateMachine, Event, Indicate, Primitive, SendBuffers

    assert connection._DATA_TRANSFER is State.Sta6
    assert TRANSITIONS[(State.Sta6, Event.Evt9)] == (Action.DT_1, State.Sta6)
    assert TRANSITIONS[(State.Sta6, Event.Evt10)] == (Action.DT_2, State.Sta6)
    machine = DULStateMachine(is_requestor=False)
    machine.state = State.Sta6
    buffers = [b"\x04"]
    [sent] = machine.handle(Event.Evt9, 0.0, buffers)
    assert type(sent) is SendBuffers and sent.buffers is buffers and machine.state is State.Sta6
    pdu = PDataTF((PDV(1, True, True, memoryview(b"xy")),))
    [indicated] = machine.handle(Event.Evt10, 0.0, pdu)
    assert type(indicated) is Indicate and indicated.primitive is Primitive.P_DATA_INDICATION
    assert indicated.pdu is pdu and machine.state is State.Sta6


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_the_data_transfer_shortcut_changes_nothing_on_the_wire_or_in_events(
    one_byte: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same messages, releases included, with the shortcut and with every P-DATA
    through the table (the shortcut's state made unreachable): the same bytes each way
    and the same events."""
    import engine._connection as connection

    def run() -> list[Any]:
        pair = Pair(acceptor_max=128, requestor_max=256, one_byte=one_byte)
        pair.associate()
        seen: list[Any] = []
        for message_id in (1, 2):
            rq = CStoreRQ(message_id=message_id, affected_sop_class_uid=CT_IMAGE_STORAGE,
                          affected_sop_instance_uid=INSTANCE_UID)
            pair.req.send_message(3, rq, _dataset(300), pair.now)
            seen.append(pair.to_acceptor())
            seen.append([(type(e), getattr(e, "command", None), bytes(getattr(e, "data", b"")))
                         for e in pair.take()[1]])
            rsp = CStoreRSP(message_id_being_responded_to=message_id, status=0,
                            affected_sop_class_uid=CT_IMAGE_STORAGE, affected_sop_instance_uid=INSTANCE_UID)
            pair.acc.send_message(3, rsp, None, pair.now)
            seen.append(pair.to_requestor())
            seen.append(pair.take()[0])
        pair.req.release(pair.now)
        seen.append(pair.to_acceptor())
        seen.append([type(e) for e in pair.take()[1]])
        seen.append((pair.req.machine.state, pair.acc.machine.state))
        return seen

    with_shortcut = run()
    monkeypatch.setattr(connection, "_DATA_TRANSFER", object())
    without = run()
    assert with_shortcut == without
    assert any(isinstance(item, bytes) and len(item) > 300 for item in with_shortcut)


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_c_echo_and_several_messages(one_byte: bool) -> None:
    pair = Pair(acceptor_max=64, requestor_max=64, one_byte=one_byte)
    pair.associate()
    for message_id in (1, 2, 3):
        echo = CEchoRQ(message_id=message_id)
        pair.req.send_message(1, echo, None, pair.now)
        wire = pair.to_acceptor()
        # The command set (about 70 bytes) does not fit in one 58-byte PDV.
        assert wire.count(b"\x04\x00\x00\x00\x00") >= 2
        _, acc_events = pair.take()
        assert acc_events == [CommandReceived(1, echo)]
        rsp = CEchoRSP(message_id_being_responded_to=message_id, status=0)
        pair.acc.send_message(1, rsp, None, pair.now)
        pair.to_requestor()
        req_events, _ = pair.take()
        assert req_events == [CommandReceived(1, rsp)]
    for size in (0, 500):
        _store_roundtrip(pair, size)


def test_command_bytes_on_the_wire_match_encode_command() -> None:
    pair = Pair()
    pair.associate()
    echo = CEchoRQ(message_id=9)
    pair.req.send_message(1, echo, None, pair.now)
    command = encode_command(echo)
    assert pair.wire(pair.req) == pdata_header(1, True, True, len(command)) + command


def test_send_message_before_association_is_a_local_error() -> None:
    conn = Connection(is_requestor=False)
    conn.connection_made(0.0)
    with pytest.raises(LocalProtocolError):
        conn.send_message(1, CEchoRQ(message_id=1), None, 0.0)


# --------------------------------------------------------------------------
# Release (PS3.8 7.2) and release collision (Table 9-10 Sta9-Sta12).


def test_release_by_requestor() -> None:
    pair = Pair()
    pair.associate()
    pair.req.release(pair.now)
    assert pair.req.state is State.Sta7
    assert pair.to_acceptor() == RELEASE_RQ_BYTES
    _, acc_events = pair.take()
    assert [(type(e), e.collision) for e in acc_events] == [(ReleaseRequested, False)]
    assert pair.acc.state is State.Sta8
    pair.acc.release_response(pair.now)
    assert pair.acc.state is State.Sta13
    assert pair.acc.next_deadline() == pair.now + ARTIM  # AR-4 started ARTIM
    assert pair.to_requestor() == RELEASE_RP_BYTES
    req_events, _ = pair.take()
    assert [type(e) for e in req_events] == [ReleaseConfirmed]
    assert pair.req.state is State.Sta1 and pair.req.wants_close
    pair.acc.connection_lost(pair.now)
    assert pair.acc.state is State.Sta1 and pair.acc.next_deadline() is None


def test_release_by_acceptor() -> None:
    pair = Pair()
    pair.associate()
    pair.acc.release(pair.now)
    assert pair.to_requestor() == RELEASE_RQ_BYTES
    req_events, _ = pair.take()
    assert [(type(e), e.collision) for e in req_events] == [(ReleaseRequested, False)]
    pair.req.release_response(pair.now)
    assert pair.req.state is State.Sta13
    assert pair.to_acceptor() == RELEASE_RP_BYTES
    _, acc_events = pair.take()
    assert [type(e) for e in acc_events] == [ReleaseConfirmed]
    assert pair.acc.state is State.Sta1 and pair.acc.wants_close
    pair.req.connection_lost(pair.now)
    assert pair.req.state is State.Sta1


def test_data_still_flows_while_release_is_pending() -> None:
    """Sta7 + Evt10 (AR-6) and Sta8 + Evt9 (AR-7): the release waits for the data."""
    pair = Pair()
    pair.associate()
    pair.req.send_message(1, CEchoRQ(message_id=1), None, pair.now)
    pair.to_acceptor()
    pair.req.release(pair.now)
    pair.to_acceptor()
    _, acc_events = pair.take()
    assert [type(e) for e in acc_events] == [CommandReceived, ReleaseRequested]
    rsp = CEchoRSP(message_id_being_responded_to=1, status=0)
    pair.acc.send_message(1, rsp, None, pair.now)  # Sta8 + Evt9: AR-7
    pair.acc.release_response(pair.now)
    pair.to_requestor()  # Sta7 + Evt10 (AR-6), then Evt13 (AR-3)
    req_events, _ = pair.take()
    assert req_events[0] == CommandReceived(1, rsp)
    assert [type(e) for e in req_events[1:]] == [ReleaseConfirmed]


@pytest.mark.parametrize("answer_early", [False, True], ids=["answer-late", "answer-early"])
@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_release_collision(one_byte: bool, answer_early: bool) -> None:
    pair = Pair(one_byte=one_byte)
    pair.associate()
    pair.req.release(pair.now)
    pair.acc.release(pair.now)
    assert pair.req.state is State.Sta7 and pair.acc.state is State.Sta7
    # The two A-RELEASE-RQs cross: AR-8 on both sides.
    assert pair.to_acceptor() == RELEASE_RQ_BYTES
    assert pair.to_requestor() == RELEASE_RQ_BYTES
    req_events, acc_events = pair.take()
    assert [(type(e), e.collision) for e in req_events] == [(ReleaseRequested, True)]
    assert [(type(e), e.collision) for e in acc_events] == [(ReleaseRequested, True)]
    assert pair.req.state is State.Sta9  # requestor side: awaits the local response
    assert pair.acc.state is State.Sta10  # acceptor side: awaits the A-RELEASE-RP
    if answer_early:
        # The acceptor answers its indication at once: the core holds the answer until
        # the requestor's A-RELEASE-RP has arrived (AR-10), then sends it (AR-4).
        pair.acc.release_response(pair.now)
        assert pair.acc.state is State.Sta10
        assert pair.to_requestor() == b""
    pair.req.release_response(pair.now)  # AR-9
    assert pair.req.state is State.Sta11
    assert pair.to_acceptor() == RELEASE_RP_BYTES  # AR-10 on the acceptor
    _, acc_events = pair.take()
    assert [type(e) for e in acc_events] == [ReleaseConfirmed]
    if not answer_early:
        assert pair.acc.state is State.Sta12
        pair.acc.release_response(pair.now)  # AR-4
    assert pair.acc.state is State.Sta13
    assert pair.acc.next_deadline() == pair.now + ARTIM
    assert pair.to_requestor() == RELEASE_RP_BYTES  # AR-3 on the requestor
    req_events, _ = pair.take()
    assert [type(e) for e in req_events] == [ReleaseConfirmed]
    assert pair.req.state is State.Sta1 and pair.req.wants_close
    assert not pair.acc.wants_close
    pair.acc.connection_lost(pair.now)
    assert pair.acc.state is State.Sta1
    assert pair.take() == ([], [])


def test_release_collision_acceptor_artim_closes_if_requestor_never_does() -> None:
    pair = Pair()
    pair.associate()
    pair.req.release(pair.now)
    pair.acc.release(pair.now)
    pair.to_acceptor()
    pair.to_requestor()
    pair.req.release_response(pair.now)
    pair.to_acceptor()
    pair.acc.release_response(pair.now)
    assert pair.acc.state is State.Sta13
    pair.acc.handle_timer(pair.now + ARTIM - 1)
    assert pair.acc.state is State.Sta13 and not pair.acc.wants_close
    pair.acc.handle_timer(pair.now + ARTIM + 1)
    assert pair.acc.state is State.Sta1 and pair.acc.wants_close


# --------------------------------------------------------------------------
# Abort (PS3.8 7.3, 7.4; Table 9-26).


@pytest.mark.parametrize("who", ["requestor", "acceptor"])
@pytest.mark.parametrize("source,reason", [(0, 0), (2, 1), (2, 6)])
def test_abort(who: str, source: int, reason: int) -> None:
    pair = Pair()
    pair.associate()
    sender, receiver = (pair.req, pair.acc) if who == "requestor" else (pair.acc, pair.req)
    sender.abort(pair.now, source, reason)
    assert sender.state is State.Sta13
    assert sender.next_deadline() == pair.now + ARTIM  # AA-1 started ARTIM
    data = pair.to_acceptor() if who == "requestor" else pair.to_requestor()
    # A-ABORT: type 07H, length 4, two reserved bytes, source, reason/diag.
    assert data == b"\x07\x00\x00\x00\x00\x04\x00\x00" + bytes((source, reason))
    req_events, acc_events = pair.take()
    received = acc_events if who == "requestor" else req_events
    (event,) = received
    # AA-3: the peer's A-ABORT (or A-P-ABORT) is remote, not one we sent.
    _assert_aborted(event, source, reason, local=False)
    assert receiver.state is State.Sta1 and receiver.wants_close
    # The receiver closes; the sender sees Evt17 in Sta13 (AR-5) and reports nothing.
    sender.connection_lost(pair.now)
    assert sender.state is State.Sta1 and sender.next_deadline() is None
    assert sender.events() == []


def test_abort_after_association_is_gone_is_a_no_op() -> None:
    pair = Pair()
    pair.associate()
    pair.req.abort(pair.now)
    pair.req.abort(pair.now)  # Sta13: no cell for Evt15, quietly nothing
    assert pair.wire(pair.req) == USER_ABORT_BYTES


def test_transport_closed_under_an_association() -> None:
    pair = Pair()
    pair.associate()
    pair.acc.connection_lost(pair.now)
    (event,) = pair.acc.events()
    _assert_aborted(event, None, None, local=False)  # AA-4: A-P-ABORT indication
    assert pair.acc.state is State.Sta1


# --------------------------------------------------------------------------
# ARTIM (PS3.8 9.1.5).


def test_artim_expiry_in_sta2() -> None:
    conn = Connection(is_requestor=False, artim_timeout=ARTIM)
    conn.connection_made(100.0)
    assert conn.state is State.Sta2 and conn.next_deadline() == 100.0 + ARTIM
    conn.handle_timer(100.0 + ARTIM - 0.5)
    assert conn.state is State.Sta2 and not conn.wants_close
    conn.handle_timer(100.0 + ARTIM + 1)  # Evt18, AA-2
    assert conn.wants_close and conn.state is State.Sta1
    assert conn.next_deadline() is None
    assert conn.data_to_send() == [] and conn.events() == []
    # Bytes arriving after the close are not processed.
    conn.receive_data(GARBAGE, 200.0)
    assert conn.data_to_send() == []


def test_artim_expiry_in_sta13() -> None:
    pair = Pair()
    pair.request()
    pair.acc.reject(AAssociateRJ(1, 1, 1), pair.now)
    pair.wire(pair.acc)
    assert pair.acc.state is State.Sta13 and not pair.acc.wants_close
    pair.acc.handle_timer(pair.now + ARTIM + 1)  # Evt18 in Sta13: AA-2
    assert pair.acc.wants_close and pair.acc.state is State.Sta1
    assert pair.acc.next_deadline() is None
    assert pair.acc.events() == [] and pair.acc.data_to_send() == []


def test_artim_disabled() -> None:
    conn = Connection(is_requestor=False, artim_timeout=None)
    conn.connection_made(0.0)
    assert conn.next_deadline() is None
    conn.handle_timer(1e9)
    assert conn.state is State.Sta2


# --------------------------------------------------------------------------
# Invalid PDUs (Evt19) and over-long P-DATA-TF.


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_garbage_in_sta2_aborts(one_byte: bool) -> None:
    conn = Connection(is_requestor=False, artim_timeout=ARTIM)
    conn.connection_made(0.0)
    if one_byte:
        for i in range(len(GARBAGE)):
            conn.receive_data(GARBAGE[i : i + 1], 1.0)
    else:
        conn.receive_data(GARBAGE, 1.0)
    # Sta2 + Evt19: AA-1, an A-ABORT with service-user source.
    assert b"".join(conn.data_to_send()) == USER_ABORT_BYTES
    assert conn.state is State.Sta13
    assert conn.next_deadline() == 1.0 + ARTIM
    assert conn.events() == []
    assert conn.protocol_error is not None and conn.protocol_error.abort_reason == 1
    # Further input is ignored: the decoder is dead.
    conn.receive_data(GARBAGE, 2.0)
    assert conn.data_to_send() == [] and conn.state is State.Sta13
    conn.handle_timer(1.0 + ARTIM)
    assert conn.state is State.Sta1 and conn.wants_close


@pytest.mark.parametrize(
    "data,reason,abort_bytes",
    [
        (GARBAGE + b"\x00" * 4, 1, PROVIDER_ABORT_UNRECOGNIZED_BYTES),
        # A-RELEASE-RQ with PDU-length 5: fixed-length PDUs are 4 (PS3.8 Table 9-24).
        (b"\x05\x00\x00\x00\x00\x05" + bytes(5), 6, PROVIDER_ABORT_INVALID_BYTES),
        # P-DATA-TF whose only PDV claims more bytes than the PDU holds.
        (
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x10\x01\x03" + b"\x00\x00",
            6,
            PROVIDER_ABORT_INVALID_BYTES,
        ),
    ],
    ids=["unrecognized-type", "bad-release-length", "pdv-overrun"],
)
def test_invalid_pdu_in_sta6_is_a_provider_abort(
    data: bytes, reason: int, abort_bytes: bytes
) -> None:
    pair = Pair()
    pair.associate()
    pair.acc.receive_data(data, pair.now)
    # Sta6 + Evt19: AA-8, provider A-ABORT with the decoder's reason, A-P-ABORT indication.
    sent = pair.wire(pair.acc)
    assert sent == abort_bytes
    (event,) = pair.acc.events()
    _assert_aborted(event, 2, reason, local=True)
    assert pair.acc.state is State.Sta13
    assert pair.acc.next_deadline() == pair.now + ARTIM
    pair.deliver(sent, pair.req)
    (event,) = pair.req.events()
    _assert_aborted(event, 2, reason, local=False)
    assert pair.req.state is State.Sta1 and pair.req.wants_close


def test_unexpected_pdu_in_sta6_is_a_provider_abort() -> None:
    pair = Pair()
    pair.associate()
    pair.acc.receive_data(RELEASE_RP_BYTES, pair.now)  # Sta6 + Evt13: AA-8
    assert pair.wire(pair.acc) == PROVIDER_ABORT_UNEXPECTED_BYTES
    (event,) = pair.acc.events()
    _assert_aborted(event, 2, 2, local=True)
    assert pair.acc.state is State.Sta13


def test_pdata_over_our_maximum_is_refused_before_its_body() -> None:
    pair = Pair(acceptor_max=128)
    pair.associate()
    pair.acc.receive_data(PDATA_200_HEADER, pair.now)  # only the 6-byte header
    assert pair.wire(pair.acc) == PROVIDER_ABORT_INVALID_BYTES
    (event,) = pair.acc.events()
    _assert_aborted(event, 2, 6, local=True)
    assert pair.acc.state is State.Sta13


def test_pdata_at_our_maximum_is_accepted() -> None:
    pair = Pair(acceptor_max=128)
    pair.associate()
    pair.req.send_message(1, CEchoRQ(message_id=1), None, pair.now)
    pair.to_acceptor()
    # The data set's one PDV carries 122 bytes: a P-DATA-TF of exactly 128 bytes of
    # variable field, our Maximum Length, framed without complaint.
    store = CStoreRQ(
        message_id=2,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
    )
    pair.req.send_message(3, store, _dataset(122), pair.now)
    pair.to_acceptor()
    _, acc_events = pair.take()
    assert [type(e) for e in acc_events] == [CommandReceived, CommandReceived, DatasetFragment]
    assert pair.acc.state is State.Sta6


# --------------------------------------------------------------------------
# DIMSE violations: the DIMSE user aborts (service-user source, PS3.8 Table 9-26).


def _pdata(*pdvs: PDV) -> bytes:
    return encode_pdu(PDataTF(pdvs))


@pytest.mark.parametrize(
    "pdus",
    [
        # A data set fragment before any command.
        [_pdata(PDV(1, False, True, memoryview(b"\x00\x00")))],
        # A command that is not a command set (no Command Group Length).
        [_pdata(PDV(1, True, True, memoryview(b"\x08\x00\x10\x00\x00\x00\x00\x00")))],
        # Data after a C-ECHO-RQ that says no data set follows.
        [
            _pdata(PDV(1, True, True, memoryview(encode_command(CEchoRQ(message_id=1))))),
            _pdata(PDV(1, False, True, memoryview(b"\x00\x00"))),
        ],
    ],
    ids=["data-before-command", "malformed-command", "data-after-no-dataset"],
)
def test_dimse_violation_is_a_service_user_abort(pdus: list[bytes]) -> None:
    pair = Pair()
    pair.associate()
    for pdu in pdus:
        pair.acc.receive_data(pdu, pair.now)
    sent = pair.wire(pair.acc)
    assert sent == USER_ABORT_BYTES
    events = pair.acc.events()
    aborted = _events_of(events, Aborted)
    assert len(aborted) == 1
    _assert_aborted(aborted[0], 0, 0, local=True)
    assert aborted[0].detail
    assert pair.acc.state is State.Sta13
    assert pair.acc.next_deadline() == pair.now + ARTIM
    assert pair.acc.protocol_error is not None
    # The requestor sees a service-user A-ABORT: A-ABORT indication (AA-3).
    pair.deliver(sent, pair.req)
    (event,) = pair.req.events()
    _assert_aborted(event, 0, 0, local=False)
    assert pair.req.state is State.Sta1


def test_dimse_violation_in_same_chunk_as_more_pdus() -> None:
    pair = Pair()
    pair.associate()
    bad = _pdata(PDV(1, False, True, memoryview(b"\x00\x00")))
    echo = _pdata(PDV(1, True, True, memoryview(encode_command(CEchoRQ(message_id=1)))))
    pair.acc.receive_data(bad + echo + RELEASE_RQ_BYTES, pair.now)
    # Once aborted (Sta13) the rest is ignored (AA-6): one A-ABORT, no command event.
    assert pair.wire(pair.acc) == USER_ABORT_BYTES
    events = pair.acc.events()
    assert [type(e) for e in events] == [Aborted]


# --------------------------------------------------------------------------
# DIMSE, network and ACSE timers: deadlines on the caller's clock, in the core.

DIMSE_S = 7.0
NETWORK_S = 60.0


def _timed_pair() -> Pair:
    pair = Pair(dimse_timeout=DIMSE_S, network_timeout=NETWORK_S)
    pair.associate()
    return pair


def test_network_timeout_on_an_idle_association() -> None:
    pair = _timed_pair()
    assert pair.acc.next_deadline() == pair.now + NETWORK_S
    pair.acc.handle_timer(pair.now + NETWORK_S - 0.1)
    assert pair.acc.is_established and pair.acc.events() == []
    pair.acc.handle_timer(pair.now + NETWORK_S)
    (event,) = pair.acc.events()
    _assert_aborted(event, ABORT_SOURCE_USER, 0, local=True)
    assert event.detail == "network timeout"
    assert pair.acc.wants_close and pair.acc.state is State.Sta13
    assert pair.wire(pair.acc) == USER_ABORT_BYTES


def test_received_data_moves_the_network_deadline() -> None:
    pair = _timed_pair()
    pair.now += 30.0
    pair.req.send_message(1, CEchoRQ(message_id=1), None, pair.now)
    pair.to_acceptor()
    # The acceptor owes the C-ECHO-RSP: its own service user is at work, no timer runs.
    assert pair.acc.owes_response and pair.acc.next_deadline() is None
    # The requestor awaits the response: the DIMSE timeout runs.
    assert pair.req.next_deadline() == pair.now + DIMSE_S
    pair.now += 1.0
    pair.acc.send_message(1, CEchoRSP(message_id_being_responded_to=1, status=0), None, pair.now)
    assert not pair.acc.owes_response
    assert pair.acc.next_deadline() == pair.now + NETWORK_S
    pair.to_requestor()
    assert pair.req.next_deadline() == pair.now + NETWORK_S


def test_dimse_timeout_when_the_response_never_comes() -> None:
    pair = _timed_pair()
    pair.req.send_message(1, CEchoRQ(message_id=1), None, pair.now)
    pair.req.handle_timer(pair.now + DIMSE_S)
    (event,) = pair.req.events()
    assert event.detail == "DIMSE timeout" and event.local
    assert pair.req.wants_close


def test_dimse_timeout_on_a_message_stalled_halfway() -> None:
    pair = _timed_pair()
    rq = CStoreRQ(message_id=5, affected_sop_class_uid=CT_IMAGE_STORAGE,
                  affected_sop_instance_uid="1.2.3")
    buffers = fragment_message(1, encode_command(rq), None, pair.acceptor_max)
    buffers += [pdata_header(1, False, False, 2), b"\x08\x00"]  # a first data fragment
    pair.req.send_buffers(buffers, pair.now)
    pair.to_acceptor()
    assert pair.acc.next_deadline() == pair.now + DIMSE_S
    pair.acc.handle_timer(pair.now + DIMSE_S)
    events = _events_of(pair.acc.events(), Aborted)
    assert [e.detail for e in events] == ["DIMSE timeout"]


def test_pending_responses_keep_the_request_awaited() -> None:
    """PS3.7 9.1.2: a Pending status is not the final response."""
    pair = _timed_pair()
    rq = CStoreRQ(message_id=9, affected_sop_class_uid=CT_IMAGE_STORAGE,
                  affected_sop_instance_uid="1.2.3")
    pair.req.send_message(3, rq, b"\x08\x00\x16\x00\x00\x00\x00\x00", pair.now)
    pair.to_acceptor()
    pending = CStoreRSP(message_id_being_responded_to=9, status=0xFF00)
    pair.acc.send_message(3, pending, None, pair.now)
    assert pair.acc.owes_response
    pair.to_requestor()
    assert pair.req.next_deadline() == pair.now + DIMSE_S  # still awaited
    final = CStoreRSP(message_id_being_responded_to=9, status=0)
    pair.acc.send_message(3, final, None, pair.now)
    assert not pair.acc.owes_response
    pair.to_requestor()
    assert pair.req.next_deadline() == pair.now + NETWORK_S


def test_no_timeouts_configured_means_no_idle_timer() -> None:
    pair = Pair()
    pair.associate()
    assert pair.acc.next_deadline() is None and pair.req.next_deadline() is None


def test_acse_timeout_waiting_for_the_release_response() -> None:
    pair = _timed_pair()
    pair.req.release(pair.now)
    assert pair.req.next_deadline() == pair.now + ARTIM
    pair.req.handle_timer(pair.now + ARTIM)
    (event,) = pair.req.events()
    assert event.detail == "ACSE timeout" and pair.req.wants_close


def test_acse_timeout_waiting_for_the_association_response() -> None:
    conn = Connection(is_requestor=True, artim_timeout=ARTIM, network_timeout=NETWORK_S)
    rq = build_request(called_ae_title=b"A", calling_ae_title=b"B",
                       contexts=assign_context_ids([build_context(VERIFICATION)]),
                       maximum_pdu_size=16382, implementation_class_uid="1.2.3",
                       implementation_version_name=None)
    conn.request_association(rq, 10.0)
    conn.connection_made(11.0)
    assert conn.state is State.Sta5 and conn.next_deadline() == 11.0 + ARTIM
    conn.handle_timer(11.0 + ARTIM)
    sent, event = conn.events()
    assert isinstance(sent, AssociationRequestSent) and sent.request == rq
    assert event.detail == "ACSE timeout" and conn.wants_close


@pytest.mark.parametrize(("timeout", "answered_after", "established"),
                         [(0.25, 0.25, False), (0.25, 0.3, False), (5.0, 4.999, True), (5.0, 5.0, False)])
def test_an_answer_after_the_acse_timeout_is_not_taken(timeout: float, answered_after: float,
                                                       established: bool) -> None:
    """The A-ASSOCIATE-AC and the ACSE timer due together: the timer wins, whichever the
    loop ran first."""
    pair = Pair()
    pair.req = Connection(is_requestor=True, artim_timeout=timeout)
    pair.req.request_association(
        build_request(called_ae_title=b"STORESCP", calling_ae_title=b"SCU", contexts=pair.contexts,
                      maximum_pdu_size=16382, implementation_class_uid="1.2.3",
                      implementation_version_name=None), pair.now)
    pair.req.connection_made(pair.now)
    pair.acc.connection_made(pair.now)
    pair.to_acceptor()
    pair.acc.accept(evaluate_request(pair.acc_events[-1].request, pair.policy)[0], pair.now)
    pair.now += answered_after
    pair.to_requestor()
    events, _ = pair.take()
    assert (pair.req.state is State.Sta6) is established
    if not established:
        assert [e.detail for e in events if isinstance(e, Aborted)] == ["ACSE timeout"]
        assert pair.req.wants_close


def test_an_acse_timeout_of_zero_sends_no_request() -> None:
    """pynetdicom's acse_timeout = 0 never establishes: the wait is over as it starts, so
    the A-ASSOCIATE-RQ is not sent at all (a peer could otherwise establish an association
    we have given up) and the transport is closed: A-ABORT request in Sta4, AA-2."""
    conn = Connection(is_requestor=True, artim_timeout=0.0)
    conn.request_association(
        build_request(called_ae_title=b"A", calling_ae_title=b"B",
                      contexts=assign_context_ids([build_context(VERIFICATION)]),
                      maximum_pdu_size=16382, implementation_class_uid="1.2.3",
                      implementation_version_name=None), 0.0)
    conn.connection_made(1.0)
    assert conn.data_to_send() == []
    (event,) = conn.events()
    assert isinstance(event, Aborted) and event.local and event.detail == "ACSE timeout"
    assert conn.state is State.Sta1 and conn.wants_close


def test_request_sent_follows_the_rq_bytes() -> None:
    """AE-2 (Sta4 + Evt2): the A-ASSOCIATE-RQ is queued first, then AssociationRequestSent
    (the adapter writes before it hands events over; EVT_REQUESTED on the requestor)."""
    conn = Connection(is_requestor=True)
    rq = build_request(called_ae_title=b"A", calling_ae_title=b"B",
                       contexts=assign_context_ids([build_context(VERIFICATION)]),
                       maximum_pdu_size=16382, implementation_class_uid="1.2.3",
                       implementation_version_name=None)
    conn.request_association(rq, 0.0)
    assert conn.events() == [] and conn.data_to_send() == []  # Sta4: not connected yet
    conn.connection_made(1.0)
    (data,) = conn.data_to_send()
    assert bytes(data)[:1] == b"\x01"  # the A-ASSOCIATE-RQ PDU
    (event,) = conn.events()
    assert isinstance(event, AssociationRequestSent) and event.request == rq


def test_release_response_after_the_association_is_gone_is_a_no_op() -> None:
    pair = _timed_pair()
    pair.req.release(pair.now)
    pair.to_acceptor()
    pair.acc.abort(pair.now)
    pair.acc.release_response(pair.now)  # Sta13: nothing to answer
    assert pair.acc.state is State.Sta13
