"""DIMSE requests we send: C-ECHO and C-STORE as a service user, in either role.

Theory of operation: a :class:`ServiceUser` belongs to one association. It numbers our
messages (Message ID, PS3.7 9.1.1.1.1), sends one message at a time (a streamed data
set must not interleave with another message, PS3.8 Annex E), and waits for the
response routed back to it by the dispatcher. It does not time out on its own: the
core's DIMSE timer aborts the association when an awaited response does not come, and
every waiter is then answered ``None``.

A Part 10 file is streamed from disk in large reads, without decoding: in its stored
transfer syntax when the peer accepted it, else converted element by element while it
streams (:mod:`engine._transcode`) to an uncompressed syntax the peer accepted; a
compressed data set the peer did not accept as it is raises ValueError. The C-STORE-RQ
names the SOP Class/Instance UIDs of the data set itself (read from its first bytes),
as other senders do; a File Meta that says otherwise is logged. A deflated data set of
odd length gets its trailing null byte (PS3.5 A.5). A pydicom ``Dataset`` is encoded
in its own transfer syntax and converted the same way. Service providers use the same
calls for their sub-operations (C-GET).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ._dimse import CEchoRQ, CStoreRQ, CStoreRSP, iter_dataset_pdus
from ._errors import LocalProtocolError
from ._transcode import CONVERTIBLE, iter_transcoded, read_sop_uids, transcode
from .dataset import dataset_transfer_syntax, encode_dataset, read_part10_header
from .presentation import PresentationContext

if TYPE_CHECKING:  # pragma: no cover
    from .aio import Association

__all__ = ["ServiceUser", "status_dataset"]

log = logging.getLogger("scpfleet.engine")

#: Bytes read from a Part 10 file per read() when streaming it: big enough to amortise
#: the syscall, small enough that a multi-GB file never sits in memory.
_FILE_READ_SIZE = 1 << 20
#: Transport write-buffer size above which a streaming send waits for the peer.
_WRITE_HIGH_WATER = 4 << 20
_VERIFICATION = "1.2.840.10008.1.1"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: Conversion targets in order of preference: no byte swapping, then the smallest.
_TARGET_ORDER = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
                 "1.2.840.10008.1.2.2")
#: The head of a data set read for its SOP UIDs: they are among its first elements.
_HEAD_SIZE = 16 * 1024


def status_dataset(rsp: Any) -> Dataset:
    """A response's status as the pydicom Dataset pynetdicom returns (empty: none came)."""
    ds = Dataset()
    if rsp is None:
        return ds
    ds.Status = rsp.status
    if getattr(rsp, "error_comment", None):
        ds.ErrorComment = rsp.error_comment
    return ds


def _read_chunks(fobj: Any, remaining: int) -> Iterable[bytes]:
    read = fobj.read
    while remaining > 0:
        chunk = read(min(_FILE_READ_SIZE, remaining))
        if not chunk:
            raise OSError("file shrank while being sent")
        remaining -= len(chunk)
        yield chunk


#: PS3.7 C.2: Pending statuses say more responses to the same request follow.
_PENDING = frozenset((0xFF00, 0xFF01))


class _Waiter:
    """A request of ours awaiting its final response."""

    __slots__ = ("future", "on_pending")

    def __init__(self, future: asyncio.Future[Any],
                 on_pending: Callable[[Any, bytes | None], Any] | None) -> None:
        self.future = future
        self.on_pending = on_pending


def _padded(chunks: Iterable[bytes]) -> Iterable[bytes]:
    yield from chunks
    yield b"\x00"


def _name(uid: str) -> str:
    return UID(uid).name or uid


class ServiceUser:
    """Our side of DIMSE requests on one association."""

    __slots__ = ("assoc", "_message_id", "_waiters", "send_lock")

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self._message_id = 0
        self._waiters: dict[int, _Waiter] = {}
        #: Held while a message is being written: messages never interleave on the wire.
        self.send_lock = asyncio.Lock()

    def next_message_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1  # US: 1..65535
        return self._message_id

    # -- responses ----------------------------------------------------------------------

    def response_received(self, command: Any, dataset: bytes | None) -> None:
        """A response came (with its data set, if any): a Pending one goes to the
        request's ``on_pending`` callback, the final one answers its waiter."""
        message_id = command.message_id_being_responded_to
        waiter = self._waiters.get(message_id)
        if waiter is None or waiter.future.done():
            log.warning("%s: unexpected response %r", self.assoc.peer_label(), command)
            return
        if getattr(command, "status", None) in _PENDING:
            if waiter.on_pending is not None:
                try:
                    waiter.on_pending(command, dataset)
                except Exception:
                    log.exception("%s: pending-response callback failed", self.assoc.peer_label())
            return
        del self._waiters[message_id]
        waiter.future.set_result((command, dataset))

    def fail_waiters(self) -> None:
        """The association is gone: every pending request is answered None."""
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.future.done():
                waiter.future.set_result((None, None))

    # -- sending ------------------------------------------------------------------------

    async def request(
        self,
        context_id: int,
        message: Any,
        dataset: bytes | memoryview | None = None,
        stream: Iterable[bytes | memoryview] | None = None,
    ) -> Any:
        """Send one request and return its final response (None: the association
        ended before it came)."""
        response, _ = await self.exchange(context_id, message, dataset, stream)
        return response

    async def exchange(
        self,
        context_id: int,
        message: Any,
        dataset: bytes | memoryview | None = None,
        stream: Iterable[bytes | memoryview] | None = None,
        on_pending: Callable[[Any, bytes | None], Any] | None = None,
    ) -> tuple[Any, bytes | None]:
        """Send one request; return its final response and that response's data set
        (``(None, None)``: the association ended first). Pending responses (PS3.7
        9.1.2.1.6: C-FIND matches, C-GET/C-MOVE progress) go to ``on_pending``."""
        assoc = self.assoc
        if not assoc.is_established:
            raise RuntimeError("the association is not established")
        message_id = message.message_id
        waiter = _Waiter(assoc.loop.create_future(), on_pending)
        self._waiters[message_id] = waiter
        try:
            async with self.send_lock:
                conn = assoc.conn
                if stream is None:
                    try:
                        conn.send_message(context_id, message, dataset, assoc.loop.time())
                    except LocalProtocolError:
                        return None, None  # the association ended while we queued
                    assoc.link.pump()
                else:
                    await self._send_stream(context_id, message, stream)
            return await waiter.future
        finally:
            self._waiters.pop(message_id, None)

    async def _send_stream(self, context_id: int, message: Any,
                           stream: Iterable[bytes | memoryview]) -> None:
        assoc = self.assoc
        conn = assoc.conn
        link = assoc.link
        conn.send_command(context_id, message, assoc.loop.time())
        link.pump()
        try:
            for pdus in iter_dataset_pdus(context_id, stream, conn.peer_max_pdu):
                if not conn.is_established:
                    return
                conn.send_buffers(pdus, assoc.loop.time())
                link.pump()
                transport = link.transport
                if transport is not None and transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                    await link.drain()
        except BaseException as exc:
            # Half a message is on the wire: the association cannot carry another.
            if conn.is_established:
                assoc.abort_local(f"the data set could not be sent: {exc or type(exc).__name__}")
            raise

    # -- contexts -----------------------------------------------------------------------

    def find_context(self, abstract_syntax: str,
                     transfer_syntax: str | None = None) -> PresentationContext:
        for cx in self.assoc.accepted_contexts:
            if str(cx.abstract_syntax) == abstract_syntax and (
                transfer_syntax is None or str(cx.transfer_syntax[0]) == transfer_syntax
            ):
                return cx
        wanted = abstract_syntax + (f" with {transfer_syntax}" if transfer_syntax else "")
        raise ValueError(f"no accepted presentation context for {wanted}")

    def context_for(self, sop_class: str,
                    transfer_syntax: str | None) -> tuple[PresentationContext, str]:
        """The accepted context to send a ``sop_class`` data set in ``transfer_syntax``
        on, and the syntax to send it in: the same one when accepted, else an
        uncompressed one it converts to (None: a data set with no encoding yet, sent
        in any uncompressed syntax). ValueError when there is none."""
        candidates = [cx for cx in self.assoc.accepted_contexts
                      if str(cx.abstract_syntax) == sop_class]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {sop_class}")
        accepted = {str(cx.transfer_syntax[0]): cx for cx in reversed(candidates)}
        if transfer_syntax is not None and transfer_syntax in accepted:
            return accepted[transfer_syntax], transfer_syntax
        if transfer_syntax is None or transfer_syntax in CONVERTIBLE:
            for target in _TARGET_ORDER:
                if target in accepted:
                    return accepted[target], target
        offered = ", ".join(_name(ts) for ts in accepted)
        why = (
            "it is compressed and cannot be converted without decoding its pixel data"
            if transfer_syntax not in CONVERTIBLE
            else "no uncompressed transfer syntax was accepted to convert it to"
        )
        raise ValueError(
            f"no accepted presentation context for {sop_class} in "
            f"{_name(transfer_syntax or '')}: the peer accepted only {offered}, and {why}"
        )

    def _encode_for(self, ds: Dataset, sop_class: str) -> tuple[PresentationContext, bytes]:
        ts = dataset_transfer_syntax(ds)
        context, target = self.context_for(sop_class, ts)
        if ts is not None and ts not in CONVERTIBLE:
            # Pixel data already compressed, sent in its own syntax: the rest is Explicit
            # VR LE around the encapsulated fragments (PS3.5 A.4).
            return context, encode_dataset(ds, _EXPLICIT_LE)
        source = ts or _EXPLICIT_LE  # built in memory: pydicom writes values little endian
        if _BIG_ENDIAN in (source, target) and source != target:
            # pydicom writes OB/OW values (Pixel Data) as they are, unswapped: encode in
            # the data set's own byte order, then convert, swapping by VR.
            return context, transcode(encode_dataset(ds, source), source, target)
        # The same byte order: pydicom writes the target syntax itself, with the VRs the
        # Dataset knows (private elements keep theirs).
        return context, encode_dataset(ds, target)

    # -- services -----------------------------------------------------------------------

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """C-ECHO (PS3.7 9.3.5); the response status as a Dataset (empty: none came)."""
        context = self.find_context(_VERIFICATION)
        message_id = msg_id if msg_id is not None else self.next_message_id()
        rsp = await self.request(context.context_id, CEchoRQ(message_id=message_id))
        return status_dataset(rsp)

    async def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: bytes | str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """C-STORE (PS3.7 9.3.1) of a pydicom Dataset or a Part 10 file path.

        A file is streamed from disk in its stored transfer syntax without being
        decoded. Returns the response status as a Dataset (empty if none came).
        """
        message_id = msg_id if msg_id is not None else self.next_message_id()
        if isinstance(originator_aet, str):
            originator_aet = originator_aet.encode()
        if isinstance(dataset, Dataset):
            sop_class = str(dataset.SOPClassUID)
            sop_instance = str(dataset.SOPInstanceUID)
            context, payload = self._encode_for(dataset, sop_class)
            rq = CStoreRQ(
                message_id=message_id,
                affected_sop_class_uid=sop_class,
                affected_sop_instance_uid=sop_instance,
                priority=priority,
                move_originator_application_entity_title=originator_aet,
                move_originator_message_id=originator_id,
            )
            return status_dataset(await self.request(context.context_id, rq, dataset=payload))
        path = os.fspath(dataset)
        with open(path, "rb") as fobj:
            try:
                meta = read_part10_header(fobj)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            stored = meta.transfer_syntax_uid
            size = os.fstat(fobj.fileno()).st_size - meta.dataset_offset
            sop_class, sop_instance = read_sop_uids(fobj.read(min(size, _HEAD_SIZE)), stored)
            fobj.seek(meta.dataset_offset)
            if (sop_class and meta.sop_class_uid and sop_class != meta.sop_class_uid) or (
                sop_instance and meta.sop_instance_uid and sop_instance != meta.sop_instance_uid
            ):
                log.warning(
                    "%s: the File Meta names %s / %s but the data set %s / %s; "
                    "the C-STORE-RQ uses the data set's", path, meta.sop_class_uid,
                    meta.sop_instance_uid, sop_class, sop_instance,
                )
            sop_class = sop_class or meta.sop_class_uid
            sop_instance = sop_instance or meta.sop_instance_uid
            if not sop_class or not sop_instance:
                raise ValueError(
                    f"{path}: neither the data set nor the File Meta Information has the "
                    "SOP Class/Instance UID (PS3.10 7.1)"
                )
            try:
                context, target = self.context_for(sop_class, stored)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            chunks: Iterable[bytes | memoryview] = _read_chunks(fobj, size)
            if target != stored:
                chunks = iter_transcoded(chunks, stored, target)
            elif stored == _DEFLATED and size % 2:
                chunks = _padded(chunks)  # PS3.5 A.5: a deflated stream padded to even
            rq = CStoreRQ(
                message_id=message_id,
                affected_sop_class_uid=sop_class,
                affected_sop_instance_uid=sop_instance,
                priority=priority,
                move_originator_application_entity_title=originator_aet,
                move_originator_message_id=originator_id,
            )
            rsp = await self.request(context.context_id, rq, stream=chunks)
        return status_dataset(rsp)

    async def send_c_store_raw(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes | memoryview,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> CStoreRSP | None:
        """C-STORE (PS3.7 9.3.1) of a data set already encoded in ``transfer_syntax_uid``.

        The bytes go out as they are (no decoding, no re-encoding) on the accepted
        context for that SOP class and transfer syntax; they are referenced, not copied,
        so they must not change until the response came. For senders in a hot loop, it
        returns the C-STORE-RSP message itself (``.status``, ``.error_comment``) rather
        than a pydicom Dataset, or None when no response came (aborted, timed out).
        Raises ValueError if no such context was accepted.
        """
        context = self.find_context(sop_class_uid, transfer_syntax_uid)
        message_id = msg_id if msg_id is not None else self.next_message_id()
        rq = CStoreRQ(
            message_id=message_id,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid,
            priority=priority,
        )
        return await self.request(context.context_id, rq, dataset=dataset)
