"""The instance store on a POSIX file system: the first :class:`~storage.InstanceStore`.

Theory of operation: :meth:`PosixInstanceStore.open` checks the announced UIDs and
starts an :class:`~storage.InstanceWriter` (a temporary file under ``<root>/.tmp``,
File Meta first); the upload's :meth:`~Upload.write` streams the data set into it;
:meth:`~Upload.finish` validates it and hands it to a :class:`~storage.Publisher`,
which makes it durable as :class:`~storage.StorageConfig` says, renames it to
``<root>/<Study>/<Series>/<SOP>.dcm`` and appends its record to the journal. With
``segment_label`` the journal is this writer's own :class:`~storage.JournalSegments`
(locked, rotated past ``segment_bytes``, reported through ``on_append`` and
``on_rotate``); without, nothing is journalled (tools, tests).

``finish`` returns the record itself when publication ran inline (durability
``none``) and a future of it otherwise; either way every failure is a
:class:`~storage.StoreRefused`. The store counts the publications under way, so
:meth:`aclose` can wait for them before closing the journal under them. It never
runs on a loop thread what blocks (fsync, rename, fdatasync go to ``executor``), and
never knows who sends the instances or what the answer to a refusal is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import Callable
from typing import BinaryIO

from ._part10 import StorageError
from ._ports import InstanceUnavailable, Refusal, StoreRefused, UploadRequest
from ._record import InstanceRecord
from ._segments import JournalSegments, Segment, SegmentAppendCallback
from ._writer import InstanceWriter, Publisher, StorageConfig, WriterStateError

__all__ = ["PosixInstanceStore"]


class _PosixUpload:
    """One instance on its way into a :class:`PosixInstanceStore` (the ``Upload`` port)."""

    __slots__ = ("_store", "_writer", "_finishing")

    def __init__(self, store: PosixInstanceStore, writer: InstanceWriter) -> None:
        self._store = store
        self._writer = writer
        self._finishing = False

    @property
    def size(self) -> int:
        return self._writer.size

    @property
    def duplicate(self) -> bool:
        return self._writer.duplicate

    def write(self, data: memoryview) -> None:
        self._writer.write(data)

    def finish(self) -> InstanceRecord | asyncio.Future[InstanceRecord]:
        if self._finishing:
            raise WriterStateError("finish() called twice")
        self._finishing = True
        return self._store._publish(self._writer)

    def abort(self) -> None:
        if not self._finishing:
            self._writer.abort()


class PosixInstanceStore:
    """Instances as Part 10 files under ``config.root`` (see the module's theory of
    operation). ``loop``: the event loop publications complete on (None: the running
    loop, looked up when first needed); ``executor``: where blocking steps run (None:
    the loop's default). ``segment_label`` (e.g. ``"w3"``) turns the journal on; the
    first segment is created here, so build the store on the loop's thread. Raises
    ``OSError`` when that segment cannot be created.
    """

    def __init__(
        self,
        config: StorageConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        executor: concurrent.futures.Executor | None = None,
        *,
        segment_label: str | None = None,
        segment_bytes: int | None = None,
        on_append: SegmentAppendCallback | None = None,
        on_rotate: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._loop = loop
        self._segments: JournalSegments | None = None
        self._publisher: Publisher | None = None
        if segment_label is not None:
            if segment_bytes is None:
                raise ValueError("a journalled store needs segment_bytes")
            self._segments = JournalSegments(
                config, loop, executor, segment_label, segment_bytes, on_append=on_append, on_rotate=on_rotate
            )
        else:
            self._publisher = Publisher(config, loop, executor=executor)
        self._inflight = 0
        self._idle: asyncio.Future[None] | None = None
        self._closing = False

    @property
    def segments(self) -> JournalSegments | None:
        """This store's journal segments (None when it journals nothing)."""
        return self._segments

    @property
    def segment_name(self) -> str | None:
        """The journal segment publications go into now."""
        return self._segments.name if self._segments is not None else None

    @property
    def inflight(self) -> int:
        """Publications started by :meth:`Upload.finish` and not yet over."""
        return self._inflight

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- the InstanceStore port -------------------------------------------------------------

    def open(self, request: UploadRequest) -> _PosixUpload:
        if self._closing:
            raise StoreRefused(Refusal.OUT_OF_RESOURCES, "the store is closing")
        writer = InstanceWriter(
            self.config,
            request.sop_class_uid,
            request.sop_instance_uid,
            request.transfer_syntax_uid,
            request.calling_ae,
            request.called_ae,
            received_at=request.received_at or None,
            calling_address=request.calling_address,
        )
        writer.begin()
        return _PosixUpload(self, writer)

    async def aclose(self) -> None:
        self._closing = True
        if self._segments is not None:
            await self._segments.flush()
        elif self._publisher is not None:
            await self._publisher.flush()
        while self._inflight:
            self._idle = self._get_loop().create_future()
            await self._idle
        if self._segments is not None:
            await self._segments.aclose()
        elif self._publisher is not None:
            await self._publisher.aclose()

    def path_of(self, record: InstanceRecord) -> str:
        parts = record.path.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
            raise StorageError(f"not a path of this store: {record.path!r}")
        return os.path.join(self.config.root, *parts)

    def open_instance(self, record: InstanceRecord) -> BinaryIO:
        path = self.path_of(record)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise InstanceUnavailable(f"{record.sop_instance_uid}: {exc.strerror or exc}") from exc

    # -- publication --------------------------------------------------------------------------

    def _publish(self, writer: InstanceWriter) -> InstanceRecord | asyncio.Future[InstanceRecord]:
        if self._closing:
            writer.abort()
            raise StoreRefused(Refusal.OUT_OF_RESOURCES, "the store is closing")
        segment = self._segments.enter() if self._segments is not None else None
        publisher = segment.publisher if segment is not None else self._publisher
        assert publisher is not None  # one of the two is always set
        self._inflight += 1
        try:
            result = publisher.submit(writer)
        except OSError as exc:  # anything the writer did not already translate
            self._left(segment)
            writer.abort()
            raise StoreRefused(Refusal.OUT_OF_RESOURCES, f"cannot store: {exc}") from exc
        except BaseException:
            self._left(segment)
            raise
        if isinstance(result, InstanceRecord):
            self._left(segment)
            return result
        # The caller gets a future of its own: cancelling it must not make this store
        # forget a publication that a thread is still carrying out.
        outer: asyncio.Future[InstanceRecord] = self._get_loop().create_future()
        result.add_done_callback(functools.partial(self._landed, segment, outer))
        return outer

    def _landed(
        self, segment: Segment | None, outer: asyncio.Future[InstanceRecord], inner: asyncio.Future[InstanceRecord]
    ) -> None:
        self._left(segment)
        error: BaseException | None
        if inner.cancelled():
            error = StoreRefused(Refusal.OUT_OF_RESOURCES, "publication cancelled")
        else:
            error = inner.exception()
        if isinstance(error, OSError):
            cause = error
            error = StoreRefused(Refusal.OUT_OF_RESOURCES, f"cannot store: {cause}")
            error.__cause__ = cause
        if outer.done():
            return  # the caller stopped waiting
        if error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(inner.result())

    def _left(self, segment: Segment | None) -> None:
        self._inflight -= 1
        if segment is not None and self._segments is not None:
            self._segments.leave(segment)
        if not self._inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
