"""The checks both fuzzers run: what each receive-path component guarantees for any input.

Theory of operation: tests/hardening/test_fuzz.py (Hypothesis) and the atheris harnesses
(tests/fuzz/fuzz_*.py) generate inputs differently but hold the engine and storage to the
same guarantees, written once here. Each function takes an input, drives one component
and raises AssertionError (or lets an unexpected exception through) when the guarantee
breaks; a component refusing the input the way the standard says is not a failure.

* PDU framing: parse, or RemoteProtocolError with a PS3.8 Table 9-26 A-ABORT, the same
  verdict however the bytes are split into reads; a failed decoder stays failed.
* Command sets: parse to a message that re-encodes to an equal one, or a (0, 0) abort.
* Message assembly: events (data passed through uncopied) or a (0, 0) abort.
* Connection: in any reachable state, never raises and sends only well-formed PDUs.
* MetadataExtractor: never raises; same result and error verdict for any fragmentation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from engine._acse import AcceptorPolicy, evaluate_request
from engine._connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    AssociationRequestSent,
    CommandReceived,
    Connection,
    DatasetFragment,
    ReleaseConfirmed,
    ReleaseRequested,
)
from engine._dimse import (
    MESSAGE_TYPES,
    CEchoRQ,
    CEchoRSP,
    MessageAssembler,
    UnknownCommand,
    decode_command,
    encode_command,
)
from engine._errors import RemoteProtocolError
from engine._fsm import Event, State
from engine._pdu import PDV, AAbort, AAssociateRJ, AAssociateRQ, PDataTF, PDUDecoder, decode_pdu, encode_pdu
from engine.presentation import build_context
from storage import MetadataExtractor
from tests.fuzz import wire

__all__ = [
    "VALID_ABORTS",
    "VALID_REJECTS",
    "split",
    "decode_pieces",
    "check_pdu_stream",
    "check_command",
    "check_assembler",
    "STATES",
    "drive",
    "serve",
    "check_sent",
    "check_connection",
    "extract",
    "check_extractor",
]

#: PS3.8 Table 9-26: the (source, reason) pairs an A-ABORT may carry.
VALID_ABORTS = frozenset({(0, 0)} | {(2, r) for r in (0, 1, 2, 4, 5, 6)})
#: PS3.8 Table 9-21: A-ASSOCIATE-RJ (result, source, reason) combinations.
VALID_REJECTS = frozenset(
    {(r, 1, x) for r in (1, 2) for x in (1, 2, 3, 7)}
    | {(r, 2, x) for r in (1, 2) for x in (1, 2)}
    | {(r, 3, x) for r in (1, 2) for x in (1, 2)}
)
_DEAD_PROBE = wire.RELEASE_RQ


def split(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, the rest as the last piece."""
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data) or not out:
        out.append(data[pos:])
    return out


def _norm(pdu: Any) -> Any:
    """A comparable form of a decoded PDU (PDV data as bytes)."""
    if isinstance(pdu, PDataTF):
        return ("P-DATA", tuple((p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in pdu.pdvs))
    return pdu


def decode_pieces(pieces: Iterable[bytes], max_pdata: int = 16382) -> tuple:
    """Feed ``pieces`` to one decoder: ("ok", pdus, buffered) or ("error", source, reason)."""
    decoder = PDUDecoder(max_pdata_length=max_pdata)
    out: list[Any] = []
    try:
        for piece in pieces:
            out.extend(_norm(p) for p in decoder.feed(piece))
    except RemoteProtocolError as exc:
        assert (exc.abort_source, exc.abort_reason) in VALID_ABORTS, exc
        try:
            decoder.feed(_DEAD_PROBE)
        except RemoteProtocolError as again:
            assert (again.abort_source, again.abort_reason) == (exc.abort_source, exc.abort_reason)
        else:
            raise AssertionError("a decoder that failed accepted more input")
        return ("error", exc.abort_source, exc.abort_reason)
    return ("ok", out, decoder.buffered)


def check_pdu_stream(data: bytes, sizes: Sequence[int], bytewise_limit: int = 512) -> None:
    """Whole, in ``sizes`` reads and one byte at a time: the same PDUs or the same abort."""
    whole = decode_pieces([data])
    assert decode_pieces(split(data, sizes)) == whole
    if len(data) <= bytewise_limit:
        assert decode_pieces([data[i : i + 1] for i in range(len(data))]) == whole


def check_command(data: bytes) -> None:
    """PS3.7 6.3.1 / Annex E: a stable message, or a DIMSE (service-user) A-ABORT."""
    try:
        message = decode_command(data)
    except RemoteProtocolError as exc:
        assert (exc.abort_source, exc.abort_reason) == (0, 0)
        return
    assert isinstance(message, (*MESSAGE_TYPES.values(), UnknownCommand))
    assert decode_command(encode_command(message)) == message


def check_assembler(sequence: Sequence[PDV]) -> None:
    """PS3.8 E.2 / PS3.7 6.3.1: events, or a (0, 0) abort; data passes through uncopied."""
    assembler = MessageAssembler()
    for pdv in sequence:
        try:
            events = assembler.feed(pdv)
        except RemoteProtocolError as exc:
            assert (exc.abort_source, exc.abort_reason) == (0, 0)
            return
        for event in events:
            assert isinstance(event, (CommandReceived, DatasetFragment))
            if isinstance(event, DatasetFragment):
                assert event.data is pdv.data


# ----------------------------------------------------------------------------- Connection

POLICY = AcceptorPolicy(
    ae_title=b"HARDEN".ljust(16),
    supported_contexts=[build_context(wire.VERIFICATION), build_context(wire.CT_IMAGE, [wire.EXPLICIT_LE])],
)
_RQ = wire.associate_rq(contexts=((1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
                                  (3, wire.CT_IMAGE, (wire.EXPLICIT_LE,))))
_STORE_CMD = wire.p_data(wire.pdv(3, wire.MCH_COMMAND_LAST, wire.c_store_rq(1, wire.CT_IMAGE, "1.2.3")))
_AC = encode_pdu(evaluate_request(decode_pdu(_RQ), POLICY)[0])  # type: ignore[arg-type]

#: name -> (is_requestor, bytes the peer sends first, local actions) reaching that state.
STATES: dict[str, tuple[bool, list[bytes], list[str]]] = {
    "Sta2": (False, [], []),
    "Sta2-partial-rq": (False, [_RQ[:40]], []),
    "Sta6": (False, [_RQ], []),
    "Sta6-mid-command": (False, [_RQ, wire.p_data(wire.pdv(1, wire.MCH_COMMAND, wire.c_echo_rq()[:9]))], []),
    "Sta6-mid-data-set": (False, [_RQ, _STORE_CMD, wire.p_data(wire.pdv(3, wire.MCH_DATA, b"\x08\x00"))], []),
    "Sta13-after-release": (False, [_RQ, wire.RELEASE_RQ], []),
    "Sta13-after-reject": (False, [wire.associate_rq(protocol_version=2)], []),
    "Sta13-after-abort": (False, [wire.pdu(0x08, bytes(4))], []),
    "Sta5-requestor": (True, [], ["request"]),
    "Sta6-requestor": (True, [_AC], ["request"]),
    "Sta7-requestor": (True, [_AC], ["request", "release"]),
}
_EVENTS = (AssociationRequested, AssociationRequestSent, AssociationAccepted,
           AssociationRejected, ReleaseRequested, ReleaseConfirmed, Aborted, CommandReceived,
           DatasetFragment)


def serve(conn: Connection, now: float) -> None:
    """The service user, as engine/aio.py behaves: answer what the state still allows."""
    for event in conn.events():
        assert isinstance(event, _EVENTS), event
        if isinstance(event, AssociationRequested) and conn.state is State.Sta3:
            answer, _ = evaluate_request(event.request, POLICY)
            if isinstance(answer, AAssociateRJ):
                conn.reject(answer, now)
            else:
                conn.accept(answer, now)
        elif isinstance(event, ReleaseRequested) and conn.machine.transition_for(Event.Evt14):
            conn.release_response(now)
        elif (isinstance(event, CommandReceived) and isinstance(event.command, CEchoRQ)
              and conn.machine.transition_for(Event.Evt9) is not None):
            # Sta6 and Sta8 may send P-DATA; Sta7 (we asked for release) may not.
            conn.send_message(event.context_id, CEchoRSP(event.command.message_id, 0), None, now)


def check_sent(conn: Connection) -> None:
    """Whatever the connection asks to send is a sequence of well-formed PDUs."""
    sent = b"".join(bytes(b) for b in conn.data_to_send())
    if sent:
        pdus = PDUDecoder().feed(sent)
        assert pdus
        for pdu in pdus:
            if isinstance(pdu, AAbort):
                assert (pdu.source, pdu.reason) in VALID_ABORTS
            elif isinstance(pdu, AAssociateRJ):
                assert (pdu.result, pdu.source, pdu.reason) in VALID_REJECTS


def drive(state: str) -> Connection:
    """A Connection brought to ``state`` (a key of STATES) by well-formed traffic."""
    is_requestor, first, actions = STATES[state]
    conn = Connection(is_requestor=is_requestor, artim_timeout=30.0)
    now = 0.0
    if "request" in actions:
        rq = decode_pdu(_RQ)
        assert isinstance(rq, AAssociateRQ)
        conn.request_association(rq, now)
    conn.connection_made(now)
    for data in first:
        conn.receive_data(data, now)
        serve(conn, now)
    if "release" in actions:
        conn.release(now)
    check_sent(conn)
    return conn


def check_connection(state: str, pieces: Iterable[bytes]) -> None:
    """PS3.8 Table 9-10 driven by a hostile peer: receive_data, the timers and the
    transport closing never raise, and only valid PDUs are sent."""
    conn = drive(state)
    now = 1.0
    for piece in pieces:
        conn.receive_data(piece, now)
        serve(conn, now)
        check_sent(conn)
        now += 0.5
    conn.handle_timer(now + 3600.0)
    serve(conn, now)
    conn.connection_lost(now + 3600.0)
    serve(conn, now)
    check_sent(conn)
    assert conn.state is State.Sta1  # Evt17 leads to Sta1 from every state (Table 9-10)


# ----------------------------------------------------------------------------- storage


def extract(ts: str, pieces: Iterable[bytes], cap: int = 1 << 20) -> tuple[Any, bool]:
    """(result, whether .error is set) after feeding ``pieces``; never raises on data."""
    extractor = MetadataExtractor(ts, cap)
    for piece in pieces:
        extractor.feed(memoryview(piece))
    return extractor.result, extractor.error is not None


def check_extractor(ts: str, data: bytes, sizes: Sequence[int], bytewise_limit: int = 400) -> None:
    """Same result and error verdict whole, in ``sizes`` fragments, one byte at a time."""
    whole = extract(ts, [data])
    assert extract(ts, split(data, sizes)) == whole
    if len(data) <= bytewise_limit:
        assert extract(ts, [data[i : i + 1] for i in range(len(data))]) == whole
