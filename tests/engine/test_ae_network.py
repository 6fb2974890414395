"""The network half of ``ApplicationEntity``: associate/start_server as pynetdicom documents.

Theory of operation: every test runs our requestor AE against our acceptor AE over
127.0.0.1 (ephemeral ports), each AE on its own loop thread, and checks one documented
behaviour of the reference API (shared/reference/ApplicationEntity.txt): the outcome
flags (``is_established``/``is_rejected``/``is_released``/``is_aborted``), the order in
which the acceptor's notification events fire, the answers of intervention handlers
(EVT_C_ECHO, EVT_C_STORE, EVT_USER_ID), ``start_server(block=True)`` ended by
``shutdown()``, ``active_associations``, and TLS with a certificate made for the test by
the ``openssl`` CLI. The ``aes`` fixture shuts every AE down after the test, and the last
test checks that ``shutdown()`` leaves no loop thread behind ("Stop any active
association servers and threads").

Waits are for events (conditions with a generous bound), never sleeps-and-hope; no
assertion is about speed except that a refused connection does not wait for a timeout.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import AE, build_context, evt
from engine._pdu import UserIdentityRQ
from engine.sop_class import CTImageStorage, Verification
from tests import peers
from tests.dicomdata import make_dataset

HOST = peers.HOST
EVENT_WAIT_S = 10.0  # bound on waiting for a notification; normally milliseconds


class Log:
    """Records notification events (and anything else) from the loop thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.names: list[str] = []
        self.events: list[evt.Event] = []

    def __call__(self, event: evt.Event) -> None:
        with self.cond:
            self.names.append(event.event.name)
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, name: str, count: int = 1) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.names.count(name) >= count, EVENT_WAIT_S)

    def handlers(self) -> list[tuple]:
        return [(e, self) for e in evt.NOTIFICATION_EVENTS]


@pytest.fixture
def aes() -> Iterator:
    """Factory: aes(title) -> a new AE, shut down after the test."""
    made: list[AE] = []

    def make(title: str = "TESTAE") -> AE:
        ae = AE(title)
        made.append(ae)
        return ae

    try:
        yield make
    finally:
        for ae in made:
            ae.shutdown()


@pytest.fixture
def serve(aes) -> Iterator:
    """Factory: serve(handlers, **settings) -> (ae, port) of a running non-blocking
    server supporting Verification and CT Image Storage."""

    def start(handlers=(), title: str = "OURSCP", ssl_context=None, **settings):
        ae = aes(title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage)
        for name, value in settings.items():
            setattr(ae, name, value)
        server = ae.start_server((HOST, 0), block=False, ssl_context=ssl_context,
                                 evt_handlers=list(handlers))
        return ae, server.server_address[1]

    return start


def _requestor(aes, *contexts) -> AE:
    ae = aes("OURSCU")
    for cx in contexts or (Verification, CTImageStorage):
        ae.add_requested_context(cx)
    return ae


def _ct():
    """A small CT data set (the 16x16 "tiny" CT) in Explicit VR Little Endian."""
    return make_dataset("tiny", seed=2, unique=True)


# ------------------------------------------------------------------ associate outcomes


def test_associate_without_requested_contexts_raises(aes, serve):
    _, port = serve()
    ae = aes("OURSCU")
    with pytest.raises(RuntimeError):
        ae.associate(HOST, port)
    assert ae.active_associations == []


def test_associate_to_closed_port_is_aborted_not_established(aes):
    ae = _requestor(aes)
    ae.acse_timeout = ae.network_timeout = 60  # a refused connection must not wait these
    port = peers.free_port()  # nothing listens here
    start = time.monotonic()
    assoc = ae.associate(HOST, port)
    elapsed = time.monotonic() - start
    assert not assoc.is_established
    assert assoc.is_aborted
    assert not assoc.is_rejected and not assoc.is_released
    assert elapsed < 30, f"a refused connection took {elapsed:.1f} s"


def test_associate_to_silent_acceptor_times_out_with_abort(aes):
    """A peer that accepts the TCP connection but never answers the A-ASSOCIATE-RQ:
    after acse_timeout the association is aborted (PS3.8 Sta5, Evt15 -> AA-1)."""
    received = bytearray()
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(EVENT_WAIT_S)

        def silent_peer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(EVENT_WAIT_S)
                while chunk := conn.recv(65536):
                    received.extend(chunk)

        thread = threading.Thread(target=silent_peer, name="silent-peer", daemon=True)
        thread.start()
        ae = _requestor(aes)
        ae.acse_timeout = 0.3
        assoc = ae.associate(HOST, listener.getsockname()[1])
        thread.join(EVENT_WAIT_S)
    assert not assoc.is_established and assoc.is_aborted and not assoc.is_rejected
    assert received[0] == 0x01  # the A-ASSOCIATE-RQ ...
    assert received[-10:] == bytes.fromhex("07000000000400000000")  # ... then A-ABORT


def test_rejected_association(aes, serve):
    log = Log()
    _, port = serve(log.handlers(), require_called_aet=True)
    ae = _requestor(aes)
    assoc = ae.associate(HOST, port, ae_title="SOMEONE-ELSE")
    assert assoc.is_rejected
    assert not assoc.is_established and not assoc.is_aborted and not assoc.is_released
    assert log.wait_for("EVT_REJECTED")
    accepted = ae.associate(HOST, port, ae_title="OURSCP")
    assert accepted.is_established
    accepted.release()


def test_release(aes, serve):
    log = Log()
    _, port = serve(log.handlers())
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.is_established and assoc.is_requestor and not assoc.is_acceptor
    assoc.release()
    assert assoc.is_released
    assert not assoc.is_established and not assoc.is_aborted
    assert log.wait_for("EVT_RELEASED")


def test_abort_seen_by_peer(aes, serve):
    log = Log()
    _, port = serve(log.handlers())
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.is_established
    assoc.abort()
    assert assoc.is_aborted and not assoc.is_established and not assoc.is_released
    assert log.wait_for("EVT_ABORTED")
    assert log.wait_for("EVT_CONN_CLOSE")
    assert "EVT_RELEASED" not in log.names


def test_server_notification_order(aes, serve):
    log = Log()
    _, port = serve(log.handlers())
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert log.wait_for("EVT_CONN_CLOSE")
    assert log.names == [
        "EVT_CONN_OPEN",
        "EVT_REQUESTED",
        "EVT_ACCEPTED",
        "EVT_ESTABLISHED",
        "EVT_RELEASED",
        "EVT_CONN_CLOSE",
    ]
    # The events carry the association; the acceptor's side of it.
    assert all(not e.assoc.is_requestor for e in log.events)
    assert log.events[0].address[0] == HOST


def test_requestor_handlers_fire(aes, serve):
    _, port = serve()
    log = Log()
    assoc = _requestor(aes).associate(HOST, port, evt_handlers=log.handlers())
    assert assoc.is_established
    assoc.release()
    assert log.wait_for("EVT_CONN_CLOSE")
    for name in ("EVT_CONN_OPEN", "EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_RELEASED"):
        assert name in log.names
    assert log.names.index("EVT_ESTABLISHED") < log.names.index("EVT_RELEASED")
    # The requestor hears of its own A-ASSOCIATE-RQ once it is sent, before the answer.
    assert log.names.index("EVT_CONN_OPEN") < log.names.index("EVT_REQUESTED")
    assert log.names.index("EVT_REQUESTED") < log.names.index("EVT_ACCEPTED")
    requested = log.events[log.names.index("EVT_REQUESTED")]
    assert requested.assoc.is_requestor
    assert requested.request.calling_ae_title.strip() == b"OURSCU"


def test_requestor_handler_sees_request_on_the_wire(aes):
    """EVT_REQUESTED fires after the A-ASSOCIATE-RQ is written: a peer that waits for
    the RQ before anything else has it when the handler runs."""
    received = threading.Event()
    seen: list[bool] = []
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(EVENT_WAIT_S)

        def peer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(EVENT_WAIT_S)
                if conn.recv(1) == b"\x01":  # the A-ASSOCIATE-RQ PDU type
                    received.set()
                # Answer nothing: the requestor gives up after its ACSE timeout.
                conn.recv(1 << 16)

        thread = threading.Thread(target=peer, daemon=True)
        thread.start()
        ae = _requestor(aes)
        ae.acse_timeout = 0.5
        handler = (evt.EVT_REQUESTED, lambda event: seen.append(received.wait(EVENT_WAIT_S)))
        assoc = ae.associate(HOST, listener.getsockname()[1], evt_handlers=[handler])
        thread.join(EVENT_WAIT_S)
    assert seen == [True]
    assert not assoc.is_established


def test_requestor_and_acceptor_values_on_both_sides(aes, serve):
    server_ae, port = serve(maximum_pdu_size=32768)
    ae = _requestor(aes)
    ae.maximum_pdu_size = 20000
    assoc = ae.associate(HOST, port, max_pdu=12345)
    assert assoc.is_established
    # What we proposed, as sent on the wire (PS3.8 D.1, PS3.7 D.3.3.2).
    assert assoc.requestor.maximum_length == 12345
    assert assoc.requestor.implementation_class_uid == str(ae.implementation_class_uid)
    assert assoc.requestor.implementation_version_name == "SCPFLEET_010"
    assert assoc.requestor.ae_title.strip() == b"OURSCU"
    assert [cx.context_id for cx in assoc.requestor.requested_contexts] == [1, 3]
    # What the acceptor answered.
    assert assoc.acceptor.maximum_length == 32768
    assert assoc.acceptor.implementation_class_uid == str(server_ae.implementation_class_uid)
    (accepted,) = server_ae.active_associations
    assert accepted.requestor.maximum_length == 12345
    assoc.release()


def test_associate_argument_types(aes):
    ae = _requestor(aes)
    with pytest.raises(TypeError):
        ae.associate(HOST, "foo")  # a wrong type, not a wrong value
    with pytest.raises(TypeError):
        ae.associate(1112, 11112)
    with pytest.raises(ValueError):
        ae.associate(HOST, 0)
    with pytest.raises(ValueError):
        ae.associate(HOST, 70000)
    with pytest.raises(TypeError, match="'addr' must be str or tuple"):
        ae.associate(("localhost", "foo", 0), 11112)
    with pytest.raises(TypeError, match="'bind_address' must be tuple"):
        ae.associate(HOST, 11112, bind_address=("localhost", "x"))


def test_associate_ipv6_tuple_and_connection_timeout(aes, serve):
    _, port = serve()
    ae = _requestor(aes)
    ae.connection_timeout = 5
    assoc = ae.associate((HOST, 0, 0), port)  # pynetdicom 2.0+'s (host, flowinfo, scope)
    assert assoc.is_established and assoc.connection_timeout == 5
    ae.connection_timeout = 7
    assert assoc.connection_timeout == 7
    assoc.release()


@pytest.mark.parametrize("setting", ["require_called_aet", "require_calling_aet"])
def test_acceptor_checks_changed_after_start_apply(aes, serve, setting):
    """Both reference implementations read the AE title checks for every request."""
    server_ae, port = serve()
    ae = _requestor(aes)
    first = ae.associate(HOST, port, ae_title="SOMEONE-ELSE")
    assert first.is_established
    first.release()
    if setting == "require_called_aet":
        server_ae.require_called_aet = True
    else:
        server_ae.require_calling_aet = ["NOT-OURSCU"]
    refused = ae.associate(HOST, port, ae_title="SOMEONE-ELSE")
    assert refused.is_rejected
    # PS3.8 Table 9-21: rejected-permanent, service-user, called (7) / calling (3) AE title
    assert refused._inner.rejection.reason == (7 if setting == "require_called_aet" else 3)
    if setting == "require_called_aet":
        server_ae.require_called_aet = False
    else:
        server_ae.require_calling_aet = []
    again = ae.associate(HOST, port, ae_title="SOMEONE-ELSE")
    assert again.is_established
    again.release()


def test_timeouts_changed_apply_to_live_associations(aes, serve):
    server_ae, port = serve()
    ae = _requestor(aes)
    assoc = ae.associate(HOST, port)
    assert assoc.is_established and assoc.acse_timeout == 30
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 5, 6, 7
    assert (assoc.acse_timeout, assoc.dimse_timeout, assoc.network_timeout) == (5, 6, 7)
    assert assoc._inner.conn.network_timeout == 7
    server_ae.network_timeout = 9
    (accepted,) = server_ae.active_associations
    assert accepted.network_timeout == 9
    assoc.release()


def test_start_server_refuses_half_set_roles_and_no_contexts(aes):
    ae = aes("OURSCP")
    with pytest.raises(ValueError, match="No supported Presentation"):
        ae.start_server((HOST, 0), block=False)
    ae.add_supported_context("1.2.3.4", scp_role=False)  # scu_role left None
    with pytest.raises(ValueError, match="inconsistent scu_role/scp_role"):
        ae.start_server((HOST, 0), block=False)


def test_ae_str_summarises(aes, serve):
    server_ae, port = serve()
    server_ae.require_calling_aet = ["OURSCU"]
    text = str(server_ae)
    for words in ("Verification", "Implicit VR Little Endian", "Require called AE title: False",
                  "Require calling AE title: OURSCU", "0/10"):
        assert words in text
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.is_established
    assert "Peer: OURSCU@127.0.0.1" in str(server_ae)
    assoc.release()


# ------------------------------------------------------------------ intervention events


def test_c_echo_handler_status_returned(aes, serve):
    seen: list = []

    def on_echo(event: evt.Event) -> int:
        seen.append(event.request)
        return 0x0211  # PS3.7 C.4.2: unrecognized operation

    _, port = serve([(evt.EVT_C_ECHO, on_echo)])
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.send_c_echo(msg_id=7).Status == 0x0211
    assoc.release()
    assert len(seen) == 1 and seen[0].message_id == 7


def test_c_echo_without_handler_is_success(aes, serve):
    _, port = serve()
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_c_store_handler_status_returned(aes, serve):
    _, port = serve([(evt.EVT_C_STORE, lambda event: 0xA700)])
    assoc = _requestor(aes).associate(HOST, port)
    rsp = assoc.send_c_store(_ct())
    assert rsp.Status == 0xA700
    assert assoc.is_established  # a refusal is not the end of the association
    assoc.release()


def test_c_store_handler_exception_fails_store_association_continues(aes, serve):
    calls: list[str] = []

    def on_store(event: evt.Event) -> int:
        calls.append(str(event.request.AffectedSOPInstanceUID))
        if len(calls) == 1:
            raise ValueError("handler bug")
        return 0x0000

    _, port = serve([(evt.EVT_C_STORE, on_store)])
    assoc = _requestor(aes).associate(HOST, port)
    first = assoc.send_c_store(_ct())
    assert 0xC000 <= first.Status <= 0xCFFF, hex(first.Status)  # PS3.7 C.4.1: failure
    assert assoc.is_established
    assert assoc.send_c_store(_ct()).Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert len(calls) == 2


def _raise_long(event: evt.Event) -> int:
    raise RuntimeError("a handler failure whose message is far longer than the 64 "
                       "characters an Error Comment (LO) may hold")


@pytest.mark.parametrize(
    "handler, expected",
    [
        (_raise_long, "failure"),
        (lambda event: (0xA700, "out of space " * 10), 0xA700),  # comment cut to 64
        (lambda event: None, "failure"),  # not a status at all
        (lambda event: 0x1FFFF, "failure"),  # not a US value
    ],
    ids=["long-exception", "long-comment", "none", "out-of-range"],
)
def test_c_store_handler_bad_answers_still_get_a_response(aes, serve, handler, expected):
    """Whatever a handler does, the SCU gets a valid C-STORE-RSP and can go on."""
    answers = iter([handler, lambda event: 0x0000])
    _, port = serve([(evt.EVT_C_STORE, lambda event: next(answers)(event))])
    assoc = _requestor(aes).associate(HOST, port)
    first = assoc.send_c_store(_ct())
    assert "Status" in first, "no response: the association stalled"
    if expected == "failure":
        assert 0xC000 <= first.Status <= 0xCFFF, hex(first.Status)
    else:
        assert first.Status == expected
    if "ErrorComment" in first:
        assert 0 < len(first.ErrorComment) <= 64
    assert assoc.is_established
    assert assoc.send_c_store(_ct()).Status == 0x0000
    assoc.release()
    assert assoc.is_released


def test_c_store_handler_receives_dataset(aes, serve):
    got: list = []

    def on_store(event: evt.Event) -> int:
        got.append((event.dataset, event.file_meta, event.request))
        return 0x0000

    _, port = serve([(evt.EVT_C_STORE, on_store)])
    ds = _ct()
    assoc = _requestor(aes).associate(HOST, port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    dataset, meta, request = got[0]
    assert dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert dataset.PixelData == ds.PixelData
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert request.AffectedSOPClassUID == CTImageStorage


def test_user_identity_handler(aes, serve):
    seen: list = []

    def on_user_id(event: evt.Event) -> tuple[bool, bytes | None]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        ok = event.primary_field == b"alice" and event.secondary_field == b"s3cret"
        return ok, b"welcome" if ok else None

    _, port = serve([(evt.EVT_USER_ID, on_user_id)])
    ae = _requestor(aes)

    def identity(password: bytes) -> list:
        return [UserIdentityRQ(identity_type=2, positive_response_requested=True,
                               primary_field=b"alice", secondary_field=password)]

    good = ae.associate(HOST, port, ext_neg=identity(b"s3cret"))
    assert good.is_established
    good.release()
    bad = ae.associate(HOST, port, ext_neg=identity(b"wrong"))
    assert bad.is_rejected and not bad.is_established
    assert seen == [(2, b"alice", b"s3cret"), (2, b"alice", b"wrong")]
    # Without a user identity item the handler is not asked.
    plain = ae.associate(HOST, port)
    assert plain.is_established
    plain.release()
    assert len(seen) == 2


# ------------------------------------------------------------------ server lifetime


def test_start_server_blocking_stopped_by_shutdown(aes):
    ae = aes("OURSCP")
    ae.add_supported_context(Verification)
    port = peers.free_port()
    errors: list[BaseException] = []

    def serve_forever() -> None:
        try:
            ae.start_server((HOST, port), block=True)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=serve_forever, name="blocking-server", daemon=True)
    thread.start()
    client = _requestor(aes, Verification)
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:  # wait until the thread's server listens
        assoc = client.associate(HOST, port)
        if assoc.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert assoc.is_established, errors
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert thread.is_alive()  # still blocked in start_server
    ae.shutdown()
    thread.join(EVENT_WAIT_S)
    assert not thread.is_alive()
    assert not errors
    assert client.associate(HOST, port).is_aborted  # nothing listens any more


def test_active_associations(aes, serve):
    server_ae, port = serve()
    client = _requestor(aes)
    assert server_ae.active_associations == [] and client.active_associations == []
    first = client.associate(HOST, port)
    second = client.associate(HOST, port)
    assert first.is_established and second.is_established
    assert len(client.active_associations) == 2
    acceptors = server_ae.active_associations
    assert len(acceptors) == 2
    assert all(a.is_acceptor and a.is_established for a in acceptors)
    first.release()
    assert len(client.active_associations) == 1
    deadline = time.monotonic() + EVENT_WAIT_S
    while len(server_ae.active_associations) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server_ae.active_associations) == 1
    second.abort()
    assert client.active_associations == []


def test_shutdown_stops_servers_and_threads(aes, serve):
    before = set(threading.enumerate())
    server_ae, port = serve()
    client = _requestor(aes)
    held = client.associate(HOST, port)
    assert held.is_established
    client.shutdown()
    server_ae.shutdown()
    assert held.is_aborted
    held.release()  # a no-op on an association that is over, even after shutdown
    probe = _requestor(aes)
    assert probe.associate(HOST, port).is_aborted  # the server is gone
    probe.shutdown()
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []
    # The AE is still usable: serving again starts a new loop thread.
    server = server_ae.start_server((HOST, 0), block=False)
    again = client.associate(HOST, server.server_address[1], contexts=[
        build_context(Verification)])
    assert again.is_established
    assert again.send_c_echo().Status == 0x0000
    again.release()


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate and key for "localhost" / 127.0.0.1, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed: cannot make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_echo_and_store(aes, serve, tls_files):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    stored: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.encoded_dataset())
        return 0x0000

    _, port = serve([(evt.EVT_C_STORE, on_store)], ssl_context=server_ctx)
    client = _requestor(aes)
    assoc = client.associate(HOST, port, tls_args=(client_ctx, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    ds = make_dataset("ct", unique=True)  # 512x512x16: many PDUs through TLS
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert len(stored) == 1 and len(stored[0]) > 512 * 512 * 2
    # A client that does not speak TLS gets no association from a TLS server.
    plain = client.associate(HOST, port)
    assert not plain.is_established


def test_tls_untrusted_certificate_fails(aes, serve, tls_files):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    _, port = serve(ssl_context=server_ctx)
    strict = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    assoc = _requestor(aes).associate(HOST, port, tls_args=(strict, "localhost"))
    assert not assoc.is_established
    assert assoc.is_aborted
