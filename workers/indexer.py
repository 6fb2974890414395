"""An indexer process: carries published records into the SQLite index, in batches.

Theory of operation: indexer ``j`` of ``M`` owns the journal segments of workers
``k`` with ``k % M == j``; it is the only process that writes their rows and their
``journal_progress`` while the node runs (the supervisor replays only before any child
starts and after all have stopped), so each segment's progress has one writer and
moves forward only. Each of its workers streams :class:`~workers.ipc.IndexBatch`
frames, one per journal append, in file order. A batch is applied against the
segment's progress: ending at or before it, it is a duplicate and skipped; starting
after it, the records in between were lost on the way (a dead indexer's stream, a
switch of streams) and are read back from the journal file first. So the queue is the
fast path and the journal is the truth, and nothing journalled is missed or doubled.

Records are committed with :meth:`storage.Catalog.apply` together with the
offsets they reach, every ``_BATCH_MAX`` records or ``_BATCH_DELAY_S`` after the first
pending one. While a commit fails (disk full) the records stay pending and reading
pauses when too many wait, which in turn slows the workers (the queue fills).

A segment is *finished* when its writer is gone: its stream ends, or a sweep finds its
``.lock`` free (a worker holds the lock of its segment for life and takes it before the
segment exists). A finished segment is read to its end, committed, and deleted
(``retire``), so dead workers leave nothing behind.
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
    InstanceRecord,
    JournalReader,
    journal_dir,
    open_catalog,
    segment_lock_path,
    segment_path,
)

from .ipc import (
    Attach,
    FrameReader,
    IndexBatch,
    IndexerStats,
    IndexHello,
    Ready,
    Spec,
    Stop,
    recv_control,
    send_control,
)

__all__ = ["main", "Indexer", "segment_worker"]

log = logging.getLogger("scpfleet.indexer")

# A transaction of a few thousand rows commits in milliseconds; bigger ones only delay
# the index and hold the write lock longer.
_BATCH_MAX = 2000
# Latency from publish to index when the rate is low.
_BATCH_DELAY_S = 0.02
# Stop reading streams while this many records wait for a commit that keeps failing.
_PENDING_MAX = 50_000
# Wait between retries of a failed commit.
_RETRY_S = 1.0
# Orphaned segments (a worker that died while this indexer was down) are looked for
# this often; the look is one listdir and a try-lock per segment of this shard.
_SWEEP_S = 30.0
_STATS_INTERVAL_S = 1.0
_READ_SIZE = 256 * 1024
# After Stop, streams get this long to end (workers flushing) before the indexer quits.
_STOP_GRACE_S = 20.0

_SEGMENT_WORKER = re.compile(r"w(\d+)-")


def segment_worker(name: str) -> int | None:
    """The worker number in a segment name ``w<k>-<pid>-<ns>``, or None."""
    match = _SEGMENT_WORKER.match(name)
    return int(match.group(1)) if match else None


class _Stream:
    __slots__ = ("sock", "worker", "reader", "segment")

    def __init__(self, sock: socket.socket, worker: int) -> None:
        self.sock = sock
        self.worker = worker
        self.reader = FrameReader()
        self.segment: str | None = None


class Indexer:
    def __init__(self, spec: Spec, ctl: socket.socket) -> None:
        cfg = spec.config
        self.spec = spec
        self.ctl = ctl
        self.j = spec.index
        self.m = cfg.indexers
        self.root = cfg.storage
        self.index = open_catalog(cfg.index_path)
        self.sel = selectors.DefaultSelector()
        self.streams: dict[int, _Stream] = {}
        self.progress: dict[str, int] = {}
        self.pending: list[InstanceRecord] = []
        self.pending_progress: dict[str, int] = {}
        self.pending_since = 0.0
        # segment -> keep trying while its writer holds it (its stream ended: the writer
        # is exiting) or not (found by a sweep: a held lock means a live writer).
        self.finishing: dict[str, bool] = {}
        # Segments this process finished and deleted (their late batches are ignored).
        self.retired: set[str] = set()
        self.reading = True
        self.stopping = False
        self.stop_deadline = 0.0
        self.retry_at = 0.0
        self.stats = IndexerStats()

    # -- progress and catch-up ------------------------------------------------------------

    def _progress(self, segment: str) -> int:
        offset = self.progress.get(segment)
        if offset is None:
            offset = self.progress[segment] = self.index.progress(segment)
        return offset

    def _path(self, segment: str) -> str:
        return segment_path(self.root, segment)

    def _catch_up(self, segment: str, upto: int | None) -> None:
        """Queue the segment's records from its progress up to ``upto`` (None: its end)."""
        offset = self._progress(segment)
        if upto is not None and upto <= offset:
            return
        count = 0
        try:
            with contextlib.closing(JournalReader(self._path(segment)).read_from(offset)) as frames:
                for record, end in frames:
                    if upto is not None and end > upto:
                        break
                    self._add(record)
                    offset = end
                    count += 1
        except FileNotFoundError:
            return
        if count:
            self.stats.caught_up += count
            self.pending_progress[segment] = offset
            self.progress[segment] = offset
            # A gap (records a lost stream carried) is news; a new stream's catch-up is routine.
            log.log(logging.INFO if upto is not None else logging.DEBUG,
                    "caught up %d record(s) of %s from the journal", count, segment)
        if upto is not None and offset < upto:
            log.error("journal %s ends at %d before batch start %d", segment, offset, upto)

    def _add(self, record: InstanceRecord) -> None:
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(record)

    def _on_frame(self, stream: _Stream, frame: IndexHello | IndexBatch) -> None:
        if type(frame) is IndexBatch:
            segment = frame.segment
            if segment in self.retired:
                return  # a late batch of a segment already read to its end and deleted
            offset = self._progress(segment)
            if frame.end <= offset:
                return  # already indexed (caught up from the journal)
            if frame.start > offset:
                self._catch_up(segment, frame.start)
            if not self.pending:
                self.pending_since = time.monotonic()
            self.pending.extend(frame.records)
            self.pending_progress[segment] = frame.end
            self.progress[segment] = frame.end
        else:
            if stream is not None and stream.segment is not None and stream.segment != frame.segment:
                self.finishing[stream.segment] = True  # rotated: finished once released
            if stream is not None:
                stream.segment = frame.segment
            self._catch_up(frame.segment, None)

    # -- commits --------------------------------------------------------------------------

    def commit(self) -> bool:
        """Commit what is pending; False when the commit failed (it stays pending)."""
        if not self.pending:
            return True
        try:
            self.index.apply(self.pending, self.pending_progress)
        except CatalogError as exc:
            self.stats.commit_errors += 1
            log.error("index commit of %d record(s) failed, will retry: %s", len(self.pending), exc)
            self.retry_at = time.monotonic() + _RETRY_S
            return False
        self.stats.indexed += len(self.pending)
        self.stats.batches += 1
        self.pending = []
        self.pending_progress = {}
        return True

    # -- finished segments ----------------------------------------------------------------

    def _finish(self, segment: str) -> bool | None:
        """Index a dead writer's segment to its end and delete it. None: its writer still
        holds it; False: the commit failed."""
        lock_path = segment_lock_path(self.root, segment)
        try:
            lock_fd: int | None = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            lock_fd = None
        try:
            if lock_fd is not None:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
            self._catch_up(segment, None)
            if not self.commit():
                return False
            try:
                os.unlink(self._path(segment))
            except FileNotFoundError:
                pass
            self.index.forget_journal(segment)
            self.progress.pop(segment, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
            self.stats.retired += 1
            self.retired.add(segment)
            log.info("journal segment %s finished and retired", segment)
            return True
        finally:
            if lock_fd is not None:
                os.close(lock_fd)

    def _sweep(self) -> None:
        """Queue for finishing every segment of this shard whose writer is gone."""
        try:
            names = os.listdir(journal_dir(self.root))
        except FileNotFoundError:
            return
        live = {s.segment for s in self.streams.values() if s.segment}
        for name in names:
            if not name.endswith(".log"):
                continue
            segment = name[: -len(".log")]
            worker = segment_worker(segment)
            if worker is None or worker % self.m != self.j or segment in live:
                continue
            self.finishing.setdefault(segment, False)

    def _try_finishing(self) -> None:
        for segment, ended in sorted(self.finishing.items()):
            done = self._finish(segment)
            if done or (done is None and not ended):
                del self.finishing[segment]

    # -- streams --------------------------------------------------------------------------

    def add_stream(self, worker: int, sock: socket.socket) -> None:
        sock.setblocking(False)
        stream = _Stream(sock, worker)
        self.streams[sock.fileno()] = stream
        if self.reading:
            self.sel.register(sock, selectors.EVENT_READ, ("stream", stream))

    def _close_stream(self, stream: _Stream) -> None:
        self.streams.pop(stream.sock.fileno(), None)
        if self.reading:
            self.sel.unregister(stream.sock)
        stream.sock.close()
        if stream.segment is not None:
            self.finishing[stream.segment] = True
        else:
            self._sweep()

    def _on_stream(self, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(stream)
            return
        try:
            frames = stream.reader.feed(data)
        except ValueError as exc:
            # Cannot happen between our own processes; restarting re-reads the journals.
            raise RuntimeError(f"worker {stream.worker} index queue corrupt: {exc}") from exc
        for frame in frames:
            self._on_frame(stream, frame)

    def _set_reading(self, on: bool) -> None:
        if on == self.reading:
            return
        for stream in self.streams.values():
            if on:
                self.sel.register(stream.sock, selectors.EVENT_READ, ("stream", stream))
            else:
                self.sel.unregister(stream.sock)
        self.reading = on

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
            if isinstance(message, Stop):
                self.stop()
            elif isinstance(message, Attach) and fd is not None and message.kind == "stream":
                self.add_stream(message.worker, socket.socket(fileno=fd))
            elif fd is not None:
                os.close(fd)

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + _STOP_GRACE_S

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
        self.sel.register(self.ctl, selectors.EVENT_READ, ("control", None))
        for worker, fd in self.spec.streams:
            self.add_stream(worker, socket.socket(fileno=fd))
        self._sweep()
        send_control(self.ctl, Ready(os.getpid()))
        log.info("indexer %d of %d running", self.j, self.m)
        now = time.monotonic()
        next_stats = now
        next_sweep = now + _SWEEP_S
        while True:
            now = time.monotonic()
            if self.stopping and (not self.streams or now >= self.stop_deadline):
                break
            deadline = min(next_stats, next_sweep)
            if self.pending:
                deadline = min(deadline, max(self.pending_since + _BATCH_DELAY_S, self.retry_at))
            if self.finishing:
                deadline = min(deadline, now + 0.05)
            if self.stopping:
                deadline = min(deadline, self.stop_deadline)
            for key, _mask in self.sel.select(max(0.0, deadline - now)):
                kind, stream = key.data
                if kind == "stream":
                    self._on_stream(stream)
                else:
                    self._on_control()
            now = time.monotonic()
            if self.pending and now >= self.retry_at and (
                len(self.pending) >= _BATCH_MAX or now >= self.pending_since + _BATCH_DELAY_S
            ):
                self.commit()
            self._set_reading(len(self.pending) < _PENDING_MAX)
            if self.finishing and now >= self.retry_at:
                self._try_finishing()
            if now >= next_sweep:
                self._sweep()
                next_sweep = now + _SWEEP_S
            if now >= next_stats:
                self._send_stats()
                next_stats = now + _STATS_INTERVAL_S
        # Streams that ended are finished now; the rest are the supervisor's to replay.
        self.commit()
        self._try_finishing()
        self._send_stats()
        self.index.close()
        return 0


def main(spec: Spec, ctl: socket.socket) -> int:
    return Indexer(spec, ctl).run()
