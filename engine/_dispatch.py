"""DIMSE dispatch: the requests an association receives, served by registered providers.

Theory of operation: the association hands the :class:`Dispatcher` every
:class:`~engine._dimse.CommandReceived` and :class:`~engine._dimse.DatasetFragment`
the core assembled. Responses to our own requests go back to the association's waiters
and a C-CANCEL-RQ marks the request it names; a request is served as
:mod:`engine.services` describes: context and SOP class checks, the provider found in
the :class:`~engine.services.ServiceRegistry` (or 0211H), the operation fed fragment by
fragment, its answer awaited (reading held while it holds reading) and turned into the
final response.

One request is served at a time. What arrives meanwhile -- a second request and its
data set, or an association event that must wait for our answers (an A-RELEASE
indication) -- is kept in order in a backlog, reading paused, and replayed as soon as
the request in progress is answered.

The common case costs no task: an operation whose ``finish`` returns its answer
directly (a store published without syncing, a C-ECHO) is answered inline in the same
call that delivered its last fragment.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from . import status as _status
from ._dimse import (
    C_CANCEL_RQ,
    C_STORE_RQ,
    COMMAND_NAMES,
    DATASET_PRESENT,
    MESSAGE_TYPES,
    CommandReceived,
    CStoreRSP,
    DatasetFragment,
    response_for,
)
from ._errors import LocalProtocolError
from ._transport import HOLD_BACKLOG, HOLD_BUSY
from .services import Reply, Request, ServiceRegistry, reply_of

if TYPE_CHECKING:  # pragma: no cover
    from .aio import Association

__all__ = ["Dispatcher"]

log = logging.getLogger("scpfleet.engine")


class _Discard:
    """Reads a refused request's data set to its end and forgets it."""

    __slots__ = ("answer",)
    holds_reading = False

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def write(self, data: memoryview) -> None:
        pass

    def finish(self) -> Any:
        return self.answer

    def abort(self) -> None:
        pass


#: A response's data set (a C-FIND match, a list of failed instances) is a few KiB; it is
#: held in memory until complete, so a peer sending more is cut off here.
_MAX_RESPONSE_DATASET = 16 << 20


def _command_name(command: Any) -> str:
    return COMMAND_NAMES.get(command.command_field, f"command 0x{command.command_field:04X}")


def _request_sop_class(command: Any) -> str | None:
    """The SOP class a request acts on: Affected SOP Class UID (C-services, N-EVENT-REPORT)
    or Requested SOP Class UID (N-ACTION and the other N-services)."""
    uid = getattr(command, "affected_sop_class_uid", None)
    if uid is None:
        uid = getattr(command, "requested_sop_class_uid", None)
    return uid


class Dispatcher:
    """Serves the DIMSE requests of one association (see the module docstring)."""

    __slots__ = ("assoc", "registry", "_request", "_op", "_busy", "_backlog", "_draining",
                 "_response", "_response_parts", "_response_size")

    def __init__(self, assoc: Association, registry: ServiceRegistry) -> None:
        self.assoc = assoc
        self.registry = registry
        self._request: Request | None = None
        self._op: Any = None
        self._busy = False
        self._backlog: collections.deque[Any] = collections.deque()
        self._draining = False
        # A response to our own request whose data set is arriving (C-FIND matches,
        # a C-GET's failed list): its fragments are collected for the service user.
        self._response: Any = None
        self._response_parts: list[memoryview] = []
        self._response_size = 0

    @property
    def idle(self) -> bool:
        """No request in progress and none waiting."""
        return self._request is None and not self._backlog

    @property
    def in_store(self) -> bool:
        """A request is being received or served (for draining servers)."""
        return self._request is not None

    # -- events from the association -----------------------------------------------------

    def command(self, event: CommandReceived) -> None:
        command = event.command
        field = command.command_field
        if field & 0x8000:
            if command.has_dataset:
                self._response = command
            else:
                self.assoc.response_received(command, None)
            return
        if field == C_CANCEL_RQ:
            request = self._request
            if request is not None and request.command.message_id == (
                command.message_id_being_responded_to
            ):
                request.cancelled = True
            return  # PS3.7 9.3.2.3: a C-CANCEL for nothing in progress is ignored
        if self._request is not None or self._backlog:
            self._wait(event)
            return
        self._start(event.context_id, command)

    def fragment(self, event: DatasetFragment) -> None:
        if self._response is not None:
            self._response_fragment(event)
            return
        if self._backlog:
            self._backlog.append(event)
            return
        self._fragment(event)

    def _response_fragment(self, event: DatasetFragment) -> None:
        # The framer's views point into immutable bytes: keeping them is safe.
        self._response_parts.append(event.data)
        self._response_size += len(event.data)
        if self._response_size > _MAX_RESPONSE_DATASET:
            self._response_parts = []
            self.assoc.abort_local("a response's data set exceeds "
                                   f"{_MAX_RESPONSE_DATASET >> 20} MiB")
            return
        if event.is_last:
            command, self._response = self._response, None
            data = b"".join(self._response_parts)
            self._response_parts = []
            self._response_size = 0
            self.assoc.response_received(command, data)

    def when_idle(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` now if nothing is in progress, else after it (in order)."""
        if self._request is None and not self._backlog:
            callback()
        else:
            self._wait(callback)

    def close(self) -> None:
        """The association is gone: abort the operation still receiving its data set,
        forget the rest (an operation already finishing completes on its own)."""
        op, self._op = self._op, None
        self._request = None
        self._backlog.clear()
        if op is not None:
            try:
                op.abort()
            except Exception:  # pragma: no cover - abort must not mask the real error
                log.exception("operation abort failed")

    # -- serving ----------------------------------------------------------------------

    def _wait(self, item: Any) -> None:
        self._backlog.append(item)
        self.assoc.link.hold(HOLD_BACKLOG, True)

    def _start(self, context_id: int, command: Any) -> None:
        assoc = self.assoc
        if not assoc.conn.is_established:
            # The association ended (we aborted on an earlier message of the same read):
            # a message decoded before that must not be served or stored.
            return
        context = assoc.context(context_id)
        if context is None:
            assoc.abort_local(
                f"{_command_name(command)} on presentation context {context_id} not accepted"
            )
            return
        request = Request(assoc, context, command, self)
        self._request = request
        field = command.command_field
        if field == C_STORE_RQ and not command.has_dataset:
            # PS3.7 Table 9.3-1: a C-STORE-RQ always carries a data set. Answer at once:
            # no data will come to finish an operation, so none may be opened.
            self._op = _Discard((_status.ERROR_CANNOT_UNDERSTAND, "C-STORE-RQ without a data set"))
            self._finish()
            return
        sop_class = _request_sop_class(command)
        abstract_syntax = str(context.abstract_syntax)
        if sop_class is not None and sop_class != abstract_syntax:
            # PS3.4 B.2.3 (and the same rule for every service): the SOP class is not
            # the one negotiated for this presentation context.
            op: Any = _Discard((_status.REFUSED_SOP_CLASS_NOT_SUPPORTED,
                                "SOP class differs from the presentation context's abstract syntax"))
        else:
            provider = self.registry.lookup(field, abstract_syntax)
            if provider is None:
                if _response_for(command, Reply(_status.UNRECOGNIZED_OPERATION)) is None:
                    # A request that cannot even be answered (no Message ID).
                    log.warning("%s: unanswerable DIMSE request %r", assoc.peer_label(), command)
                    assoc.abort_local("unanswerable DIMSE request")
                    self._request = None
                    return
                op = _Discard((_status.UNRECOGNIZED_OPERATION,
                               f"{_command_name(command)} is not served here"))
            else:
                try:
                    op = provider.start(request)
                except Exception as exc:  # a provider that cannot start is out of resources
                    log.exception("%s: cannot serve %s", assoc.peer_label(), _command_name(command))
                    op = _Discard((_status.REFUSED_OUT_OF_RESOURCES, f"cannot serve: {exc}"))
                if not hasattr(op, "finish"):
                    op = _Discard(op)
        self._op = op
        if not command.has_dataset:
            self._finish()

    def _fragment(self, event: DatasetFragment) -> None:
        op = self._op
        if op is None:  # the assembler guarantees a command came first
            return
        try:
            op.write(event.data)
        except Exception as exc:
            log.exception("%s: writing a data set failed", self.assoc.peer_label())
            op.abort()
            op = self._op = _Discard((_status.REFUSED_OUT_OF_RESOURCES, f"cannot store: {exc}"))
        if event.is_last:
            self._finish()

    def _finish(self) -> None:
        # From here the operation owns its fate: an association lost while its answer
        # is awaited must not abort it (a store may be renaming its file right now);
        # its answer is then dropped.
        op = self._op
        self._op = None
        try:
            answer = op.finish()
        except Exception as exc:  # a provider's bug must not kill the association
            log.exception("%s: operation failed", self.assoc.peer_label())
            answer = (_status.ERROR_CANNOT_UNDERSTAND, f"handler failed: {exc}")
        if type(answer) is int or isinstance(answer, (tuple, Reply)):
            self._answer(answer)
            return
        if not inspect.isawaitable(answer):
            self._answer(answer)
            return
        if op.holds_reading:
            self._busy = True
            self.assoc.link.hold(HOLD_BUSY, True)
        future = asyncio.ensure_future(answer, loop=self.assoc.loop)
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():  # the loop shutting down under a slow operation
            answer: Any = (_status.ERROR_CANNOT_UNDERSTAND, "cancelled")
        else:
            exc = future.exception()
            if exc is None:
                answer = future.result()
            else:
                log.error("%s: operation failed", self.assoc.peer_label(), exc_info=exc)
                answer = (_status.ERROR_CANNOT_UNDERSTAND, f"handler failed: {exc}")
        if self._busy:
            self._busy = False
            self.assoc.link.hold(HOLD_BUSY, False)
        self._answer(answer)

    def _answer(self, answer: Any) -> None:
        request = self._request
        self._op = None
        self._request = None
        if request is None:  # the association ended while the answer was awaited
            return
        reply = reply_of(answer)
        rsp = _response_for(request.command, reply)
        if rsp is not None:
            self.assoc.send_response(request.context_id, rsp, reply.dataset)
        after = request._after
        if after:
            for callback in after:
                try:
                    callback()
                except Exception:
                    log.exception("%s: after-response callback failed", self.assoc.peer_label())
        if self._backlog and not self._draining:
            self._drain()

    def _drain(self) -> None:
        """Replay the backlog in order until a request is in progress again. A fragment
        at its head always belongs to the request being received."""
        self._draining = True
        backlog = self._backlog
        try:
            while backlog:
                head = backlog[0]
                kind = type(head)
                if kind is DatasetFragment:
                    backlog.popleft()
                    self._fragment(head)
                    continue
                if self._request is not None:
                    break
                backlog.popleft()
                if kind is CommandReceived:
                    self._start(head.context_id, head.command)
                else:
                    head()
        finally:
            self._draining = False
        if not backlog:
            self.assoc.link.hold(HOLD_BACKLOG, False)

    async def send_pending(self, request: Request, status: int, dataset: bytes | None,
                           fields: dict[str, Any]) -> None:
        rsp = _response_for(request.command, Reply(status, None, dataset, fields))
        if rsp is None:
            raise ValueError(f"{_command_name(request.command)} has no pending responses")
        assoc = self.assoc
        assoc.send_response(request.context_id, rsp, dataset)
        if assoc.link.write_blocked:
            await assoc.link.drain()


def _response_for(command: Any, reply: Reply) -> Any:
    """The response message answering ``command`` with ``reply`` (None: it has none).

    C-STORE, the request a storage node answers thousands of times a second, is built
    directly; everything else goes through the codec's table-driven
    :func:`~engine._dimse.response_for`.
    """
    if command.command_field == C_STORE_RQ and reply.fields is None:
        return CStoreRSP(
            message_id_being_responded_to=command.message_id,
            status=reply.status,
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid,
            error_comment=reply.comment,
        )
    fields = dict(reply.fields) if reply.fields else {}
    if reply.comment is not None:
        response_type = MESSAGE_TYPES.get(command.command_field | 0x8000)
        if response_type is None or "error_comment" in response_type.__struct_fields__:
            fields.setdefault("error_comment", reply.comment)
    if reply.dataset is not None:
        fields["command_data_set_type"] = DATASET_PRESENT
    try:
        return response_for(command, reply.status, **fields)
    except LocalProtocolError:
        return None  # C-CANCEL-RQ, or a request without a Message ID
