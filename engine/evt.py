"""Events a service user can bind handlers to, pynetdicom style.

Theory of operation: an event type is a named constant (``evt.EVT_C_STORE``) bound with
``(event, handler)`` or ``(event, handler, [args])`` pairs passed to ``associate`` or
``start_server``. *Notification* events may have many handlers and ignore their return
values; *intervention* events (``EVT_C_ECHO``, ``EVT_C_STORE``, ``EVT_USER_ID``) have one
handler whose return value is the answer (a status, or ``(verified, response)``). A
handler receives an :class:`Event`; for ``EVT_C_STORE`` it can take the decoded data set
(``event.dataset``, decoded only when asked for) or the raw bytes exactly as received
(``event.encoded_dataset()``). Handlers may be plain functions or coroutine functions.

This module only describes events; :mod:`engine.aio` fires them.
"""

from __future__ import annotations

import inspect
import time
from io import BytesIO
from typing import Any, Callable, NamedTuple, Sequence

__all__ = [
    "EventType",
    "Event",
    "EVT_C_ECHO",
    "EVT_C_STORE",
    "EVT_USER_ID",
    "EVT_CONN_OPEN",
    "EVT_CONN_CLOSE",
    "EVT_REQUESTED",
    "EVT_ACCEPTED",
    "EVT_REJECTED",
    "EVT_ESTABLISHED",
    "EVT_RELEASED",
    "EVT_ABORTED",
    "INTERVENTION_EVENTS",
    "NOTIFICATION_EVENTS",
    "HandlerSpec",
    "normalize_handlers",
]


class EventType(NamedTuple):
    """An event's name, description and whether its handler's answer is used."""

    name: str
    description: str
    is_intervention: bool

    def __str__(self) -> str:
        return self.name


EVT_C_ECHO = EventType("EVT_C_ECHO", "C-ECHO request received", True)
EVT_C_STORE = EventType("EVT_C_STORE", "C-STORE request received", True)
EVT_USER_ID = EventType("EVT_USER_ID", "User identity negotiation received", True)
EVT_CONN_OPEN = EventType("EVT_CONN_OPEN", "Connection with remote opened", False)
EVT_CONN_CLOSE = EventType("EVT_CONN_CLOSE", "Connection with remote closed", False)
EVT_REQUESTED = EventType("EVT_REQUESTED", "Association requested", False)
EVT_ACCEPTED = EventType("EVT_ACCEPTED", "Association request accepted", False)
EVT_REJECTED = EventType("EVT_REJECTED", "Association request rejected", False)
EVT_ESTABLISHED = EventType("EVT_ESTABLISHED", "Association established", False)
EVT_RELEASED = EventType("EVT_RELEASED", "Association released", False)
EVT_ABORTED = EventType("EVT_ABORTED", "Association aborted", False)

INTERVENTION_EVENTS = (EVT_C_ECHO, EVT_C_STORE, EVT_USER_ID)
NOTIFICATION_EVENTS = (
    EVT_CONN_OPEN,
    EVT_CONN_CLOSE,
    EVT_REQUESTED,
    EVT_ACCEPTED,
    EVT_REJECTED,
    EVT_ESTABLISHED,
    EVT_RELEASED,
    EVT_ABORTED,
)

#: A bound handler: (callable, extra positional arguments, is it a coroutine function).
HandlerSpec = tuple[Callable[..., Any], tuple, bool]


def normalize_handlers(
    evt_handlers: Sequence[tuple] | None,
) -> dict[EventType, list[HandlerSpec]]:
    """Validate ``[(event, handler[, args]), ...]`` into a lookup table.

    Raises ValueError for an unknown event or a second handler on an intervention event,
    TypeError for a handler that is not callable.
    """
    table: dict[EventType, list[HandlerSpec]] = {}
    for entry in evt_handlers or ():
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(
                f"event handlers are (event, handler) or (event, handler, args), got {entry!r}"
            )
        event, handler = entry[0], entry[1]
        args = tuple(entry[2]) if len(entry) == 3 else ()
        if not isinstance(event, EventType):
            raise ValueError(f"{event!r} is not an evt.EVT_* event")
        if not callable(handler):
            raise TypeError(f"the handler for {event.name} is not callable")
        specs = table.setdefault(event, [])
        if event.is_intervention:
            specs.clear()  # the last handler bound to an intervention event wins
        specs.append((handler, args, inspect.iscoroutinefunction(handler)))
    return table


class Event:
    """What a handler receives (pynetdicom's ``event.Event`` shape).

    Attributes: ``assoc`` (the association), ``event`` (the :class:`EventType`),
    ``timestamp`` (wall-clock time the event happened, for logs only) and, depending on
    the event, ``request`` (the DIMSE request), ``context`` (the presentation context
    of the message), ``address`` (peer address), ``user_identity`` ...
    """

    def __init__(self, assoc: Any, event: EventType, **attrs: Any) -> None:
        self.assoc = assoc
        self.event = event
        self.timestamp = time.time()
        self._raw: bytes | None = attrs.pop("raw", None)
        self._dataset: Any = None
        for key, value in attrs.items():
            setattr(self, key, value)

    # -- C-STORE data set access ----------------------------------------------------------

    def encoded_dataset(self, include_meta: bool = False) -> bytes:
        """The data set bytes exactly as received, optionally as a Part 10 file."""
        if self._raw is None:
            raise AttributeError(f"{self.event.name} carries no data set")
        if not include_meta:
            return self._raw
        from pydicom.filewriter import write_file_meta_info

        buf = BytesIO()
        buf.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buf, self.file_meta, enforce_standard=True)
        return buf.getvalue() + self._raw

    @property
    def dataset(self) -> Any:
        """The received data set, decoded with pydicom on first access."""
        if self._dataset is None:
            if self._raw is None:
                raise AttributeError(f"{self.event.name} carries no data set")
            from .dataset import decode_dataset

            self._dataset = decode_dataset(self._raw, str(self.context.transfer_syntax[0]))
        return self._dataset

    @property
    def file_meta(self) -> Any:
        """A File Meta Information group for the received data set (PS3.10 7.1)."""
        from ._config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
        from .dataset import build_file_meta

        request = self.request
        # An engine.aio server need not have an ApplicationEntity: use scpfleet's own.
        ae = self.assoc.ae
        return build_file_meta(
            sop_class_uid=request.AffectedSOPClassUID,
            sop_instance_uid=request.AffectedSOPInstanceUID,
            transfer_syntax_uid=str(self.context.transfer_syntax[0]),
            implementation_class_uid=(
                ae.implementation_class_uid if ae is not None else IMPLEMENTATION_CLASS_UID
            ),
            implementation_version_name=(
                ae.implementation_version_name if ae is not None
                else IMPLEMENTATION_VERSION_NAME
            ),
            source_ae_title=self.assoc.requestor.ae_title,
        )

    @property
    def message_id(self) -> int:
        return self.request.MessageID

    def __repr__(self) -> str:
        return f"<Event {self.event.name}>"
