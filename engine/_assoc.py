"""One DICOM association on an event loop: the ACSE service user, in either role.

Theory of operation: an :class:`Association` wires three parts and makes the ACSE
decisions itself:

* its :class:`~engine._transport.Link` carries bytes, timers and flow control for the
  sans-IO :class:`~engine._connection.Connection` (``assoc.conn``);
* its :class:`~engine._dispatch.Dispatcher` serves the DIMSE requests the peer sends,
  through the registered service providers (:mod:`engine.services`);
* its :class:`~engine._scu.ServiceUser` sends our own DIMSE requests
  (``send_c_echo``, ``send_c_store`` ...) and receives their responses.

What is left here is the association itself: accepting or rejecting a request (user
identity, then :func:`~engine._acse.evaluate_request`), checking an accept against what
we asked for, answering a release once every response owed has gone out, aborting, the
pynetdicom-style state flags, and the ``evt`` notifications a script can bind to.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from pydicom.dataset import Dataset

from . import evt
from ._acse import evaluate_request, provider_check, rejection_description
from ._connection import (
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
from ._dimse import CStoreRSP
from ._dispatch import Dispatcher
from ._errors import ABORT_SOURCE_USER, LocalProtocolError
from ._handlers import call_intervention, handler_registry, notify
from ._pdu import AAssociateRJ
from ._scu import ServiceUser
from ._transport import Link
from .presentation import PresentationContext, negotiate_as_requestor
from .services import ServiceRegistry

if TYPE_CHECKING:  # pragma: no cover
    from ._server import AssociationServer

__all__ = ["Association", "ServiceUserInfo"]

log = logging.getLogger("scpfleet.engine")


@dataclass
class ServiceUserInfo:
    """One end of an association (pynetdicom's ``assoc.requestor``/``assoc.acceptor``)."""

    ae_title: bytes = b""
    address: str = ""
    port: int = 0
    maximum_length: int = 0
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    user_identity: Any = None
    #: The presentation contexts proposed (the requestor's, with their IDs).
    requested_contexts: list[PresentationContext] = field(default_factory=list)


class Association:
    """One DICOM association, either role, on an asyncio transport.

    State flags follow pynetdicom: ``is_established``, ``is_rejected``, ``is_aborted``,
    ``is_released``. ``accepted_contexts``/``rejected_contexts`` hold the negotiated
    presentation contexts. Requestor methods are coroutines.
    """

    def __init__(
        self,
        *,
        is_requestor: bool,
        loop: asyncio.AbstractEventLoop,
        handlers: dict,
        acse_timeout: float | None,
        dimse_timeout: float | None,
        network_timeout: float | None,
        maximum_pdu_size: int,
        ae: Any = None,
        server: AssociationServer | None = None,
        services: ServiceRegistry | None = None,
        requested_contexts: Sequence[PresentationContext] = (),
    ) -> None:
        self.loop = loop
        self.ae = ae
        self.server = server
        self.handlers = handlers
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        #: Bound on opening the transport connection (requestor; None: network_timeout).
        self.connection_timeout: float | None = None
        self.is_requestor = is_requestor
        self.requested_contexts = list(requested_contexts)
        conn = Connection(
            is_requestor=is_requestor,
            max_pdu_receive=maximum_pdu_size,
            artim_timeout=acse_timeout,
            acceptable=None if is_requestor else self._provider_check,
            dimse_timeout=dimse_timeout,
            network_timeout=network_timeout,
        )
        self.link = Link(loop, conn, self, close_grace=acse_timeout,
                         hold_on_write=not is_requestor)
        self.dispatcher = Dispatcher(self, services if services is not None else handler_registry())
        self.scu = ServiceUser(self)
        self.requestor = ServiceUserInfo(requested_contexts=self.requested_contexts)
        self.acceptor = ServiceUserInfo()
        self.accepted_contexts: list[PresentationContext] = []
        self.rejected_contexts: list[PresentationContext] = []
        self.is_established = False
        self.is_rejected = False
        self.is_aborted = False
        self.is_released = False
        self.rejection: AAssociateRJ | None = None
        self.abort_info: Aborted | None = None
        self._established: asyncio.Future[bool] = loop.create_future()
        self._released: asyncio.Future[bool] = loop.create_future()
        self._counted = False
        self._contexts_by_id: dict[int, PresentationContext] = {}
        #: Callables given each association-level event (DULServiceProvider's view).
        self.dul_observers: list[Callable[[Any], None]] = []
        #: The real peer's address when the transport's peer is a relay (set by
        #: ``AssociationServer.adopt(peer=...)`` before the transport is made); None: the
        #: transport's own peer address.
        self.peer_address: tuple[str, int] | None = None

    # -- parts ----------------------------------------------------------------------------

    @property
    def conn(self) -> Connection:
        """The sans-IO protocol stack of this association."""
        return self.link.conn

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.link.transport

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the transport connection is closed."""
        return self.link.closed

    @property
    def in_store(self) -> bool:
        """Whether a request from the peer is being received or served."""
        return self.dispatcher.in_store

    def pump(self) -> None:
        """Write what the core queued and handle its events (after a direct core call)."""
        self.link.pump()

    def context(self, context_id: int) -> PresentationContext | None:
        """The accepted presentation context with this ID, or None."""
        return self._contexts_by_id.get(context_id)

    # -- the link's owner -----------------------------------------------------------------

    def link_made(self, transport: asyncio.Transport) -> bool:
        peer = self.peer_address or transport.get_extra_info("peername") or ("", 0)
        server = self.server
        if server is not None:
            if not server.peer_allowed(peer):
                # Closed before the state machine starts: no PDU is read or answered.
                log.warning("connection from %s refused: address not allowed", peer)
                return False
            server.register(self)
        local = transport.get_extra_info("sockname") or ("", 0)
        remote, me = (self.acceptor, self.requestor) if self.is_requestor else (
            self.requestor,
            self.acceptor,
        )
        if isinstance(peer, tuple):
            remote.address, remote.port = peer[0], peer[1]
        if isinstance(local, tuple):
            me.address, me.port = local[0], local[1]
        notify(self, evt.EVT_CONN_OPEN, address=peer)
        return True

    def link_events(self, events: list[Any]) -> None:
        dispatcher = self.dispatcher
        for event in events:
            kind = type(event)
            if kind is DatasetFragment:
                dispatcher.fragment(event)
            elif kind is CommandReceived:
                dispatcher.command(event)
            else:
                self._association_event(event)

    def link_lost(self) -> None:
        if self.is_established and not self.is_released:
            # The transport went away under an established association (AA-4).
            self._mark_aborted()
        self.is_established = False
        self.dispatcher.close()
        self.scu.fail_waiters()
        if not self._established.done():
            self._established.set_result(False)
        if not self._released.done():
            self._released.set_result(False)
        server = self.server
        if self._counted and server is not None:
            server.established_count -= 1
            self._counted = False
        notify(self, evt.EVT_CONN_CLOSE)
        if server is not None:
            server.forget(self)

    # -- association events ---------------------------------------------------------------

    def _association_event(self, event: Any) -> None:
        for observe in self.dul_observers:
            observe(event)
        kind = type(event)
        if kind is AssociationRequested:
            self._on_requested(event)
        elif kind is AssociationRequestSent:
            self._on_request_sent(event)
        elif kind is AssociationAccepted:
            self._on_accepted(event)
        elif kind is AssociationRejected:
            self._on_rejected(event)
        elif kind is ReleaseRequested:
            # Answered once every response owed to the peer has been sent.
            collision = event.collision
            self.dispatcher.when_idle(lambda: self._answer_release(collision))
        elif kind is ReleaseConfirmed:
            self._mark_released()
        elif kind is Aborted:
            if self.abort_info is None:
                self.abort_info = event
            if event.local and event.detail:
                log.warning("%s: aborting: %s", self.peer_label(), event.detail)
            self._mark_aborted()

    def _answer_release(self, collision: bool) -> None:
        self.conn.release_response(self.loop.time())
        if not collision:
            self._mark_released()
        self.link.pump()

    def _provider_check(self, rq: Any) -> AAssociateRJ | None:
        server = self.server
        if server is None:
            return provider_check(rq)
        if server.config.admission is not None:
            rj = provider_check(rq)
            if rj is None and not server.config.admission():
                rj = provider_check(rq, active=1, maximum=0)
                # Recorded like a service-user rejection, for the server's logs and stats.
                self.rejection = rj
                self.is_rejected = True
            return rj
        return provider_check(
            rq, active=server.established_count, maximum=server.config.maximum_associations
        )

    def _on_requested(self, event: AssociationRequested) -> None:
        if not self.conn.awaiting_association_response:
            # A PDU read together with the A-ASSOCIATE-RQ already ended the association
            # (Sta3 + Evt10/Evt12/... -> AA-8, Evt16 -> AA-3): there is nothing to answer.
            return
        rq = event.request
        ui = rq.user_information
        self.requestor.ae_title = rq.calling_ae_title
        self.requestor.maximum_length = ui.max_length or 0
        self.requestor.implementation_class_uid = ui.implementation_class_uid
        self.requestor.implementation_version_name = ui.implementation_version_name
        self.requestor.user_identity = ui.user_identity_rq
        self.acceptor.ae_title = rq.called_ae_title
        notify(self, evt.EVT_REQUESTED, request=rq)
        server = self.server
        if server is None:  # pragma: no cover - only acceptors are requested
            raise RuntimeError("an A-ASSOCIATE indication on an association with no server")
        policy = server.config.policy
        response = None
        if ui.user_identity_rq is not None and evt.EVT_USER_ID in self.handlers:
            event_ = evt.Event(
                self,
                evt.EVT_USER_ID,
                user_id_type=ui.user_identity_rq.identity_type,
                primary_field=ui.user_identity_rq.primary_field,
                secondary_field=ui.user_identity_rq.secondary_field,
            )
            try:
                verified, response = call_intervention(self, evt.EVT_USER_ID, event_,
                                                       (False, None))
            except Exception:
                log.exception("handler for EVT_USER_ID failed")
                verified, response = False, None
            if not verified:
                self._reject(AAssociateRJ(result=1, source=1, reason=1))
                return
        answer, contexts = evaluate_request(rq, policy, user_identity_response=response)
        if isinstance(answer, AAssociateRJ):
            self._reject(answer)
            return
        self.acceptor.ae_title = policy.ae_title
        self.acceptor.maximum_length = policy.maximum_pdu_size
        self._set_contexts(contexts)
        self.conn.accept(answer, self.loop.time())
        self.is_established = True
        server.established_count += 1
        self._counted = True
        if not self._established.done():
            self._established.set_result(True)
        notify(self, evt.EVT_ACCEPTED, accept=answer)
        notify(self, evt.EVT_ESTABLISHED)

    def _on_request_sent(self, event: AssociationRequestSent) -> None:
        """Our A-ASSOCIATE-RQ is on the wire (requestor): record what it proposed for
        us and tell the handlers (EVT_REQUESTED, as the reference API does)."""
        rq = event.request
        ui = rq.user_information
        self.requestor.ae_title = rq.calling_ae_title
        self.requestor.maximum_length = ui.max_length or 0
        self.requestor.implementation_class_uid = ui.implementation_class_uid
        self.requestor.implementation_version_name = ui.implementation_version_name
        self.requestor.user_identity = ui.user_identity_rq
        notify(self, evt.EVT_REQUESTED, request=rq)

    def _reject(self, rj: AAssociateRJ) -> None:
        self.rejection = rj
        self.is_rejected = True
        log.info("%s: rejected: %s", self.peer_label(), rejection_description(rj))
        self.conn.reject(rj, self.loop.time())
        if not self._established.done():
            self._established.set_result(False)
        notify(self, evt.EVT_REJECTED, reject=rj)

    def _set_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        self.accepted_contexts = [cx for cx in contexts if cx.result == 0]
        self.rejected_contexts = [cx for cx in contexts if cx.result != 0]
        self._contexts_by_id = {cx.context_id: cx for cx in self.accepted_contexts}

    def _on_accepted(self, event: AssociationAccepted) -> None:
        ac = event.accept
        ui = ac.user_information
        self.acceptor.maximum_length = ui.max_length or 0
        self.acceptor.implementation_class_uid = ui.implementation_class_uid
        self.acceptor.implementation_version_name = ui.implementation_version_name
        try:
            contexts = negotiate_as_requestor(
                list(self.requested_contexts), ac.presentation_contexts, ui.role_selections
            )
        except Exception as exc:  # RemoteProtocolError: the AC contradicts our RQ
            log.warning("%s: invalid A-ASSOCIATE-AC: %s", self.peer_label(), exc)
            self.abort_local(f"invalid A-ASSOCIATE-AC: {exc}")
            if not self._established.done():
                self._established.set_result(False)
            return
        self._set_contexts(contexts)
        self.is_established = True
        if not self._established.done():
            self._established.set_result(True)
        notify(self, evt.EVT_ACCEPTED, accept=ac)
        notify(self, evt.EVT_ESTABLISHED)

    def _on_rejected(self, event: AssociationRejected) -> None:
        self.rejection = event.reject
        self.is_rejected = True
        if not self._established.done():
            self._established.set_result(False)
        notify(self, evt.EVT_REJECTED, reject=event.reject)

    def _mark_released(self) -> None:
        if not self.is_released and not self.is_aborted:
            self.is_released = True
            self.is_established = False
            notify(self, evt.EVT_RELEASED)
        if not self._released.done():
            self._released.set_result(True)

    def _mark_aborted(self) -> None:
        if self.is_aborted or self.is_released:
            return
        self.is_aborted = True
        self.is_established = False
        self.dispatcher.close()
        self.scu.fail_waiters()
        if not self._released.done():
            self._released.set_result(False)
        if not self._established.done():
            self._established.set_result(False)
        notify(self, evt.EVT_ABORTED)

    # -- DIMSE plumbing (used by the dispatcher and the service user) ---------------------

    def send_response(self, context_id: int, message: Any, dataset: bytes | None) -> None:
        """Send a response to the peer's request (nothing once the association ended)."""
        conn = self.link.conn
        if not conn.is_established:
            return
        try:
            conn.send_message(context_id, message, dataset, self.loop.time())
        except LocalProtocolError:
            return  # the association ended while we were busy; nothing to answer
        self.link.pump()

    def response_received(self, command: Any, dataset: bytes | None) -> None:
        self.scu.response_received(command, dataset)

    def abort_local(self, detail: str) -> None:
        """Abort because of something we decided (a timeout, an invalid AC, the user)."""
        if self.abort_info is None:
            self.abort_info = Aborted(ABORT_SOURCE_USER, 0, local=True, detail=detail)
        self.conn.abort(self.loop.time(), ABORT_SOURCE_USER, 0, close=True)
        self._mark_aborted()
        # After our A-ABORT the association no longer exists: do not wait for the peer.
        self.link.pump()
        self.link.close()

    # -- user requests --------------------------------------------------------------------

    async def wait_established(self) -> bool:
        """Wait for the outcome of the association request (bounded by the ACSE timeout,
        which the core runs)."""
        return await asyncio.shield(self._established)

    async def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); waits for the peer's answer (ACSE timeout)."""
        if not self.is_established:
            return
        async with self.scu.send_lock:
            try:
                self.conn.release(self.loop.time())
            except LocalProtocolError:
                return
            self.link.pump()
        await asyncio.shield(self._released)
        await self.wait_closed()

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3): the association ends at once."""
        if self.closed.done():
            return
        self.abort_local("aborted by the local user")

    async def wait_closed(self) -> None:
        """Wait until the transport connection is closed (bounded by the ACSE timeout)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), self.acse_timeout)
        except asyncio.TimeoutError:
            self.link.abort_transport()

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """C-ECHO (PS3.7 9.3.5); returns the response status as a Dataset.

        The Dataset is empty when no response came (aborted, timed out).
        """
        return await self.scu.send_c_echo(msg_id)

    async def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: bytes | str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """C-STORE (PS3.7 9.3.1) of a pydicom Dataset or a Part 10 file path (streamed
        without decoding); returns the response status as a Dataset (empty if none)."""
        return await self.scu.send_c_store(dataset, msg_id, priority, originator_aet,
                                           originator_id)

    async def send_c_store_raw(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes | memoryview,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> CStoreRSP | None:
        """C-STORE of a data set already encoded in ``transfer_syntax_uid`` (see
        :meth:`engine._scu.ServiceUser.send_c_store_raw`)."""
        return await self.scu.send_c_store_raw(sop_class_uid, sop_instance_uid,
                                               transfer_syntax_uid, dataset, msg_id, priority)

    # -- words ----------------------------------------------------------------------------

    def peer_label(self) -> str:
        peer = self.acceptor if self.is_requestor else self.requestor
        title = peer.ae_title.strip().decode("ascii", "replace") if peer.ae_title else "?"
        # The title is any 16 bytes the peer chose: no line breaks into our logs (CWE-117).
        title = "".join(c if c.isprintable() else "?" for c in title)
        return f"{title}@{peer.address}:{peer.port}"

    def __repr__(self) -> str:
        role = "requestor" if self.is_requestor else "acceptor"
        return f"<Association {role} {self.peer_label()} {self.conn.state.name}>"
