"""``DULServiceProvider``: pynetdicom's DUL object, mapped onto the event-loop design.

Theory of operation: in pynetdicom the DUL is a thread per association that polls a
socket, runs the state machine and passes primitives through ``queue.Queue`` objects.
scpfleet has no such thread: the state machine is the sans-IO
:class:`~engine._fsm.DULStateMachine` inside each association's
:class:`~engine._connection.Connection`, driven by the asyncio protocol whenever bytes
arrive. This class keeps the documented surface for code that inspects or drives the
DUL, and says what each method means here:

=====================  ===============================================================
``state_machine``      the association's :class:`DULStateMachine`; ``.current_state``
                       is its state's name (``"Sta6"``).
``artim_timer``        a read-only view of the ARTIM timer: ``timeout``,
                       ``is_running``, ``remaining``, ``expired``.
``send_pdu(pdu)``      performs the user primitive a PDU stands for: ``AReleaseRQ``
                       -> A-RELEASE request, ``AAbort`` -> A-ABORT request, a
                       ``PDataTF`` -> P-DATA request. Runs on the loop thread.
``receive_pdu()``      the next association-level indication the DUL gave its user
                       (requested/accepted/rejected/released/aborted events);
                       P-DATA indications are consumed by DIMSE and never queued.
``peek_next_pdu()``    the same without removing it.
``idle_timer_expired`` whether the network (idle) timeout has passed since the last
                       bytes were received.
``stop_dul()``         True (and nothing to stop) once the machine is in Sta1.
``kill_dul()``         closes the transport at once, without an A-ABORT.
=====================  ===============================================================
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

from ._fsm import State
from ._pdu import AAbort, AReleaseRQ, PDataTF, encode_pdu

if TYPE_CHECKING:  # pragma: no cover
    from ._loop import LoopThread
    from .aio import Association as AsyncAssociation

__all__ = ["DULServiceProvider", "ARTIMTimerView"]


class ARTIMTimerView:
    """Read-only view of an association's ARTIM timer (PS3.8 9.1.5)."""

    def __init__(self, assoc: "AsyncAssociation") -> None:
        self._assoc = assoc

    @property
    def timeout(self) -> float | None:
        return self._assoc.conn.machine.artim_timeout

    @property
    def is_running(self) -> bool:
        return self._assoc.conn.machine.artim_deadline is not None

    @property
    def remaining(self) -> float | None:
        deadline = self._assoc.conn.machine.artim_deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._assoc.loop.time())

    @property
    def expired(self) -> bool:
        return self._assoc.conn.machine.artim_expired(self._assoc.loop.time())


class DULServiceProvider:
    """The DICOM Upper Layer service provider of one association (see module doc)."""

    def __init__(self, assoc: "AsyncAssociation", runner: "LoopThread | None" = None) -> None:
        self._assoc = assoc
        self._runner = runner
        self.association = assoc
        self.artim_timer = ARTIMTimerView(assoc)
        self._indications: collections.deque = collections.deque()
        assoc.dul_observers.append(self._indications.append)

    @property
    def state_machine(self) -> Any:
        machine = self._assoc.conn.machine
        return _MachineView(machine)

    def send_pdu(self, params: Any) -> None:
        """Perform the user primitive ``params`` stands for (see module doc)."""
        assoc = self._assoc

        def perform() -> None:
            now = assoc.loop.time()
            if isinstance(params, AAbort):
                assoc.conn.abort(now, params.source, params.reason)
            elif isinstance(params, AReleaseRQ):
                assoc.conn.release(now)
            elif isinstance(params, PDataTF):
                assoc.conn.send_buffers([encode_pdu(params)], now)
            else:
                raise TypeError(f"send_pdu takes AAbort, AReleaseRQ or PDataTF, not {params!r}")
            assoc.pump()

        if self._runner is not None and not self._runner.is_loop_thread:
            self._runner.call(perform)
        else:
            perform()

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """The next association-level indication, or None (see module doc)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._indications:
                return self._indications.popleft()
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                return None
            time.sleep(0.01)  # only this compatibility shim ever waits this way

    def peek_next_pdu(self) -> Any:
        """The next indication without removing it, or None."""
        return self._indications[0] if self._indications else None

    def idle_timer_expired(self) -> bool:
        """Whether nothing was received for ``network_timeout`` seconds."""
        timeout = self._assoc.network_timeout
        if timeout is None:
            return False
        return self._assoc.loop.time() - self._assoc.conn.last_activity >= timeout

    def stop_dul(self) -> bool:
        """True if the machine is idle (Sta1): there is nothing left to stop."""
        return self._assoc.conn.machine.state is State.Sta1

    def kill_dul(self) -> None:
        """Close the transport immediately, without an A-ABORT."""
        transport = self._assoc.transport
        if transport is None:
            return
        if self._runner is not None and not self._runner.is_loop_thread:
            self._runner.call(transport.abort)
        else:
            transport.abort()


class _MachineView:
    """``dul.state_machine``: the machine plus pynetdicom's ``current_state`` name."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine

    @property
    def current_state(self) -> str:
        return self.machine.state.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.machine, name)
