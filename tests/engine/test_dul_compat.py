"""``assoc.dul``: pynetdicom's DULServiceProvider surface on a live association.

Theory of operation: an association's DUL is the documented class in its bound mode (see
engine/dul.py): it maps the documented methods onto the association's sans-IO state
machine and transport, and queues association-level indications as the PDUs that carry
them. These tests open real associations over 127.0.0.1 (our requestor AE to our
acceptor AE) and check each documented member as engine/dul.py defines it:
``state_machine.current_state``, the read-only ``artim_timer`` view, ``receive_pdu`` /
``peek_next_pdu`` (association-level indications only), ``send_pdu`` performing the
primitive a PDU stands for, ``kill_dul`` closing the transport without an A-ABORT,
``stop_dul`` and ``idle_timer_expired``. Every AE is shut down by the ``aes`` fixture.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from engine import AE, DULServiceProvider, evt
from engine._pdu import AAbort, AReleaseRP, AReleaseRQ
from engine.sop_class import Verification
from tests import peers

HOST = peers.HOST
WAIT_S = 10.0  # bound on waiting for an expected outcome; normally milliseconds


def wait_until(predicate, timeout: float = WAIT_S) -> bool:
    """Poll ``predicate`` from the test thread (the loop runs on the AE's thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Log:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.names: list[str] = []

    def __call__(self, event: evt.Event) -> None:
        with self.cond:
            self.names.append(event.event.name)
            self.cond.notify_all()

    def wait_for(self, name: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: name in self.names, WAIT_S)


@pytest.fixture
def aes() -> Iterator:
    made: list[AE] = []

    def make(title: str) -> AE:
        ae = AE(title)
        made.append(ae)
        return ae

    try:
        yield make
    finally:
        for ae in made:
            ae.shutdown()


@pytest.fixture
def pair(aes):
    """Factory: pair(**requestor settings) -> (requestor Association, server log,
    server AE), over a fresh Verification server."""

    def make(**settings):
        log = Log()
        server = aes("OURSCP")
        server.add_supported_context(Verification)
        handlers = [(e, log) for e in evt.NOTIFICATION_EVENTS]
        port = server.start_server((HOST, 0), block=False,
                                   evt_handlers=handlers).server_address[1]
        client = aes("OURSCU")
        client.add_requested_context(Verification)
        for name, value in settings.items():
            setattr(client, name, value)
        assoc = client.associate(HOST, port)
        assert assoc.is_established
        return assoc, log, server

    return make


def test_dul_type_and_state_sta6(pair):
    assoc, _, server = pair()
    assert isinstance(assoc.dul, DULServiceProvider)
    assert assoc.dul.association is assoc._inner
    assert assoc.dul.state_machine.current_state == "Sta6"
    (acceptor,) = server.active_associations
    assert acceptor.dul.state_machine.current_state == "Sta6"
    assoc.release()
    assert assoc.dul.state_machine.current_state == "Sta1"


def test_artim_timer_view(pair):
    assoc, _, _ = pair(acse_timeout=7)
    timer = assoc.dul.artim_timer
    assert timer.timeout == 7
    # PS3.8 9.2: ARTIM runs only while (dis)connecting, never in an established Sta6.
    assert timer.is_running is False
    assert timer.remaining is None
    assert timer.expired is False
    assoc.release()


def test_receive_and_peek_next_pdu(pair):
    assoc, _, _ = pair()
    dul = assoc.dul
    # The association request/accept happened before the DUL view existed; P-DATA
    # indications go to DIMSE, so an echo leaves nothing queued either.
    assert assoc.send_c_echo().Status == 0x0000
    assert dul.peek_next_pdu() is None
    assert dul.receive_pdu() is None
    assert dul.receive_pdu(wait=True, timeout=0.05) is None
    assoc.release()
    peeked = dul.peek_next_pdu()
    assert isinstance(peeked, AReleaseRP)  # the A-RELEASE confirmation
    assert dul.peek_next_pdu() is peeked  # peeking does not consume
    assert dul.receive_pdu(wait=True, timeout=WAIT_S) is peeked
    assert dul.peek_next_pdu() is None and dul.receive_pdu() is None


def test_send_pdu_release_rq_releases(pair):
    assoc, log, _ = pair()
    assoc.dul.send_pdu(AReleaseRQ())
    assert wait_until(lambda: assoc.is_released)
    assert isinstance(assoc.dul.receive_pdu(wait=True, timeout=WAIT_S), AReleaseRP)
    assert log.wait_for("EVT_RELEASED")
    assert wait_until(assoc.dul.stop_dul)


def test_send_pdu_abort_aborts(pair):
    assoc, log, _ = pair()
    assoc.dul.send_pdu(AAbort(source=0, reason=0))
    assert wait_until(lambda: assoc.is_aborted)
    assert log.wait_for("EVT_ABORTED")
    assert "EVT_RELEASED" not in log.names


def test_kill_dul_closes_transport_without_abort(pair):
    assoc, log, _ = pair()
    assoc.dul.kill_dul()
    assert wait_until(lambda: not assoc.is_alive())
    assert assoc.is_aborted  # the connection went away under an established association
    assert log.wait_for("EVT_CONN_CLOSE")
    # The peer saw the transport close (AA-4 -> EVT_ABORTED), not an A-ABORT PDU's reason.
    assert "EVT_ABORTED" in log.names and "EVT_RELEASED" not in log.names
    events = []
    while (item := assoc.dul.receive_pdu()) is not None:
        events.append(item)
    assert any(isinstance(e, AAbort) for e in events)


def test_bound_thread_api(pair):
    """Bound to an association, the thread API follows its transport connection."""
    assoc, _, _ = pair()
    dul = assoc.dul
    assert dul.is_bound and dul.is_alive() and dul.daemon
    with pytest.raises(RuntimeError):
        dul.start()
    dul.join(0.01)
    assert dul.is_alive()
    assoc.release()
    dul.join(WAIT_S)
    assert not dul.is_alive()


def test_stop_dul(pair):
    assoc, _, _ = pair()
    assert assoc.dul.stop_dul() is False  # Sta6: still running
    assoc.release()
    assert wait_until(assoc.dul.stop_dul)
    assert assoc.dul.stop_dul() is True


def test_idle_timer_expired(pair):
    quiet, _, _ = pair(network_timeout=None)
    assert quiet.dul.idle_timer_expired() is False  # no network timeout: never idle
    quiet.release()

    # Long enough that the first check cannot race the timer on a loaded machine.
    assoc, log, _ = pair(network_timeout=1.0)
    assert assoc.dul.idle_timer_expired() is False
    # Nothing arrives from the peer: the idle timer runs out and (as in pynetdicom) the
    # association is aborted.
    assert wait_until(assoc.dul.idle_timer_expired)
    assert wait_until(lambda: assoc.is_aborted)
    assert log.wait_for("EVT_ABORTED")
