"""The asyncio transport adapter: bytes, timers and flow control for one connection.

Theory of operation: a :class:`Link` joins one asyncio transport to one sans-IO
:class:`~engine._connection.Connection`. Received bytes go to
``Connection.receive_data`` and then the link *pumps*: it writes what the core produced
with ``transport.writelines``, hands the core's events to its owner (the association),
closes the transport when the core asks, and keeps one loop timer armed at the core's
:meth:`~engine._connection.Connection.next_deadline`. It never decides anything about
the protocol; it does not ask the state table what state it is in.

Reading is paused in one place, :meth:`Link.hold`, from a set of reasons: the owner is
awaiting an answer that holds reading (:data:`HOLD_BUSY`), a request waits behind the
one being served (:data:`HOLD_BACKLOG`), or the peer does not read what we send
(:data:`HOLD_WRITE`, acceptors only: a peer that sends requests but never reads our
answers must not make us queue them without bound). ``pause_reading`` and
``resume_reading`` are called only when the union of reasons changes.

No threads, no polling: everything runs on the loop that owns the transport.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from ._connection import Connection

__all__ = ["Link", "LinkOwner", "ULProtocol", "HOLD_BUSY", "HOLD_BACKLOG", "HOLD_WRITE"]

HOLD_BUSY = 1
HOLD_BACKLOG = 2
HOLD_WRITE = 4

#: How long a closing transport may take to flush when no ARTIM time is configured.
_CLOSE_GRACE_S = 30.0


class LinkOwner(Protocol):
    """What a :class:`Link` reports to (the association)."""

    def link_made(self, transport: asyncio.Transport) -> bool:
        """The transport is up; False refuses it (the link aborts the transport)."""

    def link_events(self, events: list[Any]) -> None:
        """Events the core produced, in order."""

    def link_lost(self) -> None:
        """The transport connection is gone."""


class ULProtocol(asyncio.Protocol):
    """The asyncio protocol of a DICOM connection: forwards everything to its link.

    ``data_received`` is the link's own bound method, set per instance, so a received
    chunk costs no extra Python frame.
    """

    __slots__ = ("link", "data_received")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.data_received = link.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - a socket closed under us
                pass
        self.link.made(transport)  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        return False  # a half-closed DICOM connection is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost()

    def pause_writing(self) -> None:
        self.link.writing_paused()

    def resume_writing(self) -> None:
        self.link.writing_resumed()


class Link:
    """One connection's transport, pump, timer and read flow control."""

    __slots__ = ("loop", "conn", "owner", "transport", "close_grace", "hold_on_write",
                 "closed", "_timer", "_timer_at", "_holds", "_paused", "_write_waiter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: Connection,
        owner: LinkOwner,
        *,
        close_grace: float | None,
        hold_on_write: bool,
    ) -> None:
        self.loop = loop
        self.conn = conn
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.close_grace = close_grace if close_grace is not None else _CLOSE_GRACE_S
        #: Stop reading while the peer does not read our output (acceptors).
        self.hold_on_write = hold_on_write
        self.closed: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._holds = 0
        self._paused = False
        self._write_waiter: asyncio.Future[None] | None = None

    # -- transport callbacks ----------------------------------------------------------

    def made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if not self.owner.link_made(transport):
            transport.abort()
            return
        self.conn.connection_made(self.loop.time())
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data, self.loop.time())
        self.pump()

    def lost(self) -> None:
        self.conn.connection_lost(self.loop.time())
        self.pump()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.owner.link_lost()
        if not self.closed.done():
            self.closed.set_result(None)

    def writing_paused(self) -> None:
        if self._write_waiter is None:
            self._write_waiter = self.loop.create_future()
        if self.hold_on_write:
            self.hold(HOLD_WRITE, True)

    def writing_resumed(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.hold_on_write:
            self.hold(HOLD_WRITE, False)

    # -- the pump ---------------------------------------------------------------------

    def pump(self) -> None:
        """Write what the core produced, hand its events over, close if asked, re-arm."""
        conn = self.conn
        transport = self.transport
        while True:
            out = conn.data_to_send()
            if out and transport is not None and not transport.is_closing():
                transport.writelines(out)
            events = conn.events()
            if not events:
                break
            self.owner.link_events(events)
        if conn.wants_close:
            self.close()
        self.arm_timer()

    # -- flow control -----------------------------------------------------------------

    def hold(self, reason: int, on: bool) -> None:
        """Add or remove a reason to pause reading; the transport is told on changes."""
        holds = self._holds | reason if on else self._holds & ~reason
        self._holds = holds
        paused = bool(holds)
        if paused is self._paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self._paused = paused
            return
        try:
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
        except (RuntimeError, AttributeError):  # closing, or not a reading transport
            return
        self._paused = paused

    @property
    def write_blocked(self) -> bool:
        """Whether the transport's buffer is above its high-water mark."""
        return self._write_waiter is not None

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark (or it closed)."""
        waiter = self._write_waiter
        if waiter is not None:
            await waiter

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the transport, flushing what is buffered; a peer that does not take it
        within the grace time (the ARTIM time) is dropped: it must not hold the
        connection, and the association slot counted until it closes, for as long as it
        declines to read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        self.loop.call_later(self.close_grace, self._drop, transport)

    def abort_transport(self) -> None:
        """Close the transport at once, discarding what is buffered."""
        if self.transport is not None:
            self.transport.abort()

    def _drop(self, transport: asyncio.Transport) -> None:
        if not self.closed.done():
            transport.abort()

    # -- timers -----------------------------------------------------------------------

    def arm_timer(self) -> None:
        """Keep one loop timer at or before the core's next deadline.

        Every received chunk moves the idle deadline later; a timer already armed for an
        earlier moment is kept (when it fires, :meth:`_on_timer` re-checks and re-arms),
        so the hot path does not cancel and create a timer per chunk.
        """
        deadline = self.conn.next_deadline()
        armed = self._timer_at
        if armed is not None and (deadline is None or armed <= deadline):
            return
        if self.closed.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.conn.handle_timer(self.loop.time())
        self.pump()
