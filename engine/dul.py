"""``DULServiceProvider``: the DICOM Upper Layer service provider of the reference API.

Theory of operation: the documented object (``DULServiceProvider(socket=None, port=None,
dul_timeout=None, assoc=None)``, a ``threading.Thread``) exists in two modes, both on
the one sans-IO state machine of :mod:`engine._fsm` (PS3.8 Table 9-10; there is no
second table):

**On its own** (built with a socket, a port, or neither), it is a thread that moves
bytes and primitives and nothing else. Its service user talks to it through queues:

* :meth:`send_pdu` puts a request on ``dul_from_user_queue``. A request is the PDU that
  carries the primitive: ``AAssociateRQ`` (A-ASSOCIATE request, Evt1: the thread
  connects to :attr:`peer_address`), ``AAssociateAC``/``AAssociateRJ`` (the response,
  Evt7/Evt8), ``PDataTF`` (P-DATA, Evt9), ``AReleaseRQ`` (Evt11), ``AReleaseRP``
  (Evt14), ``AAbort`` (Evt15).
* The thread turns each request, each PDU the framer (:class:`engine._pdu.PDUDecoder`)
  completes, each transport event and an ARTIM expiry into its Table 9-10 event and
  puts ``(Event, payload)`` on ``event_queue``; the state machine takes them from there
  in order. What an action sends is written to the socket; what it indicates goes to
  ``dul_to_user_queue`` as the PDU that carried it (``AAssociateRQ`` for an A-ASSOCIATE
  indication, ``PDataTF`` for P-DATA, ``AReleaseRQ``/``AReleaseRP`` for the release
  indication/confirmation, ``AAbort`` for A-ABORT and A-P-ABORT; a transport closed
  under an association is ``AAbort(source=2, reason=0)``).
* :meth:`receive_pdu` and :meth:`peek_next_pdu` read that queue.

The thread waits in ``select`` on the socket and a wake-up socket pair, with the ARTIM
deadline as its timeout: no sleeping, no polling. Times come from ``time.monotonic``,
passed to the state machine as ``now``. With a ``socket`` (a connection accepted by the
caller) it is the association acceptor and starts at Evt5; with a ``port`` it listens
and accepts one connection, then the same; with neither it can only request.

**Bound to an association** (``assoc.dul`` of :class:`engine.association.Association`,
or built with ``assoc=`` an engine association), it is a view: the association's
asyncio loop already runs the same state machine inside its
:class:`~engine._connection.Connection`, so there is no thread of its own.
``state_machine``, ``artim_timer``, ``receive_pdu``/``peek_next_pdu`` (association-level
indications, as above; P-DATA is consumed by DIMSE and never queued), ``send_pdu``
(``AAbort``, ``AReleaseRQ`` or ``PDataTF``, performed on the loop), ``kill_dul``,
``stop_dul`` and ``idle_timer_expired`` work as documented; ``is_alive``/``join``
follow the transport connection, and ``start``/``run`` raise RuntimeError.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket as _socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ._acse import provider_check
from ._connection import (
    _PDU_EVENTS,
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    ReleaseConfirmed,
    ReleaseRequested,
)
from ._errors import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._fsm import (
    CloseTransport,
    ConnectTransport,
    DULStateMachine,
    Event,
    Indicate,
    SendBuffers,
    SendPDU,
    State,
)
from ._pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUDecoder,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    encode_pdu,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._loop import LoopThread

__all__ = [
    "DULServiceProvider",
    "ARTIMTimerView",
    "StateMachineView",
    "TRANSPORT_CLOSED",
    # The PDUs a DUL user sends and receives (PS3.8 9.3), re-exported from engine._pdu.
    "AAssociateRQ",
    "AAssociateAC",
    "AAssociateRJ",
    "PDataTF",
    "PDV",
    "AReleaseRQ",
    "AReleaseRP",
    "AAbort",
    "PresentationContextRQ",
    "PresentationContextAC",
    "UserInformation",
]

log = logging.getLogger("scpfleet.engine.dul")

#: What ``dul_to_user_queue`` receives when the transport closed under an association
#: (A-P-ABORT indication, AA-4): a provider-source abort, reason not specified.
TRANSPORT_CLOSED = AAbort(source=ABORT_SOURCE_PROVIDER, reason=ABORT_REASON_NOT_SPECIFIED)

#: The user requests send_pdu takes on its own, and the Table 9-10 event each one is.
_REQUEST_EVENTS: dict[type, Event] = {
    AAssociateRQ: Event.Evt1,
    AAssociateAC: Event.Evt7,
    AAssociateRJ: Event.Evt8,
    PDataTF: Event.Evt9,
    AReleaseRQ: Event.Evt11,
    AReleaseRP: Event.Evt14,
    AAbort: Event.Evt15,
}

#: Bytes asked of the socket per recv(): a few P-DATA PDUs of the default size.
_RECV_SIZE = 1 << 16


class ARTIMTimerView:
    """Read-only view of the ARTIM timer (PS3.8 9.1.5) on the clock its machine runs on."""

    def __init__(self, machine: Callable[[], DULStateMachine], clock: Callable[[], float]):
        self._machine = machine
        self._clock = clock

    @property
    def timeout(self) -> float | None:
        return self._machine().artim_timeout

    @property
    def is_running(self) -> bool:
        return self._machine().artim_deadline is not None

    @property
    def remaining(self) -> float | None:
        deadline = self._machine().artim_deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._clock())

    @property
    def expired(self) -> bool:
        return self._machine().artim_expired(self._clock())


class StateMachineView:
    """``dul.state_machine``: the :class:`~engine._fsm.DULStateMachine` plus the reference
    API's ``current_state`` (``"Sta1"`` .. ``"Sta13"``; assigning one moves the machine
    there, as the reference's attribute allows)."""

    def __init__(self, machine: DULStateMachine) -> None:
        self.machine = machine

    @property
    def current_state(self) -> str:
        return self.machine.state.name

    @current_state.setter
    def current_state(self, name: str) -> None:
        try:
            self.machine.state = State[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a PS3.8 Table 9-10 state (Sta1..Sta13)") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.machine, name)


def _bound_association(assoc: Any) -> tuple[Any, Any] | None:
    """(asyncio association, loop runner) when ``assoc`` is one of the engine's."""
    from ._assoc import Association as AsyncAssociation
    from .association import Association as BlockingAssociation

    if isinstance(assoc, BlockingAssociation):
        return assoc._inner, assoc._runner
    if isinstance(assoc, AsyncAssociation):
        return assoc, None
    return None


def _as_indication(event: Any) -> Any:
    """The PDU-shaped queue item for an association-level event of a bound association."""
    kind = type(event)
    if kind is AssociationRequested:
        return event.request
    if kind is AssociationAccepted:
        return event.accept
    if kind is AssociationRejected:
        return event.reject
    if kind is ReleaseRequested:
        return AReleaseRQ()
    if kind is ReleaseConfirmed:
        return AReleaseRP()
    if kind is Aborted:
        if event.source is None:
            return TRANSPORT_CLOSED
        return AAbort(source=event.source, reason=event.reason or 0)
    return None


class DULServiceProvider(threading.Thread):
    """The DICOM Upper Layer service provider (PS3.8 9); see the module doc.

    ``socket``: a connected socket; the DUL is its association acceptor (Evt5).
    ``port``: a port (or ``(host, port)``) to listen on for one connection. Neither:
    the DUL can only request an association (set :attr:`peer_address` first).
    ``dul_timeout``: seconds for ARTIM and the idle timer (None: they never expire).
    ``assoc``: the association; an engine association binds the DUL to it (no thread).
    As in later releases of the reference, ``DULServiceProvider(assoc)`` works too.
    """

    def __init__(
        self,
        socket: _socket.socket | None = None,
        port: int | tuple[str, int] | None = None,
        dul_timeout: float | None = None,
        assoc: Any = None,
        *,
        runner: LoopThread | None = None,
    ) -> None:
        if socket is not None and not isinstance(socket, _socket.socket) and assoc is None:
            socket, assoc = None, socket  # DULServiceProvider(assoc), as later releases
        if socket is not None and port is not None:
            raise ValueError("DULServiceProvider takes a socket or a port, not both")
        if dul_timeout is not None and (isinstance(dul_timeout, bool)
                                        or not isinstance(dul_timeout, (int, float))):
            raise TypeError(f"dul_timeout must be a number or None, not {type(dul_timeout).__name__}")
        super().__init__(name="DULServiceProvider", daemon=True)
        self.association = assoc
        self.dul_timeout = dul_timeout
        #: Requests from the service user, in order (send_pdu).
        self.dul_from_user_queue: queue.Queue[Any] = queue.Queue()
        #: Indications and confirmations for the service user (receive_pdu).
        self.dul_to_user_queue: queue.Queue[Any] = queue.Queue()
        #: ``(Event, payload)`` pairs awaiting the state machine (own thread only).
        self.event_queue: queue.Queue[tuple[Event, Any]] = queue.Queue()
        #: The peer (host, port) an A-ASSOCIATE request connects to.
        self.peer_address: tuple[str, int] | None = None
        #: The connection from the peer when we are the acceptor (PS3.8's SCP side).
        self.scp_socket: _socket.socket | None = None
        #: Our connection to the peer when we are the requestor (the SCU side).
        self.scu_socket: _socket.socket | None = None
        #: The listening socket when built with a port.
        self.listen_socket: _socket.socket | None = None
        bound = _bound_association(assoc)
        if bound is not None:
            self._assoc, bound_runner = bound
            self._runner = runner or bound_runner
            self._init_bound()
            return
        self._assoc = None
        self._runner = None
        self._machine = DULStateMachine(
            is_requestor=socket is None and port is None,
            artim_timeout=dul_timeout,
            acceptable=provider_check,
        )
        self._decoder = PDUDecoder()
        self._input_dead = False
        self._killed = False
        self._last_activity = time.monotonic()
        self._waker: tuple[_socket.socket, _socket.socket] | None = None
        self._waker_lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self.artim_timer = ARTIMTimerView(lambda: self._machine, time.monotonic)
        if socket is not None:
            self.scp_socket = socket
            self.event_queue.put((Event.Evt5, None))
        elif port is not None:
            address = port if isinstance(port, tuple) else ("", port)
            listener = _socket.create_server(address, backlog=1)
            self.listen_socket = listener

    # -- shared members ---------------------------------------------------------------

    @property
    def is_bound(self) -> bool:
        """Whether this DUL is a view of an engine association (no thread of its own)."""
        return self._assoc is not None

    @property
    def to_provider_queue(self) -> queue.Queue[Any]:
        """``dul_from_user_queue`` under the name later releases use."""
        return self.dul_from_user_queue

    @property
    def to_user_queue(self) -> queue.Queue[Any]:
        """``dul_to_user_queue`` under the name later releases use."""
        return self.dul_to_user_queue

    @property
    def socket(self) -> _socket.socket | None:
        """The transport connection, whichever role (own thread only)."""
        return self.scu_socket or self.scp_socket

    @property
    def state_machine(self) -> StateMachineView:
        """The Upper Layer state machine (PS3.8 9.2), with ``current_state``."""
        if self._assoc is not None:
            return StateMachineView(self._assoc.conn.machine)
        return StateMachineView(self._machine)

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """The next item of ``dul_to_user_queue``, or None. ``wait`` blocks for one, up to
        ``timeout`` seconds when given."""
        try:
            return self.dul_to_user_queue.get(block=wait, timeout=timeout)
        except queue.Empty:
            return None

    def peek_next_pdu(self) -> Any:
        """The next item of ``dul_to_user_queue`` without removing it, or None."""
        with self.dul_to_user_queue.mutex:
            pending = self.dul_to_user_queue.queue
            return pending[0] if pending else None

    def send_pdu(self, params: Any) -> None:
        """Ask the DUL to perform the request ``params`` stands for (see module doc)."""
        if self._assoc is not None:
            self._perform_bound(params)
            return
        if type(params) not in _REQUEST_EVENTS:
            raise TypeError(
                "send_pdu takes an AAssociateRQ/AC/RJ, PDataTF, AReleaseRQ/RP or AAbort, "
                f"not {type(params).__name__}"
            )
        self.dul_from_user_queue.put(params)
        self._wake()

    def idle_timer_expired(self) -> bool:
        """Whether nothing was received or sent for the idle time (``dul_timeout``; on
        an association, its network timeout)."""
        if self._assoc is not None:
            timeout = self._assoc.network_timeout
            if timeout is None:
                return False
            return self._assoc.loop.time() - self._assoc.conn.last_activity >= timeout
        if self.dul_timeout is None:
            return False
        return time.monotonic() - self._last_activity >= self.dul_timeout

    def stop_dul(self) -> bool:
        """If the machine is idle (Sta1), stop the DUL and return True; else False."""
        if self._assoc is not None:
            return self._assoc.conn.machine.state is State.Sta1
        if self._machine.state is not State.Sta1:
            return False
        self.kill_dul()
        if self.ident is not None and threading.current_thread() is not self:
            super().join()
        return True

    def kill_dul(self) -> None:
        """Stop at once: the transport is closed without an A-ABORT."""
        if self._assoc is not None:
            transport = self._assoc.transport
            if transport is None:
                return
            if self._runner is not None and not self._runner.is_loop_thread:
                self._runner.call(transport.abort)
            else:
                transport.abort()
            return
        self._killed = True
        self._wake()
        if self.ident is None:
            self._close_sockets()

    # -- the thread API -----------------------------------------------------------------

    def start(self) -> None:
        if self._assoc is not None:
            raise RuntimeError(
                "this DUL is bound to an association: the association's event loop runs "
                "it, there is no thread to start"
            )
        super().start()

    def is_alive(self) -> bool:
        if self._assoc is not None:
            return not self._closed.is_set()
        return super().is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._assoc is not None:
            self._closed.wait(timeout)
            return
        super().join(timeout)

    def run(self) -> None:
        """The thread: select on the socket(s), feed the state machine, write, indicate."""
        if self._assoc is not None:
            raise RuntimeError("this DUL is bound to an association; it has no thread")
        selector = selectors.DefaultSelector()
        self._selector = selector
        waker = self._ensure_waker()
        selector.register(waker[0], selectors.EVENT_READ, "wake")
        if self.listen_socket is not None:
            selector.register(self.listen_socket, selectors.EVENT_READ, "listen")
        if self.scp_socket is not None:
            selector.register(self.scp_socket, selectors.EVENT_READ, "conn")
        self._last_activity = time.monotonic()
        try:
            while not self._killed:
                self._turn(time.monotonic())
                if self._killed:
                    break
                deadline = self._machine.artim_deadline
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, _ in selector.select(timeout):
                    self._ready(key.data)
        except Exception:
            log.exception("DUL thread failed; the transport is closed")
            raise
        finally:
            self._close_sockets()
            selector.close()
            self._selector = None

    # -- the thread's work ------------------------------------------------------------

    def _turn(self, now: float) -> None:
        """Queue the user's requests and a timer expiry as events, then run the events."""
        while True:
            try:
                params = self.dul_from_user_queue.get_nowait()
            except queue.Empty:
                break
            self._request(params)
        if self._machine.artim_expired(now):
            self.event_queue.put((Event.Evt18, None))
        while not self._killed:
            try:
                event, payload = self.event_queue.get_nowait()
            except queue.Empty:
                break
            self._handle(event, payload, time.monotonic())

    def _request(self, params: Any) -> None:
        event = _REQUEST_EVENTS[type(params)]
        if event is Event.Evt9:
            payload: Any = [encode_pdu(params)]
        else:
            payload = params
        info = getattr(params, "user_information", None)
        if info is not None:
            # The Maximum Length we advertise bounds the P-DATA-TF we accept (PS3.8 D.1).
            self._decoder.max_pdata_length = info.max_length or 0
        self.event_queue.put((event, payload))

    def _handle(self, event: Event, payload: Any, now: float) -> None:
        try:
            outputs = self._machine.handle(event, now, payload)
        except LocalProtocolError as exc:
            log.warning("DUL: request refused: %s", exc)
            return
        for out in outputs:
            kind = type(out)
            if kind is SendPDU:
                self._write([encode_pdu(out.pdu)])
            elif kind is SendBuffers:
                self._write(out.buffers)
            elif kind is Indicate:
                self.dul_to_user_queue.put(out.pdu if out.pdu is not None else TRANSPORT_CLOSED)
            elif kind is ConnectTransport:
                self._connect()
            elif kind is CloseTransport:
                self._close_connection()

    def _ready(self, what: str) -> None:
        if what == "wake":
            waker = self._waker
            if waker is not None:
                try:
                    waker[0].recv(4096)
                except OSError:
                    pass
        elif what == "listen":
            listener = self.listen_socket
            if listener is None or self.socket is not None:
                return
            conn, _ = listener.accept()
            self.scp_socket = conn
            if self._selector is not None:
                self._selector.unregister(listener)
                self._selector.register(conn, selectors.EVENT_READ, "conn")
            self.event_queue.put((Event.Evt5, None))
        elif what == "conn":
            self._receive()

    def _receive(self) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            data = sock.recv(_RECV_SIZE)
        except OSError:
            data = b""
        if not data:
            self._transport_closed()
            return
        self._last_activity = time.monotonic()
        if self._input_dead:
            return  # after Evt19 only the close (Evt17) still matters
        try:
            pdus = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self._input_dead = True
            self.event_queue.put((Event.Evt19, exc))
            return
        for pdu in pdus:
            self.event_queue.put((_PDU_EVENTS[type(pdu)], pdu))

    def _write(self, buffers: list) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            sock.sendall(b"".join(buffers))
        except OSError as exc:
            log.warning("DUL: cannot send: %s", exc)
            self._transport_closed()
            return
        self._last_activity = time.monotonic()

    def _connect(self) -> None:
        """AE-1: open the transport connection to :attr:`peer_address` (Evt2 or Evt17)."""
        if self.peer_address is None:
            log.warning("DUL: A-ASSOCIATE request without a peer_address to connect to")
            self.event_queue.put((Event.Evt17, None))
            return
        try:
            sock = _socket.create_connection(self.peer_address, timeout=self.dul_timeout)
        except OSError as exc:
            log.warning("DUL: cannot connect to %s: %s", self.peer_address, exc)
            self.event_queue.put((Event.Evt17, None))
            return
        sock.settimeout(None)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.scu_socket = sock
        if self._selector is not None:
            self._selector.register(sock, selectors.EVENT_READ, "conn")
        self.event_queue.put((Event.Evt2, None))

    def _transport_closed(self) -> None:
        """The peer closed the connection (or it failed): Evt17."""
        self._close_connection()
        if self._machine.state is not State.Sta1:
            self.event_queue.put((Event.Evt17, None))

    def _close_connection(self) -> None:
        sock = self.socket
        self.scu_socket = self.scp_socket = None
        self._decoder = PDUDecoder(self._decoder.max_pdata_length)
        self._input_dead = False
        if sock is None:
            return
        if self._selector is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _close_sockets(self) -> None:
        self._close_connection()
        for sock in (self.listen_socket, *(self._waker or ())):
            if sock is not None:
                sock.close()
        self.listen_socket = None

    def _ensure_waker(self) -> tuple[_socket.socket, _socket.socket]:
        with self._waker_lock:
            if self._waker is None:
                self._waker = _socket.socketpair()
            return self._waker

    def _wake(self) -> None:
        """Interrupt the thread's select (a request or a kill is queued)."""
        if self.ident is None or not super().is_alive():
            return
        try:
            self._ensure_waker()[1].send(b"\0")
        except OSError:
            pass

    # -- bound to an association ------------------------------------------------------

    def _init_bound(self) -> None:
        assoc = self._assoc
        self.artim_timer = ARTIMTimerView(lambda: assoc.conn.machine, assoc.loop.time)
        self._closed = threading.Event()

        def observe(event: Any) -> None:
            item = _as_indication(event)
            if item is not None:
                self.dul_to_user_queue.put(item)

        assoc.dul_observers.append(observe)

        def watch_close() -> None:
            assoc.closed.add_done_callback(lambda _: self._closed.set())

        if self._runner is not None and not self._runner.is_loop_thread:
            self._runner.call(watch_close)
        else:
            watch_close()

    def _perform_bound(self, params: Any) -> None:
        assoc = self._assoc
        if not isinstance(params, (AAbort, AReleaseRQ, PDataTF)):
            raise TypeError(
                "on an association, send_pdu takes AAbort, AReleaseRQ or PDataTF "
                f"(the association answers the rest itself), not {type(params).__name__}"
            )

        def perform() -> None:
            now = assoc.loop.time()
            if isinstance(params, AAbort):
                assoc.conn.abort(now, params.source, params.reason)
            elif isinstance(params, AReleaseRQ):
                assoc.conn.release(now)
            else:
                assoc.conn.send_buffers([encode_pdu(params)], now)
            assoc.pump()

        if self._runner is not None and not self._runner.is_loop_thread:
            self._runner.call(perform)
        else:
            perform()
