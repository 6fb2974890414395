"""``DULServiceProvider`` on its own over a socket, byte for byte against a raw-socket peer.

Theory of operation: the peer is the test itself, holding a plain TCP socket on
127.0.0.1 and writing/reading PDU bytes built here by hand (each fixture says what it
encodes, PS3.8 9.3), never by the engine's encoder. The DUL under test is the
documented thread (``start``/``join``/``is_alive``) driven only through its documented
members: ``send_pdu``, ``receive_pdu``/``peek_next_pdu``, ``state_machine``,
``artim_timer``, ``idle_timer_expired``, ``stop_dul``, ``kill_dul``. Every DUL is killed
and every socket closed by the fixtures, whatever the test's outcome.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from engine import DULServiceProvider
from engine._fsm import DULStateMachine
from engine._pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
)
from engine.dul import TRANSPORT_CLOSED

HOST = "127.0.0.1"
WAIT_S = 10.0  # bound on waiting for an expected outcome; normally milliseconds

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1: the DICOM application context
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
IMPL_UID = b"1.2.3.4"


# -- PDU bytes, by hand ----------------------------------------------------------------


def item(item_type: int, payload: bytes) -> bytes:
    """A variable item: type, reserved, 2-byte length (PS3.8 9.3.2.x)."""
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: type, reserved, 4-byte length (PS3.8 9.3.1)."""
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def user_info(max_length: int) -> bytes:
    # 50H User Information: 51H Maximum Length, 52H Implementation Class UID.
    return item(0x50, item(0x51, struct.pack(">I", max_length)) + item(0x52, IMPL_UID))


def associate_rq() -> bytes:
    """A-ASSOCIATE-RQ: version 1, called 'SCP', calling 'SCU', Verification in Implicit VR
    LE as context 1, Maximum Length 16382 (PS3.8 9.3.2)."""
    fixed = struct.pack(">HH", 1, 0) + b"SCP".ljust(16) + b"SCU".ljust(16) + bytes(32)
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE))
    return pdu(0x01, fixed + item(0x10, APP_CONTEXT) + pc + user_info(16382))


def associate_ac() -> bytes:
    """A-ASSOCIATE-AC answering :func:`associate_rq`: context 1 accepted (result 0) in
    Implicit VR LE, Maximum Length 32768 (PS3.8 9.3.3)."""
    fixed = struct.pack(">HH", 1, 0) + b"SCP".ljust(16) + b"SCU".ljust(16) + bytes(32)
    pc = item(0x21, bytes([1, 0, 0, 0]) + item(0x40, IMPLICIT_LE))
    return pdu(0x02, fixed + item(0x10, APP_CONTEXT) + pc + user_info(32768))


#: P-DATA-TF, one PDV on context 1: control header 03H (command, last fragment), 4 data
#: bytes (PS3.8 9.3.5, E.2).
PDATA = pdu(0x04, struct.pack(">IB", 6, 1) + b"\x03" + b"\x01\x02\x03\x04")
RELEASE_RQ = pdu(0x05, bytes(4))  # PS3.8 9.3.6: four reserved bytes
RELEASE_RP = pdu(0x06, bytes(4))  # PS3.8 9.3.7
USER_ABORT = pdu(0x07, bytes([0, 0, 0, 0]))  # PS3.8 9.3.8: source 0 (user), reason 0
#: An A-ABORT whose length says 2: too short for its fixed fields (invalid PDU, Evt19).
SHORT_ABORT = b"\x07\x00\x00\x00\x00\x02\x00\x00"


def accept_for(rq: AAssociateRQ) -> AAssociateAC:
    """The AAssociateAC a user answers :func:`associate_rq` with (encodes to
    :func:`associate_ac`)."""
    return AAssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        application_context_name=rq.application_context_name,
        presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT_LE.decode()),),
        user_information=UserInformation(max_length=32768,
                                         implementation_class_uid=IMPL_UID.decode()),
    )


# -- the raw peer ----------------------------------------------------------------------


class Peer:
    """The test's end of one TCP connection: exact bytes in and out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(WAIT_S)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def recv_pdu(self) -> bytes:
        header = self.recv_exact(6)
        if len(header) < 6:
            return header
        return header + self.recv_exact(struct.unpack_from(">I", header, 2)[0])

    def closed(self) -> bool:
        """Whether the DUL closed the connection (EOF, nothing more sent)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for thing in things:
        if isinstance(thing, DULServiceProvider):
            thing.kill_dul()
            if thing.ident is not None:
                thing.join(WAIT_S)
        else:
            thing.close()


def wait_state(dul: DULServiceProvider, name: str) -> bool:
    deadline = time.monotonic() + WAIT_S
    while dul.state_machine.current_state != name:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def acceptor(cleanup) -> Iterator:
    """Factory: acceptor(dul_timeout) -> (DUL started on an accepted socket, Peer)."""

    def make(dul_timeout: float | None = 5.0) -> tuple[DULServiceProvider, Peer]:
        listener = socket.create_server((HOST, 0))
        cleanup.append(listener)
        client = socket.create_connection(listener.getsockname())
        cleanup.append(client)
        conn, _ = listener.accept()
        dul = DULServiceProvider(socket=conn, dul_timeout=dul_timeout)
        cleanup.append(dul)
        dul.start()
        return dul, Peer(client)

    return make


def establish(dul: DULServiceProvider, peer: Peer) -> AAssociateRQ:
    peer.send(associate_rq())
    rq = dul.receive_pdu(wait=True, timeout=WAIT_S)
    assert isinstance(rq, AAssociateRQ)
    dul.send_pdu(accept_for(rq))
    assert peer.recv_pdu() == associate_ac()
    assert wait_state(dul, "Sta6")
    return rq


# -- tests -----------------------------------------------------------------------------


def test_documented_constructor_and_members() -> None:
    dul = DULServiceProvider(socket=None, port=None, dul_timeout=7, assoc=None)
    for name in ("dul_from_user_queue", "dul_to_user_queue", "event_queue", "scu_socket",
                 "scp_socket", "artim_timer", "association", "state_machine"):
        assert hasattr(dul, name), name
    assert dul.scu_socket is None and dul.scp_socket is None
    assert isinstance(dul.state_machine.machine, DULStateMachine)  # the one state table
    assert dul.state_machine.current_state == "Sta1"
    assert dul.artim_timer.timeout == 7 and not dul.artim_timer.is_running
    assert not dul.is_alive() and dul.ident is None and dul.daemon
    assert dul.name and callable(dul.run) and callable(dul.join)
    assert dul.stop_dul() is True  # Sta1: nothing to stop
    with pytest.raises(ValueError):
        DULServiceProvider(socket=socket.socket(), port=11112)
    with pytest.raises(TypeError):
        dul.send_pdu("not a PDU")


def test_assoc_as_first_argument_as_later_releases() -> None:
    class Owner:
        pass

    owner = Owner()
    dul = DULServiceProvider(owner)
    assert dul.association is owner and dul.scp_socket is None


def test_acceptor_association_data_and_release_byte_for_byte(acceptor) -> None:
    dul, peer = acceptor()
    assert dul.is_alive()
    assert wait_state(dul, "Sta2")  # Evt5: transport connection indication, ARTIM runs
    assert dul.artim_timer.is_running
    rq = establish(dul, peer)
    assert rq.calling_ae_title.strip() == b"SCU" and rq.called_ae_title.strip() == b"SCP"
    assert rq.user_information.max_length == 16382
    assert not dul.artim_timer.is_running  # AE-6 stopped it

    peer.send(PDATA)
    got = dul.receive_pdu(wait=True, timeout=WAIT_S)
    assert isinstance(got, PDataTF)
    (pdv,) = got.pdvs
    assert pdv.context_id == 1 and bytes(pdv.data) == b"\x01\x02\x03\x04"
    dul.send_pdu(PDataTF((PDV(context_id=1, is_command=True, is_last=True,
                              data=memoryview(b"\x01\x02\x03\x04")),)))
    assert peer.recv_pdu() == PDATA

    peer.send(RELEASE_RQ)
    assert isinstance(dul.receive_pdu(wait=True, timeout=WAIT_S), AReleaseRQ)
    assert dul.state_machine.current_state == "Sta8"
    dul.send_pdu(AReleaseRP())
    assert peer.recv_pdu() == RELEASE_RP
    assert wait_state(dul, "Sta13")  # AR-4: the requestor closes the connection
    peer.sock.close()
    assert wait_state(dul, "Sta1")
    assert dul.stop_dul() is True
    assert not dul.is_alive()


def test_requestor_connects_to_peer_address(cleanup) -> None:
    listener = socket.create_server((HOST, 0))
    cleanup.append(listener)
    dul = DULServiceProvider(dul_timeout=5)
    cleanup.append(dul)
    dul.peer_address = listener.getsockname()
    dul.start()
    rq = AAssociateRQ(
        called_ae_title=b"SCP".ljust(16),
        calling_ae_title=b"SCU".ljust(16),
        application_context_name=APP_CONTEXT.decode(),
        presentation_contexts=(
            PresentationContextRQ(1, VERIFICATION.decode(), (IMPLICIT_LE.decode(),)),
        ),
        user_information=UserInformation(max_length=16382,
                                         implementation_class_uid=IMPL_UID.decode()),
    )
    dul.send_pdu(rq)
    conn, _ = listener.accept()
    cleanup.append(conn)
    peer = Peer(conn)
    assert peer.recv_pdu() == associate_rq()  # AE-1, Evt2, AE-2
    assert dul.scu_socket is not None and dul.scp_socket is None
    assert dul.state_machine.current_state == "Sta5"
    peer.send(associate_ac())
    ac = dul.receive_pdu(wait=True, timeout=WAIT_S)
    assert isinstance(ac, AAssociateAC)
    assert ac.user_information.max_length == 32768
    assert dul.state_machine.current_state == "Sta6"
    dul.send_pdu(AReleaseRQ())
    assert peer.recv_pdu() == RELEASE_RQ
    peer.send(RELEASE_RP)
    assert isinstance(dul.receive_pdu(wait=True, timeout=WAIT_S), AReleaseRP)
    assert peer.closed()  # AR-3 closes the transport
    assert wait_state(dul, "Sta1")


def test_port_listens_for_one_connection(cleanup) -> None:
    dul = DULServiceProvider(port=(HOST, 0), dul_timeout=5)
    cleanup.append(dul)
    address = dul.listen_socket.getsockname()
    dul.start()
    client = socket.create_connection(address)
    cleanup.append(client)
    peer = Peer(client)
    establish(dul, peer)
    assert dul.scp_socket is not None


def test_peer_abort_is_indicated_and_closes(acceptor) -> None:
    dul, peer = acceptor()
    establish(dul, peer)
    peer.send(USER_ABORT)
    abort = dul.receive_pdu(wait=True, timeout=WAIT_S)
    assert abort == AAbort(source=0, reason=0)  # AA-3: A-ABORT indication
    assert peer.closed()
    assert wait_state(dul, "Sta1")


def test_user_abort_goes_out(acceptor) -> None:
    dul, peer = acceptor()
    establish(dul, peer)
    dul.send_pdu(AAbort(source=0, reason=0))
    assert peer.recv_pdu() == USER_ABORT  # AA-1
    assert wait_state(dul, "Sta13")
    peer.sock.close()
    assert wait_state(dul, "Sta1")


def test_invalid_pdu_gets_a_provider_abort(acceptor) -> None:
    dul, peer = acceptor()
    establish(dul, peer)
    peer.send(SHORT_ABORT)
    # AA-8: A-ABORT, source 2 (provider), reason 6 (invalid-PDU-parameter value), and
    # the A-P-ABORT indication carrying it.
    sent = peer.recv_pdu()
    assert sent[:8] == b"\x07\x00\x00\x00\x00\x04\x00\x00" and sent[8] == 2
    indication = dul.receive_pdu(wait=True, timeout=WAIT_S)
    assert isinstance(indication, AAbort) and indication.source == 2
    assert indication.reason == sent[9]
    assert dul.state_machine.current_state == "Sta13"
    peer.sock.close()
    assert wait_state(dul, "Sta1")


def test_transport_closed_under_association(acceptor) -> None:
    dul, peer = acceptor()
    establish(dul, peer)
    peer.sock.close()
    assert dul.receive_pdu(wait=True, timeout=WAIT_S) == TRANSPORT_CLOSED  # AA-4
    assert wait_state(dul, "Sta1")


def test_artim_expiry_closes_a_silent_connection(acceptor) -> None:
    dul, peer = acceptor(dul_timeout=1.0)  # long enough to see Sta2 on a loaded machine
    assert wait_state(dul, "Sta2")
    # Sta2 + Evt18 -> AA-2: the connection is closed, no PDU is sent.
    assert peer.closed()
    assert wait_state(dul, "Sta1")
    assert not dul.artim_timer.is_running


def test_idle_timer(acceptor) -> None:
    dul, peer = acceptor(dul_timeout=1.0)  # each check below must come before it expires
    establish(dul, peer)
    assert dul.idle_timer_expired() is False
    deadline = time.monotonic() + WAIT_S
    while not dul.idle_timer_expired():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    peer.send(PDATA)  # activity restarts it
    assert isinstance(dul.receive_pdu(wait=True, timeout=WAIT_S), PDataTF)
    assert dul.idle_timer_expired() is False
    assert DULServiceProvider(dul_timeout=None).idle_timer_expired() is False


def test_peek_does_not_consume(acceptor) -> None:
    dul, peer = acceptor()
    assert dul.peek_next_pdu() is None
    assert dul.receive_pdu() is None
    assert dul.receive_pdu(wait=True, timeout=0.05) is None
    peer.send(associate_rq())
    deadline = time.monotonic() + WAIT_S
    while dul.peek_next_pdu() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    peeked = dul.peek_next_pdu()
    assert isinstance(peeked, AAssociateRQ) and dul.peek_next_pdu() is peeked
    assert dul.receive_pdu() is peeked and dul.peek_next_pdu() is None


def test_kill_dul_closes_without_abort(acceptor) -> None:
    dul, peer = acceptor()
    establish(dul, peer)
    assert dul.stop_dul() is False  # Sta6: not idle
    dul.kill_dul()
    dul.join(WAIT_S)
    assert not dul.is_alive()
    assert peer.closed()  # EOF, and no A-ABORT before it


def test_request_not_allowed_in_state_is_refused(acceptor, caplog) -> None:
    dul, peer = acceptor()
    assert wait_state(dul, "Sta2")
    dul.send_pdu(AReleaseRQ())  # Evt11 has no Sta2 cell
    establish(dul, peer)  # the DUL goes on
    assert "not allowed" in caplog.text


def test_one_byte_at_a_time(acceptor) -> None:
    dul, peer = acceptor()
    peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, value in enumerate(associate_rq()):
        peer.send(bytes([value]))
        if i % 64 == 0:
            time.sleep(0.001)  # let some arrive as separate segments
    assert isinstance(dul.receive_pdu(wait=True, timeout=WAIT_S), AAssociateRQ)


def test_threads_are_independent(acceptor) -> None:
    duls = [acceptor() for _ in range(3)]
    threads = [threading.Thread(target=establish, args=pair) for pair in duls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert all(dul.state_machine.current_state == "Sta6" for dul, _ in duls)
