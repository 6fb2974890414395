"""Storage SCP (PS3.4 Annex B): each C-STORE streamed into an :class:`~storage.InstanceStore`.

Theory of operation: on a C-STORE-RQ the provider opens an upload in the store (the
store checks the command's UIDs and starts the file); each data set fragment the
engine hands over is written straight through (``Upload.write`` of the framer's
memoryview); when the last one has come, ``Upload.finish`` validates the data set and
publishes it per the configured durability. With durability ``none`` that happens
inline and the C-STORE-RSP is answered in the same call, without a task; otherwise the
engine awaits the store's future while reading from this peer is paused, so a slow
disk slows the peer through TCP instead of growing our memory.

Every refusal is a :class:`storage.StoreRefused` whose storage-level kind maps to one
C-STORE status (:func:`store_status`, the one table of them); the Error Comment says
why. A :class:`StoreObserver` hears each success and failure (the node's counters and
association log lines); nothing else here knows about the node.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from engine import status
from engine.dimse import C_STORE_RQ
from engine.presentation import PresentationContext
from engine.services import ServiceRegistry
from engine.sop_class import STORAGE_SOP_CLASSES
from storage import InstanceRecord, InstanceStore, Refusal, StoreRefused, Upload, UploadRequest

__all__ = [
    "StorageSCP",
    "StoreObserver",
    "store_status",
    "STATUS_DUPLICATE_REFUSED",
    "TRANSFER_SYNTAXES",
    "calling_title",
]

#: Duplicate refused (policy ``reject``). The Storage Service Class has no code for it;
#: Cannot understand (Cxxx) is the failure range whose low bits are ours to define, and
#: 0x111 echoes PS3.7 C.4's "Duplicate SOP Instance" (0111), which C-STORE may not use.
STATUS_DUPLICATE_REFUSED = 0xC111

#: The C-STORE status answering each storage refusal (PS3.4 Table B.2-1 and the general
#: statuses PS3.7 9.1.1.1.9 allows): A7xx out of resources (disk full, I/O error);
#: A9xx data set does not match (its UIDs contradict the command, or Study/Series
#: Instance UID missing or not a UID); Cxxx cannot understand (not readable far enough
#: to find them); 0117 invalid SOP instance and 0122 SOP class not supported (the
#: command's UIDs are not UIDs).
_REFUSAL_STATUS = {
    Refusal.OUT_OF_RESOURCES: status.REFUSED_OUT_OF_RESOURCES,
    Refusal.DATASET_MISMATCH: status.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Refusal.UNREADABLE: status.ERROR_CANNOT_UNDERSTAND,
    Refusal.INVALID_INSTANCE_UID: status.INVALID_OBJECT_INSTANCE,
    Refusal.INVALID_SOP_CLASS_UID: status.REFUSED_SOP_CLASS_NOT_SUPPORTED,
    Refusal.DUPLICATE: STATUS_DUPLICATE_REFUSED,
}


def store_status(kind: Refusal) -> int:
    """The C-STORE status that answers a store refused for ``kind``."""
    return _REFUSAL_STATUS[kind]


def _transfer_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax a C-STORE data set can travel in (an archive takes them all).

    From pydicom's UID registry, less those that are not data set encodings for the
    network: MIME and XML encodings (PS3.18), the SMPTE ST 2110 ones (DICOM-RTV only)
    and the retired Papyrus one. Native syntaxes first.
    """
    from pydicom._uid_dict import UID_dictionary

    excluded_prefixes = ("1.2.840.10008.1.2.6.", "1.2.840.10008.1.2.7.", "1.2.840.10008.1.20")
    native = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
    others = [
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "Transfer Syntax" and uid not in native
        and not uid.startswith(excluded_prefixes)
    ]
    return tuple(native + others)


TRANSFER_SYNTAXES = _transfer_syntaxes()
#: PS3.4 B.5: the root under which the standard's storage SOP classes live; it only
#: stands for "any other" in :meth:`StorageSCP.any_other_context`, never negotiated.
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1"


def calling_title(assoc: Any) -> str:
    """The requestor's AE title as text: the peer chooses these 16 bytes, so anything
    but printable ASCII is replaced (a line break must not forge a log line, CWE-117);
    "-" when empty. Remembered per title: every C-STORE asks."""
    title = assoc.requestor.ae_title
    if type(title) is not bytes:
        return _title_text(title)
    text = _TITLES.get(title)
    if text is None:
        text = _title_text(title)
        if len(_TITLES) >= _TITLES_MAX:
            _TITLES.clear()
        _TITLES[title] = text
    return text


def _title_text(title: Any) -> str:
    if not title:
        return "-"
    text = bytes(title).strip(b" \x00").decode("ascii", "replace")
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text) or "-"


#: Titles already turned into text; peers choose them, so the memory is bounded (past
#: it, it starts again).
_TITLES: dict[bytes, str] = {}
_TITLES_MAX = 1024


class StoreObserver(Protocol):
    """Hears the outcome of every C-STORE (the node's counters and logs)."""

    def stored(self, assoc: Any, size: int, seconds: float) -> None:
        """An instance is stored (durable per the configuration): ``size`` bytes."""

    def failed(self, assoc: Any, sop_instance_uid: str, status: int, reason: str) -> None:
        """A store was refused with ``status`` for ``reason``."""


class _Store:
    """One C-STORE in progress (an :class:`engine.services.Operation`)."""

    __slots__ = ("scp", "assoc", "sop", "upload", "refused", "started")
    holds_reading = True

    def __init__(self, scp: StorageSCP, assoc: Any, sop: str, upload: Upload, started: float) -> None:
        self.scp = scp
        self.assoc = assoc
        self.sop = sop
        self.upload = upload
        self.refused: StoreRefused | None = None
        self.started = started

    def write(self, data: memoryview) -> None:
        if self.refused is None:
            try:
                self.upload.write(data)
            except StoreRefused as exc:  # the upload has already left no trace
                self.refused = exc

    def finish(self) -> Any:
        if self.refused is not None:
            return self.scp.refused(self.assoc, self.sop, self.refused)
        try:
            done = self.upload.finish()
        except StoreRefused as exc:
            return self.scp.refused(self.assoc, self.sop, exc)
        if type(done) is InstanceRecord:
            return self._stored()
        return self._published(done)

    async def _published(self, done: Any) -> Any:
        try:
            await done
        except StoreRefused as exc:
            return self.scp.refused(self.assoc, self.sop, exc)
        return self._stored()

    def _stored(self) -> int:
        observer = self.scp.observer
        if observer is not None:
            observer.stored(self.assoc, self.upload.size, self.scp.clock() - self.started)
        return status.SUCCESS

    def abort(self) -> None:
        self.upload.abort()


class StorageSCP:
    """The Storage SCP of every storage SOP class in every transfer syntax.

    ``called_ae`` is written to the files' File Meta (Receiving AE);
    ``role_selection`` lets a requestor take the SCP role (see :meth:`contexts`). While
    :attr:`accepting` is False (the node is draining), a new C-STORE is refused
    A700 and its association aborted; stores in progress finish.
    """

    def __init__(
        self,
        store: InstanceStore,
        *,
        called_ae: str,
        observer: StoreObserver | None = None,
        sop_classes: tuple[str, ...] = STORAGE_SOP_CLASSES,
        transfer_syntaxes: tuple[str, ...] = TRANSFER_SYNTAXES,
        clock: Any = time.monotonic,
        role_selection: bool = False,
    ) -> None:
        self.store = store
        self.called_ae = called_ae
        self.observer = observer
        self.sop_classes = tuple(str(uid) for uid in sop_classes)
        self.transfer_syntaxes = transfer_syntaxes
        self.clock = clock
        self.role_selection = role_selection
        self.accepting = True

    def contexts(self) -> list[PresentationContext]:
        """One context per storage SOP class. With ``role_selection`` a requestor may
        take either role (PS3.7 D.3.3.4): a C-GET SCU proposes the SCP role for the
        classes it wants back, and this node then sends them as SCU; without it the
        proposal is ignored and the default roles apply."""
        role = True if self.role_selection else None
        return [PresentationContext(abstract_syntax=uid, transfer_syntax=self.transfer_syntaxes,
                                    scu_role=role, scp_role=role)
                for uid in self.sop_classes]

    def any_other_context(self) -> PresentationContext:
        """The template for storage SOP classes not in :attr:`sop_classes` (private or
        newer than pydicom's dictionary): every transfer syntax, the same roles."""
        role = True if self.role_selection else None
        return PresentationContext(abstract_syntax=_STORAGE_ROOT, transfer_syntax=self.transfer_syntaxes,
                                   scu_role=role, scp_role=role)

    def register(self, registry: ServiceRegistry) -> None:
        registry.add(self, [C_STORE_RQ])

    def start(self, request: Any) -> Any:
        assoc = request.association
        command = request.command
        sop = command.affected_sop_instance_uid
        if not self.accepting:
            # Stopping: the stores in flight finish, new ones are not started.
            assoc.loop.call_soon(assoc.abort)
            return self.failed(assoc, sop, status.REFUSED_OUT_OF_RESOURCES,
                               "the node is shutting down")
        started = self.clock()
        try:
            upload = self.store.open(UploadRequest(
                sop_class_uid=command.affected_sop_class_uid,
                sop_instance_uid=sop,
                transfer_syntax_uid=request.transfer_syntax,
                calling_ae=calling_title(assoc),
                called_ae=self.called_ae,
                calling_address=assoc.requestor.address or "",
            ))
        except StoreRefused as exc:
            return self.refused(assoc, sop, exc)
        return _Store(self, assoc, sop, upload, started)

    def refused(self, assoc: Any, sop: str, exc: StoreRefused) -> tuple[int, str]:
        return self.failed(assoc, sop, store_status(exc.kind), exc.reason)

    def failed(self, assoc: Any, sop: str, code: int, reason: str) -> tuple[int, str]:
        if self.observer is not None:
            self.observer.failed(assoc, sop, code, reason)
        return code, reason
