"""DIMSE service providers: the one seam between the engine and the services above it.

Theory of operation: the engine moves bytes and runs the protocol; it does not decide
what a C-STORE, a C-FIND or an N-ACTION *means*. That is a **service provider**'s job,
reached through a :class:`ServiceRegistry` keyed by DIMSE command (and SOP class where
it matters). For every request the peer sends, the association's dispatcher:

1. checks the presentation context (not accepted: A-ABORT) and that the request's SOP
   class is the context's abstract syntax (PS3.4 B.2.3 and its kin: 0122H otherwise);
2. looks up the provider; none: the data set, if any, is read and dropped and the
   request is answered 0211H *Unrecognized operation* (PS3.7 C.5.x);
3. calls :meth:`ServiceProvider.start` with a :class:`Request`; the provider returns an
   :class:`Operation` or, to refuse at once, an answer (below);
4. gives the operation each fragment of the request's data set (``write``, a
   memoryview straight from the framer, valid as long as the operation keeps it), then
   calls ``finish``, which returns the answer -- or an awaitable of it. While that is
   awaited, reading from the peer is paused when ``Operation.holds_reading`` says so
   (backpressure for streamed data); operations that talk back on the association
   (C-GET sub-operations) leave reading on;
5. sends the final response built from the answer, then runs the request's
   :meth:`Request.after_response` callbacks.

An *answer* is a status ``int``, a ``(status, error comment)`` tuple or a
:class:`Reply` (status, comment, data set, extra command fields). An operation may send
pending responses before its answer with :meth:`Request.send_pending`, and sees a
C-CANCEL-RQ as :attr:`Request.cancelled`. A provider can issue requests of its own on
the association (``request.association.send_c_store(...)``, ...), in either role.

Only one request is served at a time (PS3.7 D.3.3.3: the default asynchronous operations
window is 1): a second one arriving meanwhile waits, and reading pauses until it can be
served. Responses to our own requests and C-CANCEL-RQs are handled at once.

This module only defines the seam; :mod:`engine._dispatch` drives it and
:mod:`engine._handlers` implements the pynetdicom-style ``evt`` handlers on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from . import status as _status

if TYPE_CHECKING:  # pragma: no cover
    from .aio import Association
    from .presentation import PresentationContext

__all__ = [
    "Answer",
    "Operation",
    "Reply",
    "Request",
    "ServiceProvider",
    "ServiceRegistry",
    "reply_of",
    "ERROR_COMMENT_MAX",
]

#: Error Comment (0000,0902) is LO: at most 64 characters (PS3.5 6.2, PS3.7 C.4).
ERROR_COMMENT_MAX = 64


class Reply:
    """A final (or pending) response's content: status, Error Comment, an optional data
    set (an identifier, an event information ...) already encoded in the context's
    transfer syntax, and further command fields by name (e.g. the sub-operation counts
    ``number_of_completed_suboperations``)."""

    __slots__ = ("status", "comment", "dataset", "fields")

    def __init__(
        self,
        status: int,
        comment: str | None = None,
        dataset: bytes | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.comment = comment
        self.dataset = dataset
        self.fields = fields

    def __repr__(self) -> str:
        return f"Reply(0x{self.status:04X}, {self.comment!r})"


#: What an operation answers with.
Answer: TypeAlias = "int | tuple[int, str | None] | Reply"


def reply_of(answer: Any) -> Reply:
    """Any answer (int, (int, comment), :class:`Reply`, or a pydicom status Dataset) as a
    :class:`Reply`. Never raises: a value that is not a US status becomes 0xC000, and a
    comment is made printable ASCII and cut to the 64 characters of an LO."""
    try:
        if type(answer) is int:
            return Reply(answer) if 0 <= answer <= 0xFFFF else _OUT_OF_RANGE
        if isinstance(answer, Reply):
            code, comment = answer.status, answer.comment
            reply = answer
        elif isinstance(answer, tuple):
            code, comment = answer[0], answer[1] if len(answer) > 1 else None
            reply = None
        elif hasattr(answer, "Status"):  # a pydicom Dataset, pynetdicom style
            code, comment = answer.Status, getattr(answer, "ErrorComment", None)
            reply = None
        else:
            code, comment, reply = answer, None, None
        if isinstance(code, bool):
            raise TypeError("a status is not a bool")
        code = int(code)
    except (TypeError, ValueError, AttributeError, IndexError):
        return Reply(_status.ERROR_CANNOT_UNDERSTAND, f"invalid answer {type(answer).__name__}")
    if not 0 <= code <= 0xFFFF:
        return _OUT_OF_RANGE
    if comment is not None:
        text = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(comment))
        comment = text[:ERROR_COMMENT_MAX] or None
    if reply is not None and reply.status == code and reply.comment == comment:
        return reply
    return Reply(code, comment, reply.dataset if reply else None, reply.fields if reply else None)


_OUT_OF_RANGE = Reply(_status.ERROR_CANNOT_UNDERSTAND, "status outside 0..0xFFFF")


class Request:
    """One DIMSE request received on an association, as a provider sees it.

    ``command`` is the decoded command set (a :mod:`engine._dimse` message struct);
    ``context`` the accepted presentation context it came on, ``transfer_syntax`` that
    context's transfer syntax (the encoding of its data set). ``cancelled`` turns True
    when the peer sends a C-CANCEL-RQ for it (PS3.7 9.3.2.3).
    """

    __slots__ = ("association", "context", "context_id", "command", "transfer_syntax",
                 "cancelled", "_after", "_dispatcher")

    def __init__(
        self,
        association: Association,
        context: PresentationContext,
        command: Any,
        dispatcher: Any,
    ) -> None:
        self.association = association
        self.context = context
        self.context_id: int = context.context_id  # type: ignore[assignment]
        self.command = command
        self.transfer_syntax = str(context.transfer_syntax[0])
        self.cancelled = False
        self._after: list[Callable[[], Any]] | None = None
        self._dispatcher = dispatcher

    @property
    def message_id(self) -> int:
        return self.command.message_id

    @property
    def abstract_syntax(self) -> str:
        return str(self.context.abstract_syntax)

    def after_response(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` on the loop once the final response has been sent (e.g.
        to start an N-EVENT-REPORT that must follow the N-ACTION-RSP)."""
        if self._after is None:
            self._after = []
        self._after.append(callback)

    async def send_pending(
        self,
        status: int = _status.PENDING,
        dataset: bytes | None = None,
        **fields: Any,
    ) -> None:
        """Send a pending response (PS3.7 9.1.2.1.6) with an optional data set (a C-FIND
        match) and command fields; waits while the peer is slow to read."""
        await self._dispatcher.send_pending(self, status, dataset, fields)

    def __repr__(self) -> str:
        return f"<Request {type(self.command).__name__} msg={self.command.message_id}>"


@runtime_checkable
class Operation(Protocol):
    """One request being served: receives its data set, then produces the answer."""

    #: Pause reading from the peer while ``finish`` is awaited (streamed data sets:
    #: the peer waits for our answer anyway, and TCP carries the backpressure).
    holds_reading: bool

    def write(self, data: memoryview) -> None:
        """The next fragment of the request's data set."""

    def finish(self) -> Answer | Awaitable[Answer]:
        """The data set is complete (or there was none): the answer, or an awaitable."""

    def abort(self) -> None:
        """The request will never complete (association gone): drop everything."""


@runtime_checkable
class ServiceProvider(Protocol):
    """A DIMSE service provider (an SCP of one or more SOP classes)."""

    def start(self, request: Request) -> Operation | Answer:
        """A request arrived: an :class:`Operation` to serve it, or an answer to refuse
        it at once (its data set is then read and dropped)."""


class ServiceRegistry:
    """Providers by DIMSE Command Field (PS3.7 Annex E) and SOP class.

    ``add(provider, commands, sop_classes)`` registers a provider for those request
    command fields, for the listed SOP classes or, with ``sop_classes=None``, for any.
    A provider registered for a SOP class wins over one registered for any.
    """

    __slots__ = ("_exact", "_any")

    def __init__(self) -> None:
        self._exact: dict[tuple[int, str], ServiceProvider] = {}
        self._any: dict[int, ServiceProvider] = {}

    def add(
        self,
        provider: ServiceProvider,
        commands: Iterable[int],
        sop_classes: Iterable[str] | None = None,
    ) -> ServiceRegistry:
        if not callable(getattr(provider, "start", None)):
            raise TypeError(f"{provider!r} has no start(request) method")
        commands = list(commands)
        for field in commands:
            if isinstance(field, bool) or not isinstance(field, int) or field & 0x8000:
                raise ValueError(f"{field!r} is not a request Command Field")
        if sop_classes is None:
            for field in commands:
                self._any[field] = provider
        else:
            for uid in sop_classes:
                for field in commands:
                    self._exact[(field, str(uid))] = provider
        return self

    def lookup(self, command_field: int, sop_class: str) -> ServiceProvider | None:
        """The provider for a request, or None (answer 0211H)."""
        provider = self._exact.get((command_field, sop_class))
        if provider is None:
            provider = self._any.get(command_field)
        return provider

    def commands(self) -> set[int]:
        """Every command field some provider serves."""
        return {field for field, _ in self._exact} | set(self._any)

    def __bool__(self) -> bool:
        return bool(self._exact or self._any)
