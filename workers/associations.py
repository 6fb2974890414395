"""A worker's associations: node-wide admission, counters, and one log line each.

Theory of operation: two small parts a worker wires to the engine's events.

* :class:`Admission` takes a node-wide slot in the shared
  :class:`~workers.ipc.SharedSlots` when the engine's AE-6 asks (``ServerConfig.admission``),
  claims it for the association whose A-ASSOCIATE-RQ is being answered, and gives it
  back as soon as that association is released, aborted or rejected -- before the peer
  can see the A-RELEASE-RP and connect again. A slot taken but never claimed is given
  back on the next loop turn: admission never leaks capacity.
* :class:`AssociationLog` keeps each association's counters (instances, failures,
  bytes) and this worker's totals and latency histogram, hears every C-STORE outcome
  (it is the Storage SCP's :class:`~workers.services.StoreObserver`) and writes one
  ``assoc ...`` line when a connection closes, with its outcome.

Neither reads a socket nor knows about storage.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Any

from engine.aio import rejection_description

from .ipc import LATENCY_BUCKETS, SharedSlots
from .services import calling_title

__all__ = ["Admission", "AssociationLog", "AssociationInfo"]

log = logging.getLogger("scpfleet.worker")


class Admission:
    """Node-wide association slots for one worker (see the module docstring)."""

    __slots__ = ("slots", "worker", "limit", "loop", "accepting", "rejected", "_unclaimed", "_held")

    def __init__(self, slots: SharedSlots, worker: int, limit: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.slots = slots
        self.worker = worker
        self.limit = limit
        self.loop = loop
        #: False while draining: every request is refused (2, 3, 2).
        self.accepting = True
        #: Requests refused for want of a slot (or while draining).
        self.rejected = 0
        self._unclaimed = 0
        self._held: set[Any] = set()

    def admit(self) -> bool:
        """``ServerConfig.admission``: take a slot, or refuse (the A-ASSOCIATE-RQ's AE-6)."""
        if not self.accepting or not self.slots.try_admit(self.worker, self.limit):
            self.rejected += 1
            return False
        # Claimed by claim() in this same call stack; anything unclaimed by the next
        # loop turn was not (cannot happen, but must never leak).
        self._unclaimed += 1
        self.loop.call_soon(self._reconcile)
        return True

    def _reconcile(self) -> None:
        while self._unclaimed > 0:
            self._unclaimed -= 1
            self.slots.release(self.worker)

    def claim(self, assoc: Any) -> None:
        """The association whose request was just admitted holds the slot."""
        if self._unclaimed > 0:
            self._unclaimed -= 1
            self._held.add(assoc)

    def release(self, assoc: Any) -> None:
        """Give the association's slot back (released, aborted, rejected or closed)."""
        if assoc in self._held:
            self._held.discard(assoc)
            self.slots.release(self.worker)

    def holds(self, assoc: Any) -> bool:
        return assoc in self._held


class AssociationInfo:
    """Per-association counters for the log line written when it closes."""

    __slots__ = ("started", "peer", "calling", "called", "instances", "failed", "bytes")

    def __init__(self, peer: str) -> None:
        self.started = time.monotonic()
        self.peer = peer
        self.calling = "-"
        self.called = "-"
        self.instances = 0
        self.failed = 0
        self.bytes = 0


def _peer_label(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class AssociationLog:
    """Counters and log lines of one worker's associations (a ``StoreObserver``)."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.infos: dict[Any, AssociationInfo] = {}
        # cumulative for this process
        self.instances = 0
        self.bytes = 0
        self.failures = 0
        self.associations = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def info(self, assoc: Any) -> AssociationInfo:
        info = self.infos.get(assoc)
        if info is None:
            info = self.infos[assoc] = AssociationInfo(
                _peer_label((assoc.requestor.address, assoc.requestor.port)))
        return info

    def opened(self, assoc: Any, peer: Any) -> None:
        self.infos[assoc] = AssociationInfo(_peer_label(peer))

    def requested(self, assoc: Any) -> None:
        info = self.info(assoc)
        info.calling = calling_title(assoc)
        title = assoc.acceptor.ae_title
        text = bytes(title).strip(b" \x00").decode("ascii", "replace") if title else ""
        info.called = "".join(c if c.isascii() and c.isprintable() else "?" for c in text) or "-"

    # -- StoreObserver ----------------------------------------------------------------

    def stored(self, assoc: Any, size: int, seconds: float) -> None:
        info = self.info(assoc)
        info.instances += 1
        info.bytes += size
        self.instances += 1
        self.bytes += size
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def failed(self, assoc: Any, sop_instance_uid: str, status: int, reason: str) -> None:
        info = self.info(assoc)
        info.failed += 1
        self.failures += 1
        log.warning("store refused: peer=%s calling=%s sop=%s status=0x%04X: %s",
                    info.peer, info.calling, sop_instance_uid, status, reason)

    # -- the end ----------------------------------------------------------------------

    def closed(self, assoc: Any) -> None:
        """Write the association's line (its outcome and counters) and forget it."""
        info = self.infos.pop(assoc, None) or AssociationInfo("?")
        if assoc.is_rejected and assoc.rejection is not None:
            outcome = f"rejected ({rejection_description(assoc.rejection)})"
        elif assoc.is_released:
            outcome = "released"
        elif assoc.is_aborted:
            detail = assoc.abort_info
            if detail is not None and detail.local:
                outcome = f"aborted by us ({detail.detail or 'abort'})"
            elif detail is not None and detail.source is None:
                outcome = "connection lost"
            else:
                outcome = "aborted by peer"
        else:
            outcome = "closed without association"
        if not assoc.is_rejected and info.calling != "-":
            self.associations += 1
        log.info(
            "assoc peer=%s calling=%s called=%s worker=%d instances=%d failed=%d bytes=%d "
            "duration=%.3fs outcome=%s",
            info.peer, info.calling, info.called, self.worker, info.instances, info.failed,
            info.bytes, time.monotonic() - info.started, outcome,
        )

    def failed_before_association(self, peer: Any, why: str) -> None:
        log.info("assoc peer=%s worker=%d outcome=failed before association (%s)",
                 _peer_label(peer), self.worker, why)
