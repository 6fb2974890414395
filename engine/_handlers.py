"""pynetdicom-style ``evt`` handlers, on the engine's service-provider seam.

Theory of operation: scripts ported from pynetdicom bind handlers (``evt.EVT_C_ECHO``,
``evt.EVT_C_STORE``, notifications such as ``evt.EVT_ESTABLISHED``) to ``associate`` or
``start_server``. Notifications are fired by :func:`notify`. Intervention events are
services like any other: :func:`handler_registry` builds a
:class:`~engine.services.ServiceRegistry` whose providers call the bound handler --
:class:`EchoHandler` (no handler: Success, as pynetdicom answers) and
:class:`StoreHandler`, which collects the data set in memory and hands it to the
``EVT_C_STORE`` handler (no handler: the store is refused rather than acknowledged and
dropped). Handlers may be plain functions or coroutine functions; a plain one that
answers at once costs no task.

Servers that stream data sets to disk (the storage node) register their own providers
instead; nothing here is on their path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import evt, status as _status
from ._dimse import C_ECHO_RQ, C_STORE_RQ, CStoreRQ
from .services import ServiceRegistry

if TYPE_CHECKING:  # pragma: no cover
    from .services import Request

__all__ = [
    "EchoHandler",
    "StoreHandler",
    "StoreRequest",
    "handler_registry",
    "notify",
    "call_intervention",
]

log = logging.getLogger("scpfleet.engine")


def notify(assoc: Any, event_type: evt.EventType, **attrs: Any) -> None:
    """Fire a notification event: every bound handler runs; answers are ignored, and a
    handler's exception is logged, never raised into the protocol."""
    specs = assoc.handlers.get(event_type)
    if not specs:
        return
    event = evt.Event(assoc, event_type, **attrs)
    for handler, args, is_coro in specs:
        try:
            result = handler(event, *args)
            if is_coro:
                assoc.loop.create_task(result)
        except Exception:
            log.exception("handler for %s failed", event_type.name)


def call_intervention(assoc: Any, event_type: evt.EventType, event: evt.Event,
                      default: Any) -> Any:
    """Call the intervention handler bound to ``event_type`` and return its answer (or
    an awaitable of it, for a coroutine handler); ``default`` when none is bound."""
    specs = assoc.handlers.get(event_type)
    if not specs:
        return default
    handler, args, _is_coro = specs[0]
    return handler(event, *args)


class StoreRequest:
    """A received C-STORE-RQ, with pynetdicom-style attribute names for handlers."""

    __slots__ = ("command", "context_id", "transfer_syntax")

    def __init__(self, command: CStoreRQ, context_id: int, transfer_syntax: str) -> None:
        self.command = command
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax

    MessageID = property(lambda self: self.command.message_id)
    AffectedSOPClassUID = property(lambda self: self.command.affected_sop_class_uid)
    AffectedSOPInstanceUID = property(lambda self: self.command.affected_sop_instance_uid)
    Priority = property(lambda self: self.command.priority)
    MoveOriginatorApplicationEntityTitle = property(
        lambda self: self.command.move_originator_application_entity_title
    )
    MoveOriginatorMessageID = property(lambda self: self.command.move_originator_message_id)

    def __repr__(self) -> str:
        return (
            f"StoreRequest(msg={self.command.message_id}, "
            f"sop={self.command.affected_sop_instance_uid})"
        )


class _Answered:
    """An operation whose answer is already known (no data set expected)."""

    __slots__ = ("answer",)
    holds_reading = True

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def write(self, data: memoryview) -> None:  # pragma: no cover - no data set follows
        pass

    def finish(self) -> Any:
        return self.answer

    def abort(self) -> None:
        pass


class EchoHandler:
    """Verification SCP (PS3.4 Annex A) answering with the ``EVT_C_ECHO`` handler."""

    __slots__ = ()

    def start(self, request: Request) -> Any:
        assoc = request.association
        if evt.EVT_C_ECHO not in assoc.handlers:
            return _status.SUCCESS
        event = evt.Event(assoc, evt.EVT_C_ECHO, request=request.command,
                          context=request.context)
        return _Answered(call_intervention(assoc, evt.EVT_C_ECHO, event, _status.SUCCESS))


#: The answer when nobody handles C-STORE: refuse rather than acknowledge and drop.
_NO_STORE_HANDLER = (_status.ERROR_CANNOT_UNDERSTAND, "no C-STORE handler is bound")


class _BufferedStore:
    """Collects a data set in memory, then calls the ``EVT_C_STORE`` handler."""

    __slots__ = ("request", "parts")
    holds_reading = True

    def __init__(self, request: Request) -> None:
        self.request = request
        self.parts: list[memoryview] = []

    def write(self, data: memoryview) -> None:
        # The framer's views point into immutable bytes: keeping them is safe.
        self.parts.append(data)

    def finish(self) -> Any:
        raw = b"".join(self.parts)
        self.parts = []
        request = self.request
        assoc = request.association
        store_request = StoreRequest(request.command, request.context_id,
                                     request.transfer_syntax)
        event = evt.Event(assoc, evt.EVT_C_STORE, request=store_request,
                          context=request.context, raw=raw)
        return call_intervention(assoc, evt.EVT_C_STORE, event, _NO_STORE_HANDLER)

    def abort(self) -> None:
        self.parts = []


class StoreHandler:
    """Storage SCP (PS3.4 Annex B) answering with the ``EVT_C_STORE`` handler."""

    __slots__ = ()

    def start(self, request: Request) -> Any:
        return _BufferedStore(request)


def handler_registry() -> ServiceRegistry:
    """The services of a pynetdicom-style server: C-ECHO and C-STORE through handlers."""
    registry = ServiceRegistry()
    registry.add(EchoHandler(), [C_ECHO_RQ])
    registry.add(StoreHandler(), [C_STORE_RQ])
    return registry
