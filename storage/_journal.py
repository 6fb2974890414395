"""The journal: the durable hand-off from a worker's publish to the index.

Theory of operation: "stored" must imply "will be indexed, whatever crashes next", and
the index lives in another process. So each worker appends every record it publishes
to its own journal segment, ``<root>/.journal/<name>.log``, after the instance's file is
in place and before the C-STORE is answered; the indexer replays segments into the
index. A segment has exactly one writer for its whole life, and its name carries the
writer's pid and start time (:func:`segment_name`), so a restarted worker never appends
to a dead one's segment.

A frame is ``<u32 LE payload length> <payload: msgpack InstanceRecord> <u32 LE
crc32(payload)>``. A crash can tear the last frame; the reader stops at the first frame
that is short, over-long or fails its CRC, and reports the end of the last good frame,
so a torn tail is ignored and never indexed. A failed append is cut back to its last
whole frame so later frames never sit behind garbage, and a frame once whole in the
file is never taken back (a reader may have seen it).

Replay is exactly-once because the catalog stores each segment's offset in the same
transaction as the rows read up to it (:meth:`Catalog.apply`).

The journal is also the index queue: while a node runs, its indexers follow the live
segments with a :class:`JournalTail` each, which keeps the file open and reads only
what was appended since it last looked. A tail cannot tell a frame being written from
a torn one -- a reader can see part of a concurrent ``write(2)`` -- so it stops before
either and reads again from there; whoever holds the tail decides, from the segment's
lock (:func:`segment_lock_path`), when the writer is gone and the tail is torn.

A writer may be given ``on_append``: it is told of every append, with the frames'
byte range, under the lock that orders appends, so reports leave in file order
whichever thread appended. That is how :class:`~storage.JournalSegments` knows when a
segment is full.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator

import msgspec

from ._part10 import StorageError
from ._ports import Catalog
from ._integrity import FileCheck
from ._record import InstanceRecord

__all__ = [
    "JournalError",
    "JournalWriter",
    "JournalReader",
    "JournalTail",
    "segment_name",
    "segment_names",
    "journal_dir",
    "segment_path",
    "segment_lock_path",
    "AppendCallback",
    "replay",
    "retire",
]

JOURNAL_DIR = ".journal"
_SUFFIX = ".log"
_LOCK_SUFFIX = ".lock"
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")
# A record is a few hundred bytes of UIDs and names; a length above 64 KiB can only be
# a torn or corrupt length field.
_MAX_FRAME = 64 * 1024
# Replay commits this many records per index transaction: large enough to amortise
# the commit, small enough to keep a transaction short.
_REPLAY_BATCH = 500
# Read a segment in chunks of this size (replaying, tailing); above the largest frame,
# so a frame cut by a chunk's end is always whole in the next chunk.
_READ_CHUNK = 256 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(InstanceRecord)


class JournalError(StorageError):
    """A journal segment cannot be appended to (after a failed, uncut append)."""


#: ``on_append(start, end, records)``: the frames of ``records`` lie at ``[start, end)``.
AppendCallback = Callable[[int, int, "list[InstanceRecord]"], None]


def journal_dir(root: str | os.PathLike[str]) -> str:
    return os.path.join(root, JOURNAL_DIR)


def segment_path(root: str | os.PathLike[str], name: str) -> str:
    """The file of segment ``name``."""
    return os.path.join(journal_dir(root), name + _SUFFIX)


def segment_lock_path(root: str | os.PathLike[str], name: str) -> str:
    """The lock of segment ``name``: its writer holds it (``flock``) from before the
    segment exists until it is done, so a lock anyone can take means a dead writer."""
    return os.path.join(journal_dir(root), name + _LOCK_SUFFIX)


def segment_name(pid: int, started_ns: int, label: str = "worker") -> str:
    """Name of a writer's segment: unique per writer process lifetime."""
    return f"{label}-{pid}-{started_ns}"


def _frames(records: Iterable[InstanceRecord]) -> bytearray:
    out = bytearray()
    for record in records:
        payload = _encoder.encode(record)
        out += _LENGTH.pack(len(payload))
        out += payload
        out += _CRC.pack(zlib.crc32(payload))
    return out


def _whole_frames(data: bytes | bytearray, size: int) -> int:
    """Bytes of the whole frames among the first ``size`` bytes of ``data`` (our own frames)."""
    end = 0
    while end + _LENGTH.size <= size:
        (length,) = _LENGTH.unpack_from(data, end)
        following = end + _LENGTH.size + length + _CRC.size
        if following > size:
            break
        end = following
    return end


# What _decode_frame found at a position.
_WHOLE, _SHORT, _BAD = 0, 1, 2


def _decode_frame(buf: bytes, pos: int) -> tuple[int, InstanceRecord | None, int]:
    """The frame at ``pos`` of ``buf``: ``(_WHOLE, record, end)``; ``(_SHORT, None, pos)``
    when ``buf`` ends inside it; ``(_BAD, None, pos)`` when its length is over-long or it
    fails its CRC or decoding."""
    if len(buf) - pos < _LENGTH.size:
        return _SHORT, None, pos
    (length,) = _LENGTH.unpack_from(buf, pos)
    if length > _MAX_FRAME:
        return _BAD, None, pos
    end = pos + _LENGTH.size + length + _CRC.size
    if end > len(buf):
        return _SHORT, None, pos
    payload = memoryview(buf)[pos + _LENGTH.size : end - _CRC.size]
    (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
    if zlib.crc32(payload) != crc:
        return _BAD, None, pos
    try:
        return _WHOLE, _decoder.decode(payload), end
    except msgspec.DecodeError:
        return _BAD, None, pos


class JournalWriter:
    """Appends records to ``<root>/.journal/<name>.log`` (created, never reopened).

    Thread-safe: the publisher's executor threads may append concurrently.
    ``on_append`` is called after each successful append, in file order (see the
    module's theory of operation); it must be quick and must not append.
    """

    def __init__(
        self, root: str | os.PathLike[str], name: str, on_append: AppendCallback | None = None
    ) -> None:
        directory = journal_dir(root)
        os.makedirs(directory, exist_ok=True)
        self.name = name
        self.path = segment_path(root, name)
        self._on_append = on_append
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._offset = 0
        self._lock = threading.Lock()
        self._broken: str | None = None
        # The new segment's directory entry must survive a crash with its first frames.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @property
    def offset(self) -> int:
        """End of the last appended frame."""
        return self._offset

    def append_many(self, records: Iterable[InstanceRecord]) -> int:
        """Append one frame per record with a single ``write``; return the end offset.

        Not durable until :meth:`sync`. On ``OSError`` the file is cut back to the end
        of the last whole frame that reached it: a frame cut in two never stays, and a
        whole one does (a :class:`JournalTail` may have read it already; its instance's
        file is in place, and its store is refused and sent again). If the cut fails
        too the segment refuses further appends (:class:`JournalError`) and the caller
        must open a new one.
        """
        if self._on_append is not None:
            records = list(records)
        data = _frames(records)
        with self._lock:
            if self._broken is not None:
                raise JournalError(f"journal {self.path} unusable after a failed append: {self._broken}")
            start = self._offset
            view = memoryview(data)
            try:
                done = 0
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            except OSError:
                keep = start + _whole_frames(data, done)
                try:
                    os.ftruncate(self._fd, keep)
                except OSError as cut:
                    self._broken = str(cut)
                else:
                    self._offset = keep
                raise
            self._offset = start + len(data)
            if self._on_append is not None:
                self._on_append(start, self._offset, records)  # type: ignore[arg-type]
            return self._offset

    def sync(self) -> None:
        """``fdatasync`` the segment: every appended frame is durable after this."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class JournalReader:
    """Reads the good frames of one segment; :attr:`torn` tells whether it stopped at a
    bad frame (short, over-long, CRC or decode failure) rather than at end of file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.torn = False

    def read_from(self, offset: int = 0) -> Iterator[tuple[InstanceRecord, int]]:
        """Yield ``(record, end_offset)`` for each good frame from ``offset`` on."""
        self.torn = False
        with open(self.path, "rb") as fp:
            fp.seek(offset)
            buf = b""
            pos = 0
            while True:
                status, record, end = _decode_frame(buf, pos)
                if status == _WHOLE:
                    offset += end - pos
                    pos = end
                    yield record, offset  # type: ignore[misc]
                elif status == _BAD:
                    self.torn = True
                    return
                else:
                    more = fp.read(_READ_CHUNK)
                    if not more:
                        self.torn = len(buf) > pos
                        return
                    buf = buf[pos:] + more
                    pos = 0


class JournalTail:
    """Follows one segment while its writer may still append to it (an indexer's view).

    Keeps the file open and remembers :attr:`offset`, the end of the last good frame it
    returned, so looking at an idle segment costs one ``fstat`` (:meth:`size`).
    :meth:`read` returns the good frames after :attr:`offset` and stops at the end of
    the file, at a limit (then :attr:`more` is true: read again), or before bytes that
    are not a whole good frame (then :attr:`stalled` is true). While the writer lives
    those bytes are a frame being written, and the next read starts from the same
    offset; once the writer is gone they are a torn tail, never returned. The writer
    never takes back a whole frame (:meth:`JournalWriter.append_many`), so the offset
    stays on a frame boundary.

    Raises ``FileNotFoundError`` when the segment does not exist.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = offset
        self.more = False
        self.stalled = False

    def size(self) -> int:
        """The segment's size now (one ``fstat``)."""
        return os.fstat(self._fd).st_size

    def read(self, max_records: int, size: int | None = None) -> list[tuple[InstanceRecord, int]]:
        """``(record, end_offset)`` of at most ``max_records`` good frames after
        :attr:`offset`, which moves past them. ``size``: the size the caller has just
        seen (saves an ``fstat``)."""
        if size is None:
            size = self.size()
        self.more = self.stalled = False
        want = size - self.offset
        if want <= 0:
            return []
        if max_records <= 0:
            self.more = True
            return []
        limit = min(want, _READ_CHUNK)
        data = os.pread(self._fd, limit, self.offset)
        out: list[tuple[InstanceRecord, int]] = []
        base = self.offset
        pos = 0
        while True:
            if len(out) >= max_records:
                self.more = pos < want
                break
            status, record, end = _decode_frame(data, pos)
            if status == _WHOLE:
                out.append((record, base + end))  # type: ignore[arg-type]
                pos = end
                continue
            if status == _SHORT and len(data) == limit < want:
                self.more = True  # the chunk, not the file, ends inside this frame
            else:
                self.stalled = pos < len(data)
            break
        self.offset = base + pos
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def segment_names(root: str | os.PathLike[str]) -> list[str]:
    """Names of the segments under ``root`` now (one ``listdir``; none without a journal)."""
    try:
        entries = os.listdir(journal_dir(root))
    except FileNotFoundError:
        return []
    return [e[: -len(_SUFFIX)] for e in entries if e.endswith(_SUFFIX)]


def _segments(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(name, path)`` of every segment under ``root``, oldest name first."""
    return [(name, segment_path(root, name)) for name in sorted(segment_names(root))]


def replay(
    root: str | os.PathLike[str],
    catalog: Catalog,
    batch: int = _REPLAY_BATCH,
    files: FileCheck | None = None,
) -> int:
    """Carry every journalled record not yet in ``catalog`` into it; return how many.

    Each segment is read from the offset the catalog records for it; each batch of
    records is applied with the offset it reaches, so replaying twice (or after a
    crash in the middle) gives the same rows. ``files`` is passed to
    :meth:`Catalog.apply` (decide each record against the disk).
    """
    total = 0
    for name, path in _segments(root):
        pending: list[InstanceRecord] = []
        end = start = catalog.progress(name)
        for record, end in JournalReader(path).read_from(start):
            pending.append(record)
            if len(pending) >= batch:
                catalog.apply(pending, {name: end}, files)
                total += len(pending)
                pending = []
        if pending:
            catalog.apply(pending, {name: end}, files)
            total += len(pending)
    return total


def retire(root: str | os.PathLike[str], catalog: Catalog, live: Collection[str]) -> list[str]:
    """Delete segments whose writer is gone and whose every good frame is indexed.

    ``live`` holds the segment names of running writers; those are never touched. A
    dead writer's torn tail can never become good, so a segment is retired once nothing
    readable lies past its recorded offset. Call after :func:`replay`. Returns the names
    retired. The catalog is synced (:meth:`Catalog.sync`) before the first deletion.
    """
    retired = []
    synced = False
    for name, path in _segments(root):
        if name in live:
            continue
        with contextlib.closing(JournalReader(path).read_from(catalog.progress(name))) as frames:
            if next(frames, None) is not None:
                continue
        if not synced:
            catalog.sync()
            synced = True
        os.unlink(path)
        catalog.forget_journal(name)
        retired.append(name)
    return retired
