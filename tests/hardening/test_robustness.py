"""Hostile peers over loopback: exactly what PS3.8 (and the engine) answer, and no damage.

Theory of operation: each case opens a raw TCP connection to the target (conftest.py),
sends hand-built bytes (tests/fuzz/wire.py) and asserts the exact answer: the A-ABORT
bytes ``07 00 00000004 00 00 SOURCE REASON``, the A-ASSOCIATE-RJ bytes
``03 00 00000004 00 RESULT SOURCE REASON``, a C-STORE-RSP status, or the connection
closing within the configured timeout. Then :meth:`Target.assert_clean` proves the node
still serves (a real association, C-ECHO and C-STORE), that no temporary file is left,
that nothing half-received (or refused) became visible, that nothing was written outside
the storage root and that the server raised no unexpected exception.

The answers, from PS3.8 Table 9-10 as engine/_fsm.py implements it:

* Sta2 (no association yet) + anything invalid or unexpected: AA-1, an A-ABORT with
  service-user source: (0, 0); then ARTIM closes the connection if the peer does not.
* Sta6 + an undecodable PDU (Evt19) or a PDU the state does not expect: AA-8, a
  service-provider A-ABORT: unrecognized PDU (2, 1), unexpected PDU (2, 2), invalid
  PDU parameter value (2, 6) for lengths that do not add up (engine/_pdu.py).
* A DIMSE violation (command set, fragment order) is an A-ABORT from DIMSE, the UL's
  service user (Evt15, AA-1): (0, 0) (engine/_dimse.py).
* A-ASSOCIATE-RJ (PS3.8 Table 9-21): protocol version (1, 2, 2), application context
  (1, 1, 2), calling AE title (1, 1, 3), called AE title (1, 1, 7).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest

from engine._dimse import decode_command
from engine._pdu import AAssociateAC, PDataTF, decode_pdu, encode_pdu
from tests.dicomdata import make_uid
from tests.fuzz import wire
from tests.hardening.conftest import (
    ALLOWED_CALLING,
    MARGIN_S,
    RawPeer,
    Target,
    accepted,
    default_rq,
)

ABORT_USER = wire.abort(0, 0)  # AA-1, and every DIMSE (service-user) abort
ABORT_UNRECOGNIZED_PDU = wire.abort(2, 1)
ABORT_UNEXPECTED_PDU = wire.abort(2, 2)
ABORT_INVALID_PARAMETER = wire.abort(2, 6)
#: PS3.4 Table B.2-1 / PS3.7 C.4 statuses the storage SCP answers with.
SUCCESS = 0x0000
INVALID_SOP_INSTANCE = 0x0117
SOP_CLASS_NOT_SUPPORTED = 0x0122
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: Context IDs default_rq() proposes: Verification, SC (Explicit LE), CT (Implicit LE).
ECHO_CX, SC_CX, CT_CX = 1, 3, 5


@pytest.fixture(scope="module")
def strict(target_factory: Callable[..., Target]) -> Target:
    """A target that requires its own called AE title and the calling AE ``ALLOWED``."""
    return target_factory(require_called_aet=True, require_calling_aet=[ALLOWED_CALLING])


@pytest.fixture
def clean(node: Target) -> Iterator[None]:
    """Run the case, then require the node clean (see module docstring)."""
    since = node.checkpoint()
    yield
    node.assert_clean(since)


# ----------------------------------------------------------------------------- helpers


def uid() -> str:
    return str(make_uid(unique=True))


def instance(ts: str = wire.EXPLICIT_LE, sop_class: str = wire.SECONDARY_CAPTURE, **kw) -> tuple[str, bytes]:
    """A fresh SOP Instance UID and a data set for it (fresh study and series)."""
    sop = uid()
    return sop, wire.dataset(sop_class, sop, uid(), uid(), ts, **kw)


def read_response(peer: RawPeer) -> int:
    """The status of the next DIMSE response; fails on anything else (e.g. an A-ABORT)."""
    parts = []
    while True:
        reply = peer.recv_pdu()
        assert reply[0] == 0x04, f"expected a response in a P-DATA-TF, got {reply[:16].hex()}"
        pdu = decode_pdu(reply)
        assert isinstance(pdu, PDataTF)
        for pdv in pdu.pdvs:
            assert pdv.is_command, "response carries a data set"
            parts.append(bytes(pdv.data))
            if pdv.is_last:
                return decode_command(b"".join(parts)).status


def store_bytes(
    sop_class: str | bytes,
    sop_instance: str | bytes,
    data: bytes,
    *,
    context_id: int = SC_CX,
    message_id: int = 1,
    fragment: int = 16000,
) -> bytes:
    """A C-STORE-RQ: the command in one PDV, the data set in ``fragment``-byte PDVs,
    one P-DATA-TF each."""
    out = [wire.p_data(wire.pdv(context_id, wire.MCH_COMMAND_LAST,
                                wire.c_store_rq(message_id, sop_class, sop_instance)))]
    chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        out.append(wire.p_data(wire.pdv(context_id, wire.MCH_DATA_LAST if last else wire.MCH_DATA, chunk)))
    return b"".join(out)


def send_store(peer: RawPeer, *args: object, **kw: object) -> None:
    peer.send(store_bytes(*args, **kw))  # type: ignore[arg-type]


def store(peer: RawPeer, sop_class: str | bytes, sop_instance: str | bytes, data: bytes, **kw) -> int:
    send_store(peer, sop_class, sop_instance, data, **kw)
    return read_response(peer)


def expect_reply(node: Target, data: bytes, expected: bytes, *, established: bool = False) -> None:
    """Send ``data`` (after associating when ``established``) and require ``expected`` as
    the next PDU."""
    if established:
        peer, _ = node.established_peer()
    else:
        peer = node.peer()
    with peer:
        peer.send(data)
        got = peer.recv_pdu()
        assert got == expected, f"expected {expected.hex()}, got {got.hex()}"


def expect_silent_close(peer: RawPeer, within: float) -> None:
    """The server closes the connection without sending anything."""
    got = peer.read_until_closed(within)
    assert got == b"", f"expected a silent close, got {got.hex()}"


# ----------------------------------------------------------------------------- framing


def test_header_only_then_close(node: Target, clean: None) -> None:
    """PS3.8 Sta2 + Evt17 (AA-5): a peer that sends half a PDU and closes gets nothing."""
    with node.peer() as peer:
        peer.send(bytes.fromhex("010000000050"))  # A-ASSOCIATE-RQ header claiming 80 bytes
        peer.half_close()
        expect_silent_close(peer, MARGIN_S)


def test_partial_header_then_close(node: Target, clean: None) -> None:
    with node.peer() as peer:
        peer.send(b"\x01\x00\x00")
        peer.half_close()
        expect_silent_close(peer, MARGIN_S)


def test_body_cut_short_then_close(node: Target, clean: None) -> None:
    with node.peer() as peer:
        peer.send(default_rq()[:-10])
        peer.half_close()
        expect_silent_close(peer, MARGIN_S)


def test_data_set_cut_short_then_close(node: Target, clean: None) -> None:
    """Sta6 + Evt17 (AA-4) halfway through a P-DATA-TF: the store is dropped, its
    temporary file removed, nothing visible."""
    sop, data = instance(pixel_bytes=4000)
    peer, _ = node.established_peer()
    with peer:
        peer.send(wire.p_data(wire.pdv(SC_CX, wire.MCH_COMMAND_LAST,
                                       wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))))
        peer.send(wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA, data[:2000])))
        whole = wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA_LAST, data[2000:]))
        peer.send(whole[: len(whole) // 2])
        peer.half_close()
        expect_silent_close(peer, MARGIN_S)


def test_associate_rq_claiming_4_gib_is_refused_from_its_header(node: Target, clean: None) -> None:
    """PDU-length 0xFFFFFFFF: answered after the 6-byte header alone (AA-1 in Sta2),
    nothing buffered, and 32 MiB of body sent afterwards do not grow the server."""
    rss_before = node.rss()
    with node.peer() as peer:
        peer.send(bytes.fromhex("01 00 FFFFFFFF".replace(" ", "")))
        assert peer.recv_pdu() == ABORT_USER  # before a single body byte was sent
        if hasattr(node, "buffered"):
            assert node.buffered() == 0
        block = bytes(1 << 20)
        try:
            for _ in range(32):
                peer.send(block)
        except OSError:
            pass  # the server may close first (ARTIM); either way it did not buffer
        if hasattr(node, "buffered"):
            assert node.buffered() == 0
    assert node.rss() - rss_before < 16 << 20


def test_associate_rq_just_over_its_cap(node: Target, clean: None) -> None:
    """The 1 MiB cap on non-P-DATA PDUs (engine/_pdu.py) is enforced from the header."""
    with node.peer() as peer:
        peer.send(struct.pack(">BxI", 0x01, (1 << 20) + 1))
        assert peer.recv_pdu() == ABORT_USER


def test_pdata_claiming_4_gib_in_sta6(node: Target, clean: None) -> None:
    expect_reply(node, bytes.fromhex("04 00 FFFFFFFF".replace(" ", "")), ABORT_INVALID_PARAMETER,
                 established=True)


def test_pdata_longer_than_advertised_maximum(node: Target, clean: None) -> None:
    """P-DATA-TF over the Maximum Length the AC advertised (PS3.8 D.1): A-ABORT (2, 6)
    from the header alone."""
    peer, ac = node.established_peer()
    maximum = ac.user_information.max_length
    assert maximum, "the target advertises a Maximum Length"
    with peer:
        peer.send(struct.pack(">BxI", 0x04, maximum + 1))
        assert peer.recv_pdu() == ABORT_INVALID_PARAMETER


def test_pdata_exactly_the_advertised_maximum_is_accepted(node: Target, clean: None) -> None:
    """The boundary: a P-DATA-TF of exactly Maximum Length bytes carries a data set."""
    peer, ac = node.established_peer()
    maximum = ac.user_information.max_length
    sop, data = instance(pixel_bytes=maximum + 1000)
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, sop, data, fragment=maximum - 6) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    _assert_stored_once(node, sop, data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wire.pdu(0x08, bytes(4)), id="type-08"),
        pytest.param(wire.pdu(0xFF, bytes(4)), id="type-FF"),
        pytest.param(wire.pdu(0x00, bytes(4)), id="type-00"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http-get"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32), id="tls-client-hello"),
    ],
)
def test_unknown_pdu_type_before_association(node: Target, clean: None, data: bytes) -> None:
    """Sta2 + Evt19 -> AA-1: A-ABORT, service-user source, reason 0 (PS3.8 Table 9-10)."""
    expect_reply(node, data, ABORT_USER)


def test_unknown_pdu_type_in_sta6(node: Target, clean: None) -> None:
    """Sta6 + Evt19 -> AA-8: A-ABORT (2, 1) unrecognized PDU (PS3.8 Table 9-26)."""
    expect_reply(node, wire.pdu(0x09, bytes(4)), ABORT_UNRECOGNIZED_PDU, established=True)


def test_fixed_length_pdu_with_wrong_length(node: Target, clean: None) -> None:
    """A-RELEASE-RQ is 4 bytes long (PS3.8 Table 9-24); 5 is an invalid parameter."""
    expect_reply(node, wire.pdu(0x05, bytes(5)), ABORT_INVALID_PARAMETER, established=True)
    expect_reply(node, wire.pdu(0x05, bytes(5)), ABORT_USER)


# ----------------------------------------------------------------------------- items of the RQ

_RQ_FIXED = struct.pack(">H2x", 1) + b"HARDEN".ljust(16) + b"ALLOWED".ljust(16) + bytes(32)
_APP = wire.item(0x10, wire.APPLICATION_CONTEXT.encode())
_PC = wire.presentation_context_rq(1, wire.VERIFICATION, [wire.IMPLICIT_LE])
_UI = wire.user_information()

MALFORMED_RQS = {
    # PS3.8 9.3.2: every item-length is checked against its container.
    "item-overruns-pdu": wire.pdu(0x01, _RQ_FIXED + wire.item(0x10, b"1.2", length=0xFFFF)),
    "pc-subitem-overruns-item": wire.pdu(
        0x01,
        _RQ_FIXED + _APP
        + wire.item(0x20, struct.pack(">B3x", 1) + wire.item(0x30, b"1.2.840.10008.1.1", length=200))
        + _UI,
    ),
    "ui-subitem-overruns-item": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC + wire.item(0x50, wire.item(0x51, b"\0\0\x40\0", length=200))
    ),
    "max-length-subitem-2-bytes": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC + wire.item(0x50, wire.item(0x51, b"\x40\0"))
    ),
    "truncated-item-header": wire.pdu(0x01, _RQ_FIXED + _APP + _PC + _UI + b"\x20\x00"),
    "shorter-than-fixed-fields": wire.pdu(0x01, _RQ_FIXED[:10]),
    "no-items": wire.pdu(0x01, _RQ_FIXED),
    "no-application-context": wire.pdu(0x01, _RQ_FIXED + _PC + _UI),
    "no-user-information": wire.pdu(0x01, _RQ_FIXED + _APP + _PC),
    "two-application-contexts": wire.pdu(0x01, _RQ_FIXED + _APP + _APP + _PC + _UI),
    "two-user-informations": wire.pdu(0x01, _RQ_FIXED + _APP + _PC + _UI + _UI),
    # PS3.8 9.3.2.2: one abstract syntax and at least one transfer syntax per context.
    "pc-without-transfer-syntax": wire.pdu(
        0x01, _RQ_FIXED + _APP + wire.presentation_context_rq(1, wire.VERIFICATION, []) + _UI
    ),
    "pc-without-abstract-syntax": wire.pdu(
        0x01,
        _RQ_FIXED + _APP
        + wire.item(0x20, struct.pack(">B3x", 1) + wire.item(0x40, wire.IMPLICIT_LE.encode()))
        + _UI,
    ),
    "pc-two-abstract-syntaxes": wire.pdu(
        0x01,
        _RQ_FIXED + _APP
        + wire.item(0x20, struct.pack(">B3x", 1) + wire.item(0x30, b"1.2") + wire.item(0x30, b"1.3")
                    + wire.item(0x40, wire.IMPLICIT_LE.encode()))
        + _UI,
    ),
    "pc-item-too-short": wire.pdu(0x01, _RQ_FIXED + _APP + wire.item(0x20, b"\x01") + _UI),
    "non-ascii-abstract-syntax": wire.pdu(
        0x01, _RQ_FIXED + _APP + wire.presentation_context_rq(1, "1.2.\xe9", [wire.IMPLICIT_LE]) + _UI
    ),
    # PS3.7 D.3.3.4 / D.3.3.7: inner lengths of role selection and user identity.
    "role-selection-length-mismatch": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC
        + wire.user_information(extra=wire.item(0x54, struct.pack(">H", 40) + b"1.2\x01\x01"))
    ),
    "role-selection-flag-2": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC
        + wire.user_information(extra=wire.item(0x54, struct.pack(">H", 3) + b"1.2\x02\x01"))
    ),
    "user-identity-primary-overruns": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC
        + wire.user_information(extra=wire.item(0x58, b"\x01\x00" + struct.pack(">H", 500) + b"user"))
    ),
    "user-identity-trailing-bytes": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC
        + wire.user_information(
            extra=wire.item(0x58, b"\x02\x00" + struct.pack(">H", 1) + b"u" + struct.pack(">H", 1) + b"pxx")
        )
    ),
    "common-extended-negotiation-overrun": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC
        + wire.user_information(extra=wire.item(0x57, struct.pack(">H", 3) + b"1.2" + struct.pack(">H", 90)))
    ),
    "two-max-length-subitems": wire.pdu(
        0x01, _RQ_FIXED + _APP + _PC + wire.user_information(extra=wire.item(0x51, bytes(4)))
    ),
}


@pytest.mark.parametrize("rq", MALFORMED_RQS.values(), ids=MALFORMED_RQS.keys())
def test_malformed_associate_rq(node: Target, clean: None, rq: bytes) -> None:
    """An A-ASSOCIATE-RQ that cannot be decoded is Evt19 in Sta2: AA-1, A-ABORT (0, 0)."""
    expect_reply(node, rq, ABORT_USER)


def test_pdu_length_shorter_than_its_items(node: Target, clean: None) -> None:
    """A PDU-length that ends inside an item: the item overruns its container (AA-1),
    and the bytes after the PDU are never read as another PDU."""
    rq = default_rq()
    lying = rq[:2] + struct.pack(">I", 68 + 20) + rq[6:]
    expect_reply(node, lying, ABORT_USER)


def test_unknown_items_and_subitems_are_skipped(node: Target, clean: None) -> None:
    """PS3.8 9.3.1: items and sub-items of unknown type are ignored, not refused."""
    rq = default_rq(
        extra_items=wire.item(0x77, b"junk"),
        user_info=wire.user_information(extra=wire.item(0x5F, b"private sub-item")),
    )
    with node.peer() as peer:
        ac = peer.associate(rq)
        assert accepted(ac) == {ECHO_CX: wire.IMPLICIT_LE, SC_CX: wire.EXPLICIT_LE,
                                CT_CX: wire.IMPLICIT_LE}
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP


# ----------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize("version", [0x0000, 0x0002, 0x8000, 0xFFFE])
def test_protocol_version_without_bit_0(node: Target, clean: None, version: int) -> None:
    """PS3.8 9.3.2: bit 0 is version 1; without it: RJ permanent, ACSE provider,
    protocol-version-not-supported (1, 2, 2)."""
    expect_reply(node, default_rq(protocol_version=version), wire.associate_rj(1, 2, 2))


def test_protocol_version_bit_field_with_bit_0(node: Target, clean: None) -> None:
    """A requestor supporting versions 1 and 2 (0x0003) is served as version 1."""
    with node.peer() as peer:
        peer.associate(default_rq(protocol_version=0x0003))
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP


@pytest.mark.parametrize(
    "name",
    ["1.2.840.10008.3.1.1.2", "", "1.2.840.10008.3.1.1.1.0", "1" + ".1" * 40],
    ids=["other", "empty", "longer", "over-64"],
)
def test_wrong_application_context(node: Target, clean: None, name: str) -> None:
    """RJ permanent, service user, application-context-name-not-supported (1, 1, 2)."""
    expect_reply(node, default_rq(application_context=name), wire.associate_rj(1, 1, 2))


def test_called_ae_mismatch_when_required(strict: Target) -> None:
    since = strict.checkpoint()
    expect_reply(strict, default_rq(called=b"SOMEONE-ELSE"), wire.associate_rj(1, 1, 7))
    strict.assert_clean(since)


def test_calling_ae_not_in_allow_list(strict: Target) -> None:
    since = strict.checkpoint()
    for calling in (b"INTRUDER", b"ALLOWED2", b"allowed", b""):
        expect_reply(strict, default_rq(calling=calling), wire.associate_rj(1, 1, 3))
    strict.assert_clean(since)


def test_allowed_calling_ae_with_insignificant_spaces(strict: Target) -> None:
    """PS3.5 6.2 AE: leading and trailing spaces are not significant."""
    since = strict.checkpoint()
    with strict.peer() as peer:
        peer.associate(default_rq(calling=b"  ALLOWED"))
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    strict.assert_clean(since)


def _ac_results(ac: AAssociateAC) -> list[tuple[int, int]]:
    return [(pc.context_id, pc.result) for pc in ac.presentation_contexts]


def test_bad_presentation_context_ids_are_refused_not_fatal(node: Target, clean: None) -> None:
    """PS3.8 9.3.2.2 makes IDs odd 1..255 and unique; engine/presentation.py answers an
    even, zero or repeated ID with result 2 (no-reason, provider rejection) for that
    context and serves the others, in the proposed order (PS3.8 9.3.3.2)."""
    rq = default_rq(contexts=(
        (1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
        (2, wire.SECONDARY_CAPTURE, (wire.EXPLICIT_LE,)),
        (0, wire.SECONDARY_CAPTURE, (wire.EXPLICIT_LE,)),
        (7, wire.CT_IMAGE, (wire.IMPLICIT_LE,)),
        (7, wire.SECONDARY_CAPTURE, (wire.IMPLICIT_LE,)),
        (255, wire.SECONDARY_CAPTURE, (wire.EXPLICIT_LE,)),
    ))
    with node.peer() as peer:
        ac = peer.associate(rq)
        assert _ac_results(ac) == [(1, 0), (2, 2), (0, 2), (7, 2), (7, 2), (255, 0)]
        sop, data = instance()
        assert store(peer, wire.SECONDARY_CAPTURE, sop, data, context_id=255) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    _assert_stored_once(node, sop, data)


def test_uids_over_64_characters_in_the_rq(node: Target, clean: None) -> None:
    """Over-long abstract syntax: result 3; over-long transfer syntax: result 4; an
    over-long Implementation Class UID is information only (PS3.7 D.3.3.2)."""
    long_uid = "1.2.840.10008.5.1.4.1.1.7" + ".1" * 20
    rq = default_rq(
        contexts=(
            (1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
            (3, long_uid, (wire.EXPLICIT_LE,)),
            (5, wire.SECONDARY_CAPTURE, (wire.EXPLICIT_LE + ".1" * 30,)),
        ),
        user_info=wire.user_information(implementation_uid="1.2" + ".3" * 40),
    )
    with node.peer() as peer:
        ac = peer.associate(rq)
        assert _ac_results(ac) == [(1, 0), (3, 3), (5, 4)]
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP


def test_128_contexts_of_64_character_uids(node: Target, clean: None) -> None:
    """The largest legal proposal: 128 contexts (odd IDs 1..255), 64-character UIDs."""
    contexts = []
    for i in range(128):
        abstract = f"1.2.{i}." + "9" * (64 - len(f"1.2.{i}."))
        assert len(abstract) == 64
        contexts.append((2 * i + 1, abstract, ("1.2.840.10008.1.2." + "1" * 46,) * 3))
    contexts[-1] = (255, wire.VERIFICATION, (wire.IMPLICIT_LE,))
    with node.peer() as peer:
        ac = peer.associate(default_rq(contexts=tuple(contexts)))
        results = _ac_results(ac)
        # Unknown abstract syntaxes: refused as such (3), or, where the node takes any
        # valid UID as a storage class (the node's default --sop-classes any), for their
        # transfer syntax no one knows (4).
        refusal = results[0][1]
        assert refusal in (3, 4)
        assert results == [(2 * i + 1, refusal) for i in range(127)] + [(255, 0)]
        peer.send(wire.p_data(wire.pdv(255, wire.MCH_COMMAND_LAST, wire.c_echo_rq(9))))
        assert read_response(peer) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP


# ----------------------------------------------------------------------------- PDVs


@pytest.mark.parametrize(
    "pdata",
    [
        pytest.param(wire.p_data(wire.pdv(SC_CX, 3, b"abcd", length=40)), id="pdv-overruns-pdu"),
        pytest.param(wire.p_data(wire.pdv(SC_CX, 3, b"", length=0)), id="pdv-length-0"),
        pytest.param(wire.p_data(wire.pdv(SC_CX, 3, b"", length=1)), id="pdv-length-1"),
        pytest.param(wire.p_data(wire.pdv(SC_CX, 3, b"abcd") + b"\x00\x00\x00"), id="trailing-bytes"),
        pytest.param(wire.p_data(wire.pdv(SC_CX, 3, b"ab"), wire.pdv(SC_CX, 3, b"cd", length=9)),
                     id="second-pdv-overruns"),
        pytest.param(wire.p_data(), id="zero-pdvs"),
        pytest.param(wire.pdu(0x04, b"\x00\x00\x00"), id="truncated-pdv-header"),
    ],
)
def test_pdv_lengths_that_do_not_add_up(node: Target, clean: None, pdata: bytes) -> None:
    """PS3.8 9.3.5: PDV item-lengths fill the P-DATA-TF exactly, each at least 2 and at
    least one PDV; otherwise invalid PDU parameter value: A-ABORT (2, 6)."""
    expect_reply(node, pdata, ABORT_INVALID_PARAMETER, established=True)


# ----------------------------------------------------------------------------- DIMSE


def _cmd(data: bytes, context_id: int = SC_CX) -> bytes:
    return wire.p_data(wire.pdv(context_id, wire.MCH_COMMAND_LAST, data))


_GOOD_STORE = wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2.3.4")


def _raw_command(*elements: bytes) -> bytes:
    """A command set of pre-built elements with a *correct* group length, so that only
    the element under test is wrong."""
    body = b"".join(elements)
    return wire.command_element(0x0000, struct.pack("<I", len(body))) + body


_STORE_ELEMENTS = (
    wire.command_element(0x0002, wire.ui(wire.SECONDARY_CAPTURE)),
    wire.command_element(0x0100, wire.us(0x0001)),
    wire.command_element(0x0110, wire.us(1)),
    wire.command_element(0x0700, wire.us(0)),
    wire.command_element(0x0800, wire.us(0x0001)),
)

DIMSE_VIOLATIONS = {
    "group-length-says-more": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2.3.4",
                                                   group_length=len(_GOOD_STORE) - 12 + 2)),
    "group-length-says-less": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2.3.4",
                                                   group_length=len(_GOOD_STORE) - 12 - 8)),
    "no-group-length": _cmd(_GOOD_STORE[12:]),
    "element-overruns-command": _cmd(_raw_command(*_STORE_ELEMENTS,
                                                  wire.command_element(0x1000, b"1.2.3.4\0", length=900))),
    "truncated-element-header": _cmd(_raw_command(*_STORE_ELEMENTS, b"\x00\x00\x00\x10\x08\x00")),
    "odd-element-length": _cmd(wire.command_set([(0x0002, b"1.2.840.10008.1.1"), (0x0100, wire.us(0x30)),
                                                 (0x0110, wire.us(1)), (0x0800, wire.us(0x0101))]),
                               ECHO_CX),
    "elements-out-of-order": _cmd(wire.command_set([(0x0100, wire.us(0x30)), (0x0002, wire.ui(wire.VERIFICATION)),
                                                    (0x0110, wire.us(1)), (0x0800, wire.us(0x0101))]), ECHO_CX),
    "repeated-element": _cmd(wire.command_set([(0x0002, wire.ui(wire.VERIFICATION)), (0x0100, wire.us(0x30)),
                                               (0x0100, wire.us(0x30)), (0x0110, wire.us(1)),
                                               (0x0800, wire.us(0x0101))]), ECHO_CX),
    "group-0008-in-command": _cmd(_raw_command(*_STORE_ELEMENTS,
                                               wire.command_element(0x1000, wire.ui("1.2.3.4")),
                                               struct.pack("<HHI", 8, 0x16, 2) + b"1\0")),
    "missing-message-id": _cmd(wire.command_set([(0x0002, wire.ui(wire.VERIFICATION)), (0x0100, wire.us(0x30)),
                                                 (0x0800, wire.us(0x0101))]), ECHO_CX),
    "us-of-4-bytes": _cmd(wire.command_set([(0x0002, wire.ui(wire.VERIFICATION)), (0x0100, wire.us(0x30)),
                                            (0x0110, b"\x01\x00\x00\x00"), (0x0800, wire.us(0x0101))]), ECHO_CX),
    "bad-priority": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2.3.4", priority=7)),
    "sop-instance-uid-65-chars": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2" + ".3" * 31)),
    "sop-class-uid-65-chars": _cmd(wire.c_store_rq(1, "1.2" + ".3" * 31, "1.2.3.4")),
    "uid-with-embedded-nul": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, b"1.2.3\x00/../../x")),
    "uid-not-ascii": _cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, "1.2.3.\u0661\u0662".encode("utf-8"))),
    "zero-length-last-command-pdv": wire.p_data(wire.pdv(SC_CX, wire.MCH_COMMAND_LAST, b"")),
    "data-before-any-command": wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA_LAST, b"\x08\x00\x16\x00")),
    "data-before-the-last-command-fragment": wire.p_data(
        wire.pdv(SC_CX, wire.MCH_COMMAND, _GOOD_STORE[:20]), wire.pdv(SC_CX, wire.MCH_DATA_LAST, b"ab")
    ),
    "command-fragments-on-two-contexts": wire.p_data(
        wire.pdv(SC_CX, wire.MCH_COMMAND, _GOOD_STORE[:20]), wire.pdv(CT_CX, wire.MCH_COMMAND_LAST, _GOOD_STORE[20:])
    ),
    "command-set-over-64-kib": b"".join(
        wire.p_data(wire.pdv(SC_CX, wire.MCH_COMMAND, bytes(16000))) for _ in range(5)
    ),
}


@pytest.mark.parametrize("data", DIMSE_VIOLATIONS.values(), ids=DIMSE_VIOLATIONS.keys())
def test_dimse_violation(node: Target, clean: None, data: bytes) -> None:
    """A command set that lies about its lengths or breaks PS3.7 6.3.1 / Annex E, or
    fragments out of order (PS3.8 E.2): DIMSE aborts as the UL's user, (0, 0)."""
    expect_reply(node, data, ABORT_USER, established=True)


def test_unserved_command_is_answered_unrecognized_operation(node: Target, clean: None) -> None:
    """A well-formed request of a service the node does not provide (N-CREATE-RQ here):
    PS3.7 C.5 status 0211H Unrecognized Operation, then the association goes on."""
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.command_set([(0x0002, wire.ui(wire.SECONDARY_CAPTURE)),
                                         (0x0100, wire.us(0x0140)), (0x0110, wire.us(1)),
                                         (0x0800, wire.us(0x0101))])))
        assert read_response(peer) == 0x0211
        peer.send(_cmd(wire.c_echo_rq(), ECHO_CX))
        assert read_response(peer) == SUCCESS


def test_data_after_a_command_without_data_set(node: Target, clean: None) -> None:
    """C-ECHO-RQ says no data set follows (0101H); a data PDV after it: abort (0, 0)."""
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_echo_rq(), ECHO_CX))
        assert read_response(peer) == SUCCESS
        peer.send(wire.p_data(wire.pdv(ECHO_CX, wire.MCH_DATA_LAST, b"data")))
        assert peer.recv_pdu() == ABORT_USER


def test_second_command_while_data_set_pending(node: Target, clean: None) -> None:
    """A new command halfway through a data set: abort (0, 0), temporary file removed."""
    sop, data = instance()
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))
                  + wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA, data[:50])))
        peer.send(_cmd(wire.c_store_rq(2, wire.SECONDARY_CAPTURE, uid())))
        assert peer.recv_pdu() == ABORT_USER


def test_data_fragment_on_another_context(node: Target, clean: None) -> None:
    sop, data = instance()
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))
                  + wire.p_data(wire.pdv(CT_CX, wire.MCH_DATA_LAST, data)))
        assert peer.recv_pdu() == ABORT_USER


def test_dimse_on_a_context_that_was_not_accepted(node: Target, clean: None) -> None:
    """C-STORE on a context the AC refused: there is no transfer syntax to read it in,
    so the association is aborted (0, 0) and closed; nothing is stored."""
    sop, data = instance()
    # Not even a valid UID (a leading zero): refused whatever SOP classes the node takes.
    rq = default_rq(contexts=((1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
                              (3, "1.2.3.04.5", (wire.EXPLICIT_LE,))))
    peer, ac = node.established_peer(rq)
    assert accepted(ac) == {1: wire.IMPLICIT_LE}
    with peer:
        send_store(peer, wire.SECONDARY_CAPTURE, sop, data, context_id=3)
        assert peer.read_until_closed(MARGIN_S).startswith(ABORT_USER)


def test_sop_class_other_than_the_contexts(node: Target, clean: None) -> None:
    """PS3.4 B.2.3: a C-STORE whose SOP class is not its context's: 0122, not stored."""
    sop, data = instance(sop_class=wire.CT_IMAGE)
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.CT_IMAGE, sop, data, context_id=SC_CX) == SOP_CLASS_NOT_SUPPORTED


def test_c_store_rq_announcing_no_data_set(node: Target, clean: None) -> None:
    """PS3.7 Table 9.3-1: a C-STORE-RQ carries a data set. Command Data Set Type 0101H
    is answered C000 at once, and no temporary file is opened for data that never comes
    (regression: each such request leaked an open temporary file)."""
    peer, _ = node.established_peer()
    with peer:
        for message_id in range(1, 21):
            peer.send(_cmd(wire.c_store_rq(message_id, wire.SECONDARY_CAPTURE, uid(), data_set_type=0x0101)))
            assert read_response(peer) == CANNOT_UNDERSTAND
        assert node.temp_files() == []
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP


def test_zero_length_data_pdvs(node: Target, clean: None) -> None:
    """A PDV may carry no data (item-length 2): empty fragments, even the last one, are
    legal and change nothing."""
    sop, data = instance()
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop)))
        empties = [wire.pdv(SC_CX, wire.MCH_DATA, b"")] * 1000
        peer.send(wire.p_data(*empties, wire.pdv(SC_CX, wire.MCH_DATA, data), *empties))
        peer.send(wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA_LAST, b"")))
        assert read_response(peer) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    _assert_stored_once(node, sop, data)


def _assert_stored_once(node: Target, sop: str, data: bytes) -> None:
    """``sop`` is visible exactly once, its file ends with the data set as sent."""
    matches = [p for p in node.visible_instances() if p.endswith(f"/{sop}.dcm")]
    assert len(matches) == 1, matches
    assert (node.root / matches[0]).read_bytes().endswith(data)
    node.account(matches[0])


def test_ten_thousand_one_byte_pdvs_in_one_pdu(node: Target, clean: None) -> None:
    """10,000 PDVs of one byte each in one P-DATA-TF: stored byte for byte."""
    peer, ac = node.established_peer()
    sop = uid()
    data = wire.dataset(wire.SECONDARY_CAPTURE, sop, uid(), uid(), pixel_bytes=10_000)
    data = data[:10_000]  # a truncated pixel value is still a readable header
    assert 7 * len(data) <= ac.user_information.max_length
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop)))
        pdvs = [wire.pdv(SC_CX, wire.MCH_DATA, data[i : i + 1]) for i in range(len(data) - 1)]
        pdvs.append(wire.pdv(SC_CX, wire.MCH_DATA_LAST, data[-1:]))
        peer.send(wire.p_data(*pdvs))
        assert read_response(peer) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    _assert_stored_once(node, sop, data)


def test_command_in_one_byte_fragments(node: Target, clean: None) -> None:
    command = wire.c_echo_rq(3)
    pdvs = [wire.pdv(ECHO_CX, wire.MCH_COMMAND, command[i : i + 1]) for i in range(len(command) - 1)]
    pdvs.append(wire.pdv(ECHO_CX, wire.MCH_COMMAND_LAST, command[-1:]))
    peer, _ = node.established_peer()
    with peer:
        peer.send(wire.p_data(*pdvs))
        assert read_response(peer) == SUCCESS


# ----------------------------------------------------------------------------- state machine


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wire.pdu(0x02, bytes(4)), id="associate-ac"),  # body irrelevant: undecodable
        pytest.param(wire.associate_rj(1, 1, 1), id="associate-rj"),
        pytest.param(wire.p_data(wire.pdv(1, 3, wire.c_echo_rq())), id="p-data"),
        pytest.param(wire.RELEASE_RQ, id="release-rq"),
        pytest.param(wire.RELEASE_RP, id="release-rp"),
    ],
)
def test_pdu_other_than_associate_rq_in_sta2(node: Target, clean: None, data: bytes) -> None:
    """Sta2 + Evt3/4/10/12/13/19 -> AA-1: A-ABORT (0, 0)."""
    expect_reply(node, data, ABORT_USER)


def test_abort_in_sta2_closes_silently(node: Target, clean: None) -> None:
    """Sta2 + Evt16 -> AA-2: the connection is closed, nothing is sent."""
    with node.peer() as peer:
        peer.send(wire.abort(0, 0))
        expect_silent_close(peer, MARGIN_S)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(default_rq(), id="associate-rq"),
        pytest.param(wire.associate_rj(1, 1, 1), id="associate-rj"),
        pytest.param(wire.RELEASE_RP, id="release-rp"),
    ],
)
def test_pdu_illegal_in_sta6(node: Target, clean: None, data: bytes) -> None:
    """Sta6 + Evt6/Evt4/Evt13 -> AA-8: A-ABORT (2, 2) unexpected PDU."""
    expect_reply(node, data, ABORT_UNEXPECTED_PDU, established=True)


def test_associate_ac_in_sta6(node: Target, clean: None) -> None:
    with node.peer() as peer:
        ac = peer.associate()
        peer.send(encode_pdu(ac))
        assert peer.recv_pdu() == ABORT_UNEXPECTED_PDU


def test_rq_and_release_in_one_read(node: Target, clean: None) -> None:
    """Sta3 + Evt12 -> AA-8 before the RQ was answered: A-ABORT (2, 2) and no answer to
    the RQ (regression: answering it raised inside the adapter)."""
    expect_reply(node, default_rq() + wire.RELEASE_RQ, ABORT_UNEXPECTED_PDU)


def test_release_and_pdata_in_one_read(node: Target, clean: None) -> None:
    """Sta8 + Evt10 -> AA-8 before the release was answered: A-ABORT (2, 2), no RP."""
    expect_reply(node, wire.RELEASE_RQ + _cmd(wire.c_echo_rq(), ECHO_CX), ABORT_UNEXPECTED_PDU,
                 established=True)


def test_release_and_abort_in_one_read(node: Target, clean: None) -> None:
    """Sta8 + Evt16 -> AA-3: closed, no A-RELEASE-RP."""
    peer, _ = node.established_peer()
    with peer:
        peer.send(wire.RELEASE_RQ + wire.abort(0, 0))
        expect_silent_close(peer, MARGIN_S)


def test_message_after_an_abort_in_the_same_read_is_not_stored(node: Target, clean: None) -> None:
    """A C-ECHO on an unaccepted context makes us abort; a complete C-STORE in the same
    read must not be stored after that (regression: it was)."""
    sop, data = instance()
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_echo_rq(), 7) + _cmd(wire.c_store_rq(2, wire.SECONDARY_CAPTURE, sop))
                  + wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA_LAST, data)))
        assert peer.read_until_closed(MARGIN_S) == ABORT_USER


def test_peer_abort_mid_store(node: Target, clean: None) -> None:
    """Sta6 + Evt16 -> AA-3 halfway through a data set: nothing stored or left."""
    sop, data = instance()
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))
                  + wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA, data[:40])))
        assert _wait(lambda: node.temp_files() != [])
        peer.send(wire.abort(0, 0))
        expect_silent_close(peer, MARGIN_S)


def _wait(predicate: Callable[[], bool], timeout: float = MARGIN_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("calling", [b"X\nFORGED-LF", b"X\rFORGED-CR", b"X\x1b[2JFORGED"])
def test_ae_title_cannot_forge_log_lines(node: Target, clean: None, calling: bytes) -> None:
    """AE titles are 16 bytes of the peer's choosing and end up in log lines: a line
    break in one must not start a line of its own, nor a control character reach the
    operator's terminal (CWE-117)."""
    marker = calling[2:].decode()
    # Logged: the rejection (engine), the aborted association and its summary (node).
    expect_reply(node, default_rq(calling=calling, application_context="1.2.3"), wire.associate_rj(1, 1, 2))
    peer, _ = node.established_peer(default_rq(calling=calling))
    with peer:
        peer.send(_cmd(wire.c_echo_rq(), 7))
        assert peer.read_until_closed(MARGIN_S) == ABORT_USER
    assert _wait(lambda: any(marker in line for line in node.log_lines()), MARGIN_S), "the title was not logged"
    # A forged line starts with the marker; an escape sequence stays inside its line.
    bad = [line for line in node.log_lines()
           if marker in line and (line.startswith(marker) or not line.isprintable())]
    assert bad == []


# ----------------------------------------------------------------------------- what is stored


def test_data_set_sop_instance_contradicts_the_command(node: Target, clean: None) -> None:
    """PS3.4 B.2.3: A900 (data set does not match), nothing stored."""
    _, data = instance()
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, uid(), data) == DATASET_MISMATCH


def test_data_set_sop_class_contradicts_the_command(node: Target, clean: None) -> None:
    sop, data = instance(sop_class=wire.CT_IMAGE)
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, sop, data) == DATASET_MISMATCH


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # (0008,0016) with VR "zz": the walk fails before the SOP Class UID: C000.
        pytest.param(b"\x08\x00\x16\x00zz\x04\x001.2\x00" + b"\x00" * 200, CANNOT_UNDERSTAND, id="bad-vr"),
        # A first tag above (0020,0013) ends the walk cleanly, nothing found: A900.
        pytest.param(b"\xff" * 300, DATASET_MISMATCH, id="all-ff"),
        pytest.param(b"", DATASET_MISMATCH, id="empty"),
        # A sequence nested 100 deep before any attribute (the walk bounds its stack): C000.
        pytest.param(b"\x08\x00\x05\x00SQ\x00\x00\xff\xff\xff\xff"
                     + (b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x05\x00SQ\x00\x00\xff\xff\xff\xff") * 100,
                     CANNOT_UNDERSTAND, id="deep-nesting"),
    ],
)
def test_data_set_that_is_not_dicom(node: Target, clean: None, data: bytes, status: int) -> None:
    """Data set bytes that are not (readable) elements are refused, never stored."""
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, uid(), data) == status


TRAVERSAL_UIDS = [
    "../../etc/passwd",
    "1.2.3/../../x",
    "..",
    "/etc/passwd",
    "1.2.3/",
    "1.2.3\\..\\..\\x",
    "C:\\x",
    "1.2.03",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2 3",
    "1.2.3.*",
    "$(reboot)",
    "`id`",
    "1.2.3;rm -rf",
    "%2e%2e%2f",
]


@pytest.mark.parametrize("bad", TRAVERSAL_UIDS)
def test_hostile_sop_instance_uid_in_the_command(node: Target, clean: None, bad: str) -> None:
    """CVE-2022-2119 class: the command's SOP Instance UID names the file, so anything
    that is not a PS3.5 9.1 UID is refused with 0117 (invalid SOP instance) before a
    path is formed; the data set agrees with the command, so only the UID check can
    stop it."""
    data = wire.dataset(wire.SECONDARY_CAPTURE, bad, uid(), uid())
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, bad, data) == INVALID_SOP_INSTANCE


def test_sop_instance_uid_with_trailing_nul_padding(node: Target, clean: None) -> None:
    """PS3.5 6.2: a UI value is padded with one trailing NUL; "1.2.3\\0" is the UID
    1.2.3, stored under the root as 1.2.3.dcm."""
    sop = uid()
    sop = sop if len(sop) % 2 else sop + "1"
    study, series = uid(), uid()
    data = wire.dataset(wire.SECONDARY_CAPTURE, sop + "\x00", study, series)
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, sop.encode() + b"\x00", data) == SUCCESS
        peer.send(wire.RELEASE_RQ)
        assert peer.recv_pdu() == wire.RELEASE_RP
    _assert_stored_once(node, sop, data)
    assert (node.root / study / series / f"{sop}.dcm").is_file()


@pytest.mark.parametrize("where", ["study", "series"])
@pytest.mark.parametrize("bad", ["../../../../../escaped", "1.2/../../../..", "..", "/tmp/x", "1.2.3\x00/x"])
def test_hostile_study_or_series_uid_in_the_data_set(node: Target, clean: None, where: str, bad: str) -> None:
    """Directory names come from the data set's Study/Series Instance UIDs: one that is
    not a UID is A900 and no directory is made (nothing outside the root)."""
    sop = uid()
    study, series = (bad, uid()) if where == "study" else (uid(), bad)
    data = wire.dataset(wire.SECONDARY_CAPTURE, sop, study, series)
    peer, _ = node.established_peer()
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, sop, data) == DATASET_MISMATCH


def test_deflate_bomb_is_bounded(node: Target, clean: None) -> None:
    """Deflated Explicit VR LE (PS3.5 A.5): 128 MiB of zeros in a ~130 KiB stream ahead
    of the attributes storage needs. The metadata walk inflates at most its cap, so
    memory stays flat; the attributes are never reached: C000."""
    bomb_size = 128 << 20
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    header = struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", bomb_size)  # a private OB value
    stream = compressor.compress(header)
    block = bytes(1 << 20)
    for _ in range(bomb_size >> 20):
        stream += compressor.compress(block)
    stream += compressor.flush()
    assert len(stream) < 1 << 20
    rss_before = node.rss()
    rq = default_rq(contexts=((1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
                              (3, wire.SECONDARY_CAPTURE, (wire.DEFLATED_LE,))))
    peer, ac = node.established_peer(rq)
    if accepted(ac).get(3) != wire.DEFLATED_LE:
        peer.close()
        pytest.skip("the target does not accept Deflated Explicit VR Little Endian")
    with peer:
        assert store(peer, wire.SECONDARY_CAPTURE, uid(), stream, fragment=60000) == CANNOT_UNDERSTAND
    assert node.rss() - rss_before < 32 << 20


# ----------------------------------------------------------------------------- timers
# Peers that linger only make the server wait for one of its timers, so they all linger
# at once, each in its own thread, and one test checks every outcome.


def _stalls_mid_data_set(node: Target) -> None:
    """DIMSE timeout: A-ABORT (0, 0), connection closed, temporary file removed."""
    sop, data = instance(pixel_bytes=2000)
    peer, _ = node.established_peer()
    with peer:
        peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))
                  + wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA, data[:1000])))
        assert _wait(lambda: node.temp_files() != []), "a store in progress has a temporary file"
        assert peer.read_until_closed(node.dimse_timeout + MARGIN_S) == ABORT_USER


def _stalls_mid_command(node: Target) -> None:
    """A command fragment and then silence: the network timeout aborts (0, 0)."""
    peer, _ = node.established_peer()
    with peer:
        peer.send(wire.p_data(wire.pdv(ECHO_CX, wire.MCH_COMMAND, wire.c_echo_rq()[:20])))
        assert peer.read_until_closed(node.network_timeout + MARGIN_S) == ABORT_USER


def _idle_association(node: Target) -> None:
    """An established association that says nothing: network timeout, (0, 0)."""
    peer, _ = node.established_peer()
    with peer:
        assert peer.read_until_closed(node.network_timeout + MARGIN_S) == ABORT_USER


def _never_closes_after_release(node: Target) -> None:
    """Sta13 after AR-4: ARTIM closes the connection (Evt18 -> AA-2)."""
    peer, _ = node.established_peer()
    with peer:
        peer.send(wire.RELEASE_RQ)
        assert peer.read_until_closed(node.acse_timeout + MARGIN_S) == wire.RELEASE_RP


def _never_closes_after_abort(node: Target) -> None:
    """Sta13 after AA-1: ARTIM closes the connection."""
    with node.peer() as peer:
        peer.send(wire.pdu(0x08, bytes(4)))
        assert peer.read_until_closed(node.acse_timeout + MARGIN_S) == ABORT_USER


def _never_closes_after_reject(node: Target) -> None:
    """Sta13 after AE-6 (A-ASSOCIATE-RJ): ARTIM closes the connection."""
    with node.peer() as peer:
        peer.send(default_rq(protocol_version=2))
        assert peer.read_until_closed(node.acse_timeout + MARGIN_S) == wire.associate_rj(1, 2, 2)


def _never_sends(node: Target) -> None:
    """Sta2 + Evt18 -> AA-2: closed without a word."""
    with node.peer() as peer:
        expect_silent_close(peer, node.acse_timeout + MARGIN_S)


def _slowloris(node: Target) -> None:
    """One byte of an A-ASSOCIATE-RQ every 0.2 s: ARTIM (started at connection, PS3.8
    AE-5) is not reset by bytes, only stopped by a whole RQ, so the connection is closed
    silently long before the RQ could complete."""
    rq = default_rq()
    budget = node.acse_timeout + MARGIN_S
    assert len(rq) * 0.2 > 2 * budget, "the RQ must take far longer than the budget"
    closed = threading.Event()
    received: list[bytes] = []
    with node.peer() as peer:

        def reader() -> None:
            try:
                received.append(peer.read_until_closed(budget))
                closed.set()
            except AssertionError:
                pass

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        started = time.monotonic()
        for byte in rq:
            if closed.is_set() or time.monotonic() - started > budget:
                break
            try:
                peer.send(bytes((byte,)))
            except OSError:
                break
            time.sleep(0.2)
        thread.join(budget)
        assert closed.is_set(), "ARTIM did not close a connection trickling an RQ"
        assert received == [b""]


def _many_half_open(node: Target) -> None:
    """64 connections each holding a partial 1 MiB A-ASSOCIATE-RQ: the node still serves
    while they hang, and ARTIM closes every one of them."""
    peers = []
    try:
        for _ in range(64):
            peer = node.peer()
            peers.append(peer)
            peer.send(struct.pack(">BxI", 0x01, 1 << 20) + bytes(16384))
        node.assert_still_serving()
        deadline = time.monotonic() + node.acse_timeout + MARGIN_S
        for peer in peers:
            assert peer.read_until_closed(max(0.1, deadline - time.monotonic())) == b""
    finally:
        for peer in peers:
            peer.close()


LINGERING_PEERS = {
    "stalls-mid-data-set (DIMSE timeout)": _stalls_mid_data_set,
    "stalls-mid-command (network timeout)": _stalls_mid_command,
    "idle-association (network timeout)": _idle_association,
    "never-closes-after-release (ARTIM)": _never_closes_after_release,
    "never-closes-after-abort (ARTIM)": _never_closes_after_abort,
    "never-closes-after-reject (ARTIM)": _never_closes_after_reject,
    "never-sends (ARTIM)": _never_sends,
    "slowloris-rq (ARTIM)": _slowloris,
    "64-half-open-connections (ARTIM)": _many_half_open,
}


def test_timers_end_every_lingering_peer(node: Target, clean: None) -> None:
    """Every scenario of LINGERING_PEERS at once; each asserts its own answer and close."""
    failures: dict[str, str] = {}

    def run(name: str, scenario: Callable[[Target], None]) -> None:
        try:
            scenario(node)
        except BaseException as exc:  # reported below, by name
            failures[name] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in LINGERING_PEERS.items()]
    for thread in threads:
        thread.start()
    bound = max(node.acse_timeout, node.dimse_timeout, node.network_timeout) + 4 * MARGIN_S
    for thread in threads:
        thread.join(bound)
    assert not any(t.is_alive() for t in threads), "a scenario hung"
    assert not failures, failures
    if hasattr(node, "live_connections"):
        assert _wait(lambda: node.live_connections() == 0)


#: Linux TCP states (include/net/tcp_states.h) in which the connection is still up.
_TCP_OPEN = {1, 4, 5}  # ESTABLISHED, FIN_WAIT1, FIN_WAIT2


def _tcp_state(sock: socket.socket) -> int:
    """tcpi_state, the first byte of struct tcp_info (TCP_INFO, Linux)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def test_peer_that_never_reads_our_answers(node: Target, clean: None) -> None:
    """C-ECHO-RQs as fast as the peer can send, responses never read. The server stops
    reading once its write buffer is full, so its memory stays flat; the network timeout
    then aborts, and because the peer will not take the A-ABORT either, the connection
    is dropped after the ARTIM time. (Regressions: responses were queued without bound,
    26 MB in 8 s; and the aborted connection, with its association slot, stayed until
    the peer chose to read.)"""
    peer, _ = node.established_peer()
    with peer:
        batch = wire.p_data(wire.pdv(ECHO_CX, wire.MCH_COMMAND_LAST, wire.c_echo_rq(1))) * 1000
        pending = memoryview(batch)
        peer.sock.setblocking(False)
        buffered: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            try:
                pending = pending[peer.sock.send(pending):] or memoryview(batch)
            except BlockingIOError:
                if hasattr(node, "server"):
                    buffered.append(node.call(lambda: max(  # type: ignore[attr-defined]
                        [a.transport.get_write_buffer_size() for a in node.server.active  # type: ignore[attr-defined]
                         if a.transport is not None] or [0])))
                time.sleep(0.05)
            except OSError:
                break  # already dropped
        assert max(buffered, default=0) < 2 << 20, f"server queued {max(buffered)} bytes"
        # Reading would let the server flush; watch the TCP state instead (Linux).
        budget = node.network_timeout + node.acse_timeout + MARGIN_S
        assert _wait(lambda: _tcp_state(peer.sock) not in _TCP_OPEN, budget), (
            f"a peer that never reads kept its connection (TCP state {_tcp_state(peer.sock)})")
    if hasattr(node, "server"):
        assert _wait(lambda: node.call(lambda: node.server.established_count) == 0)  # type: ignore[attr-defined]


def test_connection_reset_mid_association(node: Target, clean: None) -> None:
    """SO_LINGER 0: the server sees a reset mid-data-set, drops the store."""
    sop, data = instance()
    peer, _ = node.established_peer()
    peer.send(_cmd(wire.c_store_rq(1, wire.SECONDARY_CAPTURE, sop))
              + wire.p_data(wire.pdv(SC_CX, wire.MCH_DATA, data[:30])))
    assert _wait(lambda: node.temp_files() != [])
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
