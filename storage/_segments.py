"""One writer's journal segments: each locked before it exists, rotated when full, and
closed once nothing publishes into it any more.

Theory of operation: a writer process (a worker) journals every instance it publishes
(:mod:`._journal`). :class:`JournalSegments` keeps its segments: the *current* one, that
new publications go to, and *retiring* ones, full but with publications still under
way. A segment is named ``<label>-<pid>-<ns>`` (:func:`~storage.segment_name`); its
``.lock`` file is created and ``flock``-ed before the segment file, and held until the
segment is closed, so "the lock can be taken" means "the writer is done with it" to
whoever reads segments (an indexer finishes and deletes such a segment), whatever pid
the kernel reuses. Each segment has its own :class:`~storage.Publisher`, so a batch
group never straddles two segments.

Rotation: when an append ends past ``segment_bytes``, a new segment is opened and
becomes current (``on_rotate(new_name)``); the old one is closed -- journal, publisher
threads and lock -- as soon as the publications that entered it have left it
(:meth:`enter` / :meth:`leave`). Appends may happen in publisher threads: every one is
reported with ``on_append(segment_name, start, end, records)`` under the journal's
append lock, so reports leave in file order; the caller hops to its own loop if it
must. Rotation itself always runs on the loop.

It never decides durability (the publisher does) and never reads a segment back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Callable

from ._journal import JournalWriter, journal_dir, segment_lock_path, segment_name
from ._record import InstanceRecord
from ._writer import Publisher, StorageConfig

__all__ = ["JournalSegments", "Segment", "SegmentAppendCallback"]

#: ``on_append(segment_name, start, end, records)``: ``records``' frames lie at
#: ``[start, end)`` of that segment.
SegmentAppendCallback = Callable[[str, int, int, "list[InstanceRecord]"], None]

class Segment:
    """One journal segment: its lock, its journal, the publisher appending to it, and
    how many publications are inside it right now."""

    __slots__ = ("name", "lock_fd", "journal", "publisher", "inflight", "retiring")

    journal: JournalWriter
    publisher: Publisher

    def __init__(self, name: str, lock_fd: int) -> None:
        self.name = name
        self.lock_fd = lock_fd
        self.inflight = 0
        self.retiring = False

    @property
    def closed(self) -> bool:
        return self.lock_fd < 0


class JournalSegments:
    """The journal segments of one writer (see the module's theory of operation).

    Build it on the thread that runs ``loop`` (``loop=None``: inside the running loop);
    the first segment is created and locked here. Raises ``OSError``.
    """

    def __init__(
        self,
        config: StorageConfig,
        loop: asyncio.AbstractEventLoop | None,
        executor: concurrent.futures.Executor | None,
        label: str,
        segment_bytes: int,
        *,
        on_append: SegmentAppendCallback | None = None,
        on_rotate: Callable[[str], None] | None = None,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.config = config
        self.label = label
        self.segment_bytes = segment_bytes
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._executor = executor
        self._on_append = on_append
        self._on_rotate = on_rotate
        self._closing = False
        #: Full segments still in use (closed and dropped when their last publication leaves).
        self.retiring: list[Segment] = []
        self.current = self._open()

    @property
    def name(self) -> str:
        """The current segment's name."""
        return self.current.name

    def _open(self) -> Segment:
        root = self.config.root
        name = segment_name(os.getpid(), time.time_ns(), self.label)
        os.makedirs(journal_dir(root), exist_ok=True)
        lock_path = segment_lock_path(root, name)
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        segment = Segment(name, lock_fd)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            segment.journal = JournalWriter(root, name, functools.partial(self._appended, segment))
        except BaseException:
            os.close(lock_fd)
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            raise
        segment.publisher = Publisher(self.config, self._loop, journal=segment.journal, executor=self._executor)
        return segment

    def enter(self) -> Segment:
        """The segment a publication starting now goes into; :meth:`leave` it after."""
        segment = self.current
        segment.inflight += 1
        return segment

    def leave(self, segment: Segment) -> None:
        """A publication that entered ``segment`` is over (done, refused or failed)."""
        segment.inflight -= 1
        if segment.retiring and not segment.inflight:
            self._close(segment)

    def _appended(self, segment: Segment, start: int, end: int, records: list[InstanceRecord]) -> None:
        # Under the segment's append lock, in whichever thread appended.
        if self._on_append is not None:
            self._on_append(segment.name, start, end, records)
        if end >= self.segment_bytes and not self._closing and segment is self.current:
            if threading.get_ident() == self._loop_thread:
                self._rotate_from(segment)
            else:
                self._loop.call_soon_threadsafe(self._rotate_from, segment)

    def _rotate_from(self, full: Segment) -> None:
        """Continue in a new segment if ``full`` is still the current one."""
        if full is not self.current or self._closing:
            return
        try:
            self.current = self._open()
        except OSError as exc:
            # The full segment stays current; the next append past the size tries again.
            self._loop.call_exception_handler(
                {"message": f"cannot open a new journal segment after {full.name}", "exception": exc}
            )
            return
        full.retiring = True
        self.retiring.append(full)
        if self._on_rotate is not None:
            self._on_rotate(self.current.name)
        if not full.inflight:
            self._close(full)

    def _close(self, segment: Segment) -> None:
        if segment.closed:
            return
        segment.publisher.close()
        segment.journal.close()
        os.close(segment.lock_fd)
        segment.lock_fd = -1
        if segment in self.retiring:
            self.retiring.remove(segment)

    async def flush(self) -> None:
        """Stop rotating; commit what the publishers hold now and wait for it."""
        self._closing = True
        for segment in [*self.retiring, self.current]:
            await segment.publisher.flush()

    async def aclose(self) -> None:
        """:meth:`flush`, then close every segment (releasing its lock). Call once no
        publication is inside any segment any more."""
        await self.flush()
        self.close()

    def close(self) -> None:
        """Close every segment now (after :meth:`flush`, or when nothing was published)."""
        self._closing = True
        for segment in [*self.retiring, self.current]:
            self._close(segment)
