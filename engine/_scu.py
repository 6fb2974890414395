"""DIMSE requests we send: C-ECHO and C-STORE as a service user, in either role.

Theory of operation: a :class:`ServiceUser` belongs to one association. It numbers our
messages (Message ID, PS3.7 9.1.1.1.1), sends one message at a time (a streamed data
set must not interleave with another message, PS3.8 Annex E), and waits for the
response routed back to it by the dispatcher. It does not time out on its own: the
core's DIMSE timer aborts the association when an awaited response does not come, and
every waiter is then answered ``None``.

A Part 10 file is streamed from disk in its stored transfer syntax in large reads,
without decoding; a pydicom ``Dataset`` is encoded in a transfer syntax the peer
accepted. Service providers use the same calls for their sub-operations (C-GET).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from ._dimse import CEchoRQ, CStoreRQ, CStoreRSP, iter_dataset_pdus
from ._errors import LocalProtocolError
from .dataset import UNCOMPRESSED, dataset_transfer_syntax, encode_dataset, read_part10_header
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
        stream: tuple[Any, int] | None = None,
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
        stream: tuple[Any, int] | None = None,
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

    async def _send_stream(self, context_id: int, message: Any, stream: tuple[Any, int]) -> None:
        fobj, remaining = stream
        assoc = self.assoc
        conn = assoc.conn
        link = assoc.link
        conn.send_command(context_id, message, assoc.loop.time())
        link.pump()
        for pdus in iter_dataset_pdus(context_id, _read_chunks(fobj, remaining), conn.peer_max_pdu):
            if not conn.is_established:
                return
            conn.send_buffers(pdus, assoc.loop.time())
            link.pump()
            transport = link.transport
            if transport is not None and transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                await link.drain()

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

    def _encode_for(self, ds: Dataset, sop_class: str) -> tuple[PresentationContext, bytes]:
        ts = dataset_transfer_syntax(ds)
        candidates = [cx for cx in self.assoc.accepted_contexts
                      if str(cx.abstract_syntax) == sop_class]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {sop_class}")
        for cx in candidates:
            if ts is not None and str(cx.transfer_syntax[0]) == ts:
                if ts in UNCOMPRESSED:
                    return cx, encode_dataset(ds, ts)
                # Pixel data already compressed: the rest is Explicit VR LE.
                return cx, encode_dataset(ds, _EXPLICIT_LE)
        if ts is None or ts in UNCOMPRESSED:
            for cx in candidates:
                if str(cx.transfer_syntax[0]) in UNCOMPRESSED:
                    return cx, encode_dataset(ds, str(cx.transfer_syntax[0]))
        raise ValueError(
            f"no accepted presentation context for {sop_class} in transfer syntax {ts}"
        )

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
            if not meta.sop_class_uid or not meta.sop_instance_uid:
                raise ValueError(
                    f"{path}: the File Meta Information has no Media Storage SOP "
                    "Class/Instance UID (PS3.10 7.1)"
                )
            context = self.find_context(meta.sop_class_uid, meta.transfer_syntax_uid)
            size = os.fstat(fobj.fileno()).st_size - meta.dataset_offset
            rq = CStoreRQ(
                message_id=message_id,
                affected_sop_class_uid=meta.sop_class_uid,
                affected_sop_instance_uid=meta.sop_instance_uid,
                priority=priority,
                move_originator_application_entity_title=originator_aet,
                move_originator_message_id=originator_id,
            )
            rsp = await self.request(context.context_id, rq, stream=(fobj, size))
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
