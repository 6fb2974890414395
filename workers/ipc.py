"""Inter-process plumbing of a node: control messages, listener channels, shared slots.

Theory of operation: the node's processes talk over two kinds of channel, both
created by the supervisor as socket pairs and handed to children either at spawn
(``pass_fds``) or later over their control socket (``SCM_RIGHTS``):

* **control** (``SOCK_SEQPACKET``, supervisor <-> every child): one msgpack-encoded
  :data:`Control` message per packet, optionally carrying one file descriptor
  (:func:`send_control` / :func:`recv_control`). The first message a child reads is its
  :class:`Spec`.
* **listener channel** (``SOCK_SEQPACKET``, listener -> worker): one packet per
  accepted TCP connection, the connection's descriptor attached.

Workers and indexers share no channel: a worker's journal segments are its indexer's
queue (see :mod:`workers.indexer`).

:class:`SharedSlots` is a small ``memfd`` mapped by the supervisor, the listener and
every worker: per worker, the number of associations it holds (summed, under a
``lockf`` lock, for node-wide admission) and the number of connections it has
finished (the listener's load estimate). A slot has one writer, its worker; the
supervisor zeroes a dead worker's slot before starting the next one, so a crash never
leaks admission capacity.

This module does no scheduling of its own: callers own their loops.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
from typing import Union

import msgspec

from .config import NodeConfig

__all__ = [
    "Spec",
    "Attach",
    "Stop",
    "Drain",
    "Ready",
    "WorkerStats",
    "IndexerStats",
    "ListenerStats",
    "Control",
    "send_control",
    "recv_control",
    "recv_fds_batch",
    "SharedSlots",
    "LATENCY_BUCKETS",
]

# ---------------------------------------------------------------------------------------
# Control messages


class Spec(msgspec.Struct, tag=True, kw_only=True):
    """Everything a child needs: its role, its number and the descriptors it inherited
    (``-1``: none). ``streams`` lists the listener's channels to the workers as
    ``(worker, fd)`` pairs."""

    role: str
    index: int
    config: NodeConfig
    lock_fd: int
    shm_fd: int = -1
    listen_fd: int = -1
    channel_fd: int = -1
    streams: list[tuple[int, int]] = []
    workers: int = 0


class Attach(msgspec.Struct, tag=True):
    """The attached descriptor is a new listener channel of worker ``worker`` (the
    worker receives its end, the listener the other)."""

    worker: int


class Stop(msgspec.Struct, tag=True):
    """Stop gracefully (drain, flush, exit 0)."""


class Drain(msgspec.Struct, tag=True):
    """(To a worker) refuse new associations from now on; serve the open ones as usual.
    A :class:`Stop` follows."""


class Ready(msgspec.Struct, tag=True):
    """The child is serving; ``segment`` names a worker's journal segment."""

    pid: int
    segment: str = ""


class WorkerStats(msgspec.Struct, tag=True, kw_only=True):
    """A worker's cumulative counters since it started, and its gauges (sent each second)."""

    instances: int = 0
    bytes: int = 0
    failures: int = 0
    associations: int = 0
    rejected: int = 0
    active: int = 0
    latency_counts: list[int] = []
    latency_sum: float = 0.0
    segment: str = ""


class IndexerStats(msgspec.Struct, tag=True, kw_only=True):
    """An indexer's cumulative counters since it started (``polls``: of its journal
    segments), and its gauge of records read and not yet committed (``pending``). How
    far it is behind is measured from the journal by the supervisor
    (:func:`workers.metrics.index_lag`), which also works when it is stuck."""

    indexed: int = 0
    batches: int = 0
    retired: int = 0
    commit_errors: int = 0
    polls: int = 0
    pending: int = 0


class ListenerStats(msgspec.Struct, tag=True, kw_only=True):
    accepted: int = 0
    handed: list[int] = []


Control = Union[Spec, Attach, Stop, Drain, Ready, WorkerStats, IndexerStats, ListenerStats]

_control_encoder = msgspec.msgpack.Encoder()
_control_decoder = msgspec.msgpack.Decoder(Control)
# Control packets are a spec or a few hundred bytes of counters; 256 KiB is far above.
_CONTROL_MAX = 256 * 1024


def send_control(sock: socket.socket, message: Control, fd: int | None = None) -> None:
    """Send one control message (with ``fd`` attached when given); raises OSError."""
    payload = _control_encoder.encode(message)
    if fd is None:
        sock.send(payload)
    else:
        socket.send_fds(sock, [payload], [fd])


def recv_control(sock: socket.socket) -> tuple[Control, int | None] | None:
    """One control message and its descriptor, or None at end of stream.

    Raises BlockingIOError when nothing is waiting on a non-blocking socket, and
    msgspec.DecodeError for a packet that is not a control message (its descriptor,
    if any, is closed).
    """
    data, fds, _flags, _addr = socket.recv_fds(sock, _CONTROL_MAX, 1)
    if not data and not fds:
        return None
    fd = fds[0] if fds else None
    try:
        return _control_decoder.decode(data), fd
    except msgspec.DecodeError:
        if fd is not None:
            os.close(fd)
        raise


def recv_fds_batch(sock: socket.socket, limit: int = 64) -> tuple[list[int], bool]:
    """Descriptors waiting on a listener channel: ``(fds, eof)``, never blocking."""
    fds: list[int] = []
    eof = False
    for _ in range(limit):
        try:
            data, got, _flags, _addr = socket.recv_fds(sock, 16, 1)
        except BlockingIOError:
            break
        except OSError:
            eof = True
            break
        if not data and not got:
            eof = True
            break
        fds.extend(got)
    return fds, eof


# ---------------------------------------------------------------------------------------
# Shared slots

#: Store latency histogram bucket bounds, seconds (Prometheus ``le`` values).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

_SLOT_FIELDS = 2  # int64 per worker: associations held, connections finished
_ASSOCS, _DONE = 0, 1


class SharedSlots:
    """Per-worker counters in a ``memfd`` shared by fd inheritance (see module doc)."""

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self.workers = workers
        size = max(mmap.PAGESIZE, workers * _SLOT_FIELDS * 8)
        self._map = mmap.mmap(fd, size)
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int) -> SharedSlots:
        fd = os.memfd_create("scpfleet-slots", 0)  # not CLOEXEC: passed with pass_fds
        os.ftruncate(fd, max(mmap.PAGESIZE, workers * _SLOT_FIELDS * 8))
        return cls(fd, workers)

    def _lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def try_admit(self, worker: int, limit: int) -> bool:
        """Take one association slot for ``worker`` unless the node holds ``limit``.

        POSIX record locks belong to the process, so the check and the increment are
        atomic across processes sharing the descriptor.
        """
        cells = self._cells
        self._lock()
        try:
            held = sum(cells[i * _SLOT_FIELDS + _ASSOCS] for i in range(self.workers))
            if held >= limit:
                return False
            cells[worker * _SLOT_FIELDS + _ASSOCS] += 1
            return True
        finally:
            self._unlock()

    def release(self, worker: int) -> None:
        self._lock()
        try:
            self._cells[worker * _SLOT_FIELDS + _ASSOCS] -= 1
        finally:
            self._unlock()

    def held(self, worker: int | None = None) -> int:
        cells = self._cells
        if worker is not None:
            return cells[worker * _SLOT_FIELDS + _ASSOCS]
        return sum(cells[i * _SLOT_FIELDS + _ASSOCS] for i in range(self.workers))

    def connection_done(self, worker: int) -> None:
        """One connection handed to ``worker`` ended (only ``worker`` writes this)."""
        self._cells[worker * _SLOT_FIELDS + _DONE] += 1

    def done(self, worker: int) -> int:
        return self._cells[worker * _SLOT_FIELDS + _DONE]

    def reset(self, worker: int) -> None:
        """Forget a dead worker's share (supervisor, before starting its successor)."""
        self._lock()
        try:
            self._cells[worker * _SLOT_FIELDS + _ASSOCS] = 0
            self._cells[worker * _SLOT_FIELDS + _DONE] = 0
        finally:
            self._unlock()
