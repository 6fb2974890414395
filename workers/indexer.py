"""An indexer process: follows its workers' journal segments into the index (SQLite, or
the PostgreSQL index the nodes of a cluster share, as this node's rows).

Theory of operation: the journal is the index queue. Indexer ``j`` of ``M`` owns the
segments of workers ``k`` with ``k % M == j`` (named ``w<k>-<pid>-<ns>``,
:func:`segment_worker`); it is the only process that writes their rows and their
``journal_progress`` while the node runs (the supervisor replays only before any child
starts and after all have stopped), so each segment's progress has one writer and
moves forward only. Workers never wait for an indexer and send it nothing.

It polls. One ``listdir`` of ``<root>/.journal`` finds the segments of its shard (a
worker's current one, rotated ones, orphans of workers that died while no indexer
ran); each is followed by a :class:`storage.JournalTail` opened at the segment's
progress, so a segment with nothing new costs one ``fstat``. The interval is short
while records keep coming and backs off when the journal is idle. A tail stops before
bytes that are not yet a whole good frame; while the writer holds the segment's lock
that is a frame being written right now, read again from the same offset next poll.

Records are committed with :meth:`storage.Catalog.apply` together with the offsets they
reach, every ``_BATCH_MAX`` records or ``_BATCH_DELAY_S`` after the first pending one.
While commits fail (the database locked, down, or its disk full) the records stay
pending, the commit is retried with back-off, and nothing more is read than one batch:
memory stays bounded, the workers go on storing and acknowledging, and the journal
grows until the index catches up.

A segment is *finished* when its writer is gone. A segment that brings nothing new is
asked every ``_LIVENESS_S`` whether its ``.lock`` can be taken (a worker takes the lock
before the segment exists and holds it until it has closed the segment: rotated, or
the worker stopped or died). The indexer then keeps the lock, reads the segment to its
end -- bytes that are not a good frame are now a torn tail, never indexed --, commits,
syncs the index (:meth:`storage.Catalog.sync`: a power loss must not take rows that no
journal holds any more) and deletes it, so rotated segments and dead workers leave
nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import selectors
import signal
import socket
import time

from storage import (
    CatalogError,
    FileCheck,
    InstanceRecord,
    JournalTail,
    open_catalog,
    segment_lock_path,
    segment_names,
    segment_path,
)

from .ipc import IndexerStats, Ready, Spec, Stop, recv_control, send_control

__all__ = ["main", "Indexer", "segment_worker"]

log = logging.getLogger("scpfleet.indexer")

# A transaction of a few thousand rows commits in milliseconds; bigger ones only delay
# the index and hold the write lock longer. Also the most records read and not yet
# committed: what a stalled database costs in memory.
_BATCH_MAX = 2000
# Latency from publish to index when the rate is low.
_BATCH_DELAY_S = 0.02
# Poll interval while records keep coming: well under _BATCH_DELAY_S, so a batch
# fills from several reads; a poll is a listdir and an fstat per segment.
_POLL_MIN_S = 0.01
# Poll interval of an idle journal (the interval doubles up to it): ten cheap polls a
# second, and the first record after a pause waits at most this long.
_POLL_MAX_S = 0.1
# How often a segment that brings nothing new is asked whether its writer is gone (one
# flock): a rotated or dead writer's segment is finished and deleted within this long.
_LIVENESS_S = 0.5
# A failed commit is retried after this long, doubling up to the maximum: a database
# that is down is not hammered, and one that is back is used within the maximum.
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 5.0
_STATS_INTERVAL_S = 1.0
# After Stop, the final catch-up gives up after this long (the supervisor replays what
# is left, and kills an indexer that takes longer than its own limit).
_STOP_GRACE_S = 20.0

_SEGMENT_WORKER = re.compile(r"w(\d+)-")


def segment_worker(name: str) -> int | None:
    """The worker number in a segment name ``w<k>-<pid>-<ns>``, or None."""
    match = _SEGMENT_WORKER.match(name)
    return int(match.group(1)) if match else None


class _Segment:
    """One segment of this shard being followed."""

    __slots__ = ("name", "tail", "lock_fd", "dead", "checked_at")

    def __init__(self, name: str, tail: JournalTail, lock_fd: int) -> None:
        self.name = name
        self.tail = tail
        self.lock_fd = lock_fd  # -1: no lock file, the writer is long gone
        self.dead = False  # its lock is ours: nothing more will be appended
        self.checked_at = float("-inf")

    def writer_gone(self) -> bool:
        """Take the segment's lock if its writer has let it go (kept until closed)."""
        if self.lock_fd < 0:
            return True
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.tail.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


class Indexer:
    def __init__(self, spec: Spec, ctl: socket.socket) -> None:
        cfg = spec.config
        self.spec = spec
        self.ctl = ctl
        self.shard = spec.index
        self.shards = cfg.indexers
        self.root = cfg.storage
        # A shared index is connected to on first use, and again after a failure: an
        # indexer starts, and keeps its place, while the database is down.
        self.index = open_catalog(cfg.index_path, node=cfg.node, lazy=True)
        #: Every batch is decided against the files (storage/_integrity.py).
        self.files = FileCheck(cfg.storage, cfg.duplicates)
        self.sel = selectors.DefaultSelector()
        self.segments: dict[str, _Segment] = {}
        self.pending: list[InstanceRecord] = []
        self.pending_progress: dict[str, int] = {}
        self.pending_since = 0.0
        # The last poll stopped at a limit, or found a writer gone: read again soon.
        self.behind = False
        self.interval = _POLL_MIN_S
        self.retry_s = 0.0
        self.retry_at = 0.0
        self.stopping = False
        self.stats = IndexerStats()

    # -- following segments -----------------------------------------------------------------

    def _shard(self) -> set[str]:
        """Names of the segments of this indexer's workers now in the journal directory."""
        names = set()
        for name in segment_names(self.root):
            worker = segment_worker(name)
            if worker is not None and worker % self.shards == self.shard:
                names.add(name)
        return names

    def _follow(self, name: str) -> _Segment | None:
        """Start following ``name`` from its progress; None if that cannot be done now."""
        try:
            offset = self.index.progress(name)
        except CatalogError as exc:
            log.debug("progress of %s unavailable, next poll tries again: %s", name, exc)
            return None
        try:
            tail = JournalTail(segment_path(self.root, name), offset)
        except FileNotFoundError:
            return None
        try:
            lock_fd = os.open(segment_lock_path(self.root, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            lock_fd = -1
        segment = self.segments[name] = _Segment(name, tail, lock_fd)
        return segment

    def _drop(self, name: str) -> None:
        segment = self.segments.pop(name, None)
        if segment is not None:
            segment.close()

    def poll(self, now: float, final: bool = False) -> int:
        """Read what is new in this shard's segments, finish those whose writer is gone;
        the number of records read. ``final``: ask every idle segment about its writer."""
        self.stats.polls += 1
        names = self._shard()
        for name in [n for n in self.segments if n not in names]:
            self._drop(name)  # gone from the directory: nothing left to follow
        self.behind = False
        read = 0
        order = sorted(names)
        if order:  # start with a different segment each poll: a busy one starves none
            first = self.stats.polls % len(order)
            order = order[first:] + order[:first]
        for name in order:
            segment = self.segments.get(name) or self._follow(name)
            if segment is None:
                continue
            room = _BATCH_MAX - len(self.pending)
            if room <= 0:
                self.behind = True
                break
            tail = segment.tail
            size = tail.size()
            got = tail.read(room, size) if size != tail.offset else []
            if tail.more:
                self.behind = True
            if got:
                if not self.pending:
                    self.pending_since = now
                self.pending.extend(record for record, _end in got)
                self.pending_progress[name] = tail.offset
                read += len(got)
            elif segment.dead:
                if name not in self.pending_progress and not tail.more:
                    self._retire(segment)
            elif final or now - segment.checked_at >= _LIVENESS_S:
                segment.checked_at = now
                if segment.writer_gone():
                    segment.dead = True
                    self.behind = True  # read what it appended since, then retire it
        return read

    def _retire(self, segment: _Segment) -> None:
        """Delete a finished segment: its writer is gone, every good frame is indexed,
        and the index is synced first (its commits may not be on disk yet, and after the
        deletion no journal could replay them)."""
        try:
            self.index.sync()
            os.unlink(segment.tail.path)
        except FileNotFoundError:
            pass
        except (OSError, CatalogError) as exc:
            segment.dead = False  # asked again, and retired again, after _LIVENESS_S
            segment.checked_at = time.monotonic()
            log.warning("cannot delete finished journal segment %s: %s", segment.name, exc)
            return
        try:
            self.index.forget_journal(segment.name)
        except CatalogError as exc:  # a progress row of a segment that no longer exists is inert
            log.warning("progress of retired journal segment %s not forgotten: %s", segment.name, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment_lock_path(self.root, segment.name))
        self._drop(segment.name)
        self.stats.retired += 1
        log.info("journal segment %s finished and retired", segment.name)

    # -- commits --------------------------------------------------------------------------

    def commit(self) -> bool:
        """Commit what is pending; False when the commit failed (it stays pending)."""
        if not self.pending:
            return True
        try:
            self.index.apply(self.pending, self.pending_progress, self.files)
        except CatalogError as exc:
            self.stats.commit_errors += 1
            self.retry_s = min(self.retry_s * 2, _RETRY_MAX_S) if self.retry_s else _RETRY_MIN_S
            self.retry_at = time.monotonic() + self.retry_s
            log.error("index commit of %d record(s) failed, will retry in %.1f s: %s",
                      len(self.pending), self.retry_s, exc)
            return False
        if self.retry_s:
            log.info("index commit succeeded again; catching up from the journal")
            self.retry_s = 0.0
        self.stats.indexed += len(self.pending)
        self.stats.batches += 1
        self.pending = []
        self.pending_progress = {}
        return True

    def _commit_due(self, now: float) -> bool:
        return bool(self.pending) and now >= self.retry_at and (
            len(self.pending) >= _BATCH_MAX or now >= self.pending_since + _BATCH_DELAY_S
        )

    # -- control --------------------------------------------------------------------------

    def _on_control(self) -> None:
        while True:
            try:
                got = recv_control(self.ctl)
            except BlockingIOError:
                return
            except (OSError, ValueError) as exc:
                log.error("control channel failed: %s", exc)
                got = None
            if got is None:
                self.sel.unregister(self.ctl)
                self.stop()
                return
            message, fd = got
            if fd is not None:
                os.close(fd)
            if isinstance(message, Stop):
                self.stop()

    def stop(self) -> None:
        self.stopping = True

    def _send_stats(self) -> None:
        self.stats.pending = len(self.pending)
        try:
            send_control(self.ctl, self.stats)
        except OSError:
            pass

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.ctl.setblocking(False)
        self.sel.register(self.ctl, selectors.EVENT_READ)
        send_control(self.ctl, Ready(os.getpid()))
        log.info("indexer %d of %d following the journals of workers k %% %d == %d", self.shard, self.shards,
                 self.shards, self.shard)
        next_stats = next_poll = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            deadline = min(next_stats, next_poll)
            if self.pending:
                deadline = min(deadline, max(self.pending_since + _BATCH_DELAY_S, self.retry_at))
            if self.sel.select(max(0.0, deadline - now)):
                self._on_control()
            now = time.monotonic()
            if now >= next_poll:
                read = self.poll(now)
                self.interval = _POLL_MIN_S if read else min(self.interval * 2, _POLL_MAX_S)
                next_poll = now + self.interval
            if self._commit_due(now):
                self.commit()
            if self.behind and len(self.pending) < _BATCH_MAX:
                next_poll = now  # more to read, and room for it
            if now >= next_stats:
                self._send_stats()
                next_stats = now + _STATS_INTERVAL_S
        self._finish()
        self._send_stats()
        for name in list(self.segments):
            self._drop(name)
        self.index.close()
        return 0

    def _finish(self) -> None:
        """At stop (the workers have stopped first): index what is left, retire what is
        finished. Live segments and what a failing commit leaves are the supervisor's
        final replay's."""
        deadline = time.monotonic() + _STOP_GRACE_S
        while time.monotonic() < deadline:
            read = self.poll(time.monotonic(), final=True)
            if not self.commit():
                return
            if not read and not self.behind:
                return


def main(spec: Spec, ctl: socket.socket) -> int:
    return Indexer(spec, ctl).run()
