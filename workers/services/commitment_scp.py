"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

Theory of operation, for one request (PS3.4 J.3.2, J.3.3):

1. **N-ACTION-RQ** (action type 1) on the well-known instance
   1.2.840.10008.1.20.1.1 carries a Transaction UID and the Referenced SOP Sequence.
   It is checked (0112/0117 another instance, 0123 another action, 0115 missing or
   invalid Action Information) and **persisted** -- one synced file under the storage
   root's ``.commitment/`` (:class:`storage.PendingRequests`), named by its Transaction
   UID -- before N-ACTION-RSP 0000 is sent. A request that cannot be persisted is
   answered 0110 and nothing is promised.
2. **Decision**, per reference: is an instance with that SOP Instance UID in the
   :class:`storage.Catalog` (waiting up to ``grace_s`` for an index that lags behind
   the stores just answered), of the same SOP Class (else 0119), is its file there
   with the size recorded (else 0110), and, with ``verify``, do the data set bytes
   still have the recorded digest (by the record's algorithm, ``xxh3-128`` or
   ``sha256``; else 0110)? Unknown instances fail 0112, a SOP class UID that is not a
   UID 0122. Files are read in an executor thread. In an index shared by the nodes of a
   cluster (``node`` given), an instance that only another node holds is committed on
   the index's word (that node indexed it once its file was durable; its file cannot be
   looked at from here), and with ``verify`` it fails 0110, its digest not being
   checkable here.
3. **N-EVENT-REPORT-RQ** with event type 1 (all committed) or 2 (some failed, in the
   Failed SOP Sequence with their Failure Reasons), Transaction UID and the Referenced
   SOP Sequence of the committed ones (J.3.3.1). It goes on the N-ACTION's association
   while that is still established; otherwise on a new association to the requestor's
   AE title, found in the AE table, on which the node is association requestor and
   proposes the SCP role for the Storage Commitment SOP Class (SCP/SCU Role Selection,
   PS3.7 D.3.3.4; J.3.3). Once an N-EVENT-REPORT-RSP came (whatever its status) the
   request's file is removed.

A report that could not be delivered stays persisted and is released; :meth:`sweep`
claims every pending request nobody holds -- after a restart, those of the previous
run -- and reports them on new associations, each retried with a growing delay
(:meth:`run_sweeps`). Requests are locked while held, so the node's workers sharing one
storage root never report one twice. A Transaction UID already pending gets an event
report (not persisted) failing every reference with 0131 (duplicate transaction UID).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

import msgspec
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from engine import status
from engine.dataset import decode_dataset, encode_dataset
from engine.dimse import DATASET_PRESENT, N_ACTION_RQ, NEventReportRQ
from engine.presentation import PresentationContext
from engine.services import Request, ServiceRegistry
from storage import (
    Catalog,
    CatalogError,
    CatalogQuery,
    InstanceRecord,
    Match,
    InstanceStore,
    PendingEntry,
    PendingError,
    PendingRequests,
    StorageError,
    is_valid_uid,
    new_digest,
    read_file_meta,
)

from .outbound import AETable, Outbound, ae_text

__all__ = [
    "CommitmentSCP",
    "COMMITMENT_DIRECTORY",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_INSTANCE",
    "Decision",
]

log = logging.getLogger("scpfleet.services")

#: PS3.4 J.3.1 (PS3.6 Annex A): the SOP class and its well-known SOP instance.
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Where pending requests live, under the storage root.
COMMITMENT_DIRECTORY = ".commitment"

_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
_REQUEST_COMMITMENT = 1  # PS3.4 Table J.3-1: Action Type ID
_ALL_COMMITTED, _SOME_FAILED = 1, 2  # PS3.4 Table J.3-2: Event Type IDs

# PS3.4 J.3.2.1.1, Table J.3-3 and J.3.3.1.1: the attributes of the Action and Event
# Information.
_TRANSACTION_UID = 0x00081195
_REFERENCED_SOP_SEQUENCE = 0x00081199
_FAILED_SOP_SEQUENCE = 0x00081198
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_FAILURE_REASON = 0x00081197

# The Action Information is ~130 bytes per reference: 16 MiB holds over 100,000.
_MAX_ACTION_INFORMATION = 16 << 20
# Waiting for the index (``grace_s``): first and longest pause between catalog looks.
_FIRST_LOOK_S, _LONGEST_LOOK_S = 0.05, 1.0
# A report that could not be delivered is tried again after this, doubling up to the
# second value: a requestor down for a day is not hammered, one back in a minute is
# answered within a couple of minutes.
_RETRY_FIRST_S, _RETRY_LONGEST_S = 30.0, 3600.0
_HASH_READ = 1 << 20


class _Commitment(msgspec.Struct, frozen=True):
    """One request as persisted (JSON): enough to decide and report it after a restart."""

    transaction_uid: str
    references: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID) as received
    requestor: str  # the calling AE title: where to report on a new association
    received_at: float


class Decision(msgspec.Struct, frozen=True):
    """The outcome of one request: committed references, and failed ones with reasons."""

    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]


def _hasher(algorithm: str) -> Any:
    try:
        return new_digest(algorithm)
    except ValueError:
        return None


def _check_file(store: InstanceStore, record: InstanceRecord, verify: bool) -> int | None:
    """None when the stored file of ``record`` is intact, else the Failure Reason."""
    try:
        fp: BinaryIO = store.open_instance(record)
    except StorageError as exc:
        log.warning("commitment: %s: %s", record.sop_instance_uid, exc)
        return status.PROCESSING_FAILURE
    with fp:
        try:
            size = fp.seek(0, 2)
            if size != record.size:
                log.warning("commitment: %s: file is %d bytes, %d were stored", record.sop_instance_uid,
                            size, record.size)
                return status.PROCESSING_FAILURE
            if not verify:
                return None
            hasher = _hasher(record.digest_algorithm)
            if hasher is None:
                log.warning("commitment: %s: digest %s cannot be checked here", record.sop_instance_uid,
                            record.digest_algorithm)
                return status.PROCESSING_FAILURE
            fp.seek(0)
            read_file_meta(fp)  # leaves fp at the data set, whose bytes were digested
            while chunk := fp.read(_HASH_READ):
                hasher.update(chunk)
        except (OSError, StorageError) as exc:
            log.warning("commitment: %s: %s", record.sop_instance_uid, exc)
            return status.PROCESSING_FAILURE
    if hasher.hexdigest() != record.digest:
        log.warning("commitment: %s: data set differs from its digest", record.sop_instance_uid)
        return status.PROCESSING_FAILURE
    return None


def _ui(tag: int, uid: str) -> RawDataElement:
    value = uid.encode("latin-1", "replace")
    if len(value) % 2:
        value += b"\x00"
    return RawDataElement(Tag(tag), "UI", len(value), value, 0, False, True)


def event_information(transaction_uid: str, decision: Decision, transfer_syntax: str) -> bytes:
    """The N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1.1), UIDs as received."""
    ds = Dataset()
    ds[_TRANSACTION_UID] = _ui(_TRANSACTION_UID, transaction_uid)
    items = []
    for sop_class, sop_instance in decision.committed:
        item = Dataset()
        item[_REFERENCED_SOP_CLASS_UID] = _ui(_REFERENCED_SOP_CLASS_UID, sop_class)
        item[_REFERENCED_SOP_INSTANCE_UID] = _ui(_REFERENCED_SOP_INSTANCE_UID, sop_instance)
        items.append(item)
    if items:
        ds.add_new(_REFERENCED_SOP_SEQUENCE, "SQ", Sequence(items))
    failed = []
    for sop_class, sop_instance, reason in decision.failed:
        item = Dataset()
        item[_REFERENCED_SOP_CLASS_UID] = _ui(_REFERENCED_SOP_CLASS_UID, sop_class)
        item[_REFERENCED_SOP_INSTANCE_UID] = _ui(_REFERENCED_SOP_INSTANCE_UID, sop_instance)
        item.add_new(_FAILURE_REASON, "US", reason)
        failed.append(item)
    if failed:
        ds.add_new(_FAILED_SOP_SEQUENCE, "SQ", Sequence(failed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode_dataset(ds, transfer_syntax)


class _ActionInformation:
    """Gathers an N-ACTION's Action Information, then answers with ``run(data)``."""

    __slots__ = ("run", "parts", "size")
    holds_reading = True

    def __init__(self, run: Callable[[bytes], Any]) -> None:
        self.run = run
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if self.size <= _MAX_ACTION_INFORMATION:
            self.parts.append(bytes(data))

    def finish(self) -> Any:
        if self.size > _MAX_ACTION_INFORMATION:
            return status.RESOURCE_LIMITATION, f"over {_MAX_ACTION_INFORMATION >> 20} MiB of references"
        return self.run(b"".join(self.parts))

    def abort(self) -> None:
        self.parts = []


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value or "").strip(" \x00")


def _references(data: bytes, transfer_syntax: str) -> tuple[str, list[tuple[str, str]]]:
    """(Transaction UID, references) of an Action Information; ValueError if unusable."""
    if not data:
        raise ValueError("no Action Information")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = decode_dataset(data, transfer_syntax)
            transaction = _text(ds.get_item(_TRANSACTION_UID).value) if _TRANSACTION_UID in ds else ""
            if _REFERENCED_SOP_SEQUENCE not in ds:
                raise ValueError("Referenced SOP Sequence missing")
            references = []
            for item in ds[_REFERENCED_SOP_SEQUENCE].value:
                sop_class = item.get_item(_REFERENCED_SOP_CLASS_UID) if _REFERENCED_SOP_CLASS_UID in item else None
                sop_instance = (item.get_item(_REFERENCED_SOP_INSTANCE_UID)
                                if _REFERENCED_SOP_INSTANCE_UID in item else None)
                references.append((_text(sop_class.value if sop_class is not None else ""),
                                   _text(sop_instance.value if sop_instance is not None else "")))
    except ValueError:
        raise
    except Exception as exc:  # pydicom's many errors on malformed bytes
        raise ValueError(f"Action Information cannot be decoded: {exc}") from None
    if not is_valid_uid(transaction):
        raise ValueError(f"Transaction UID {transaction[:64]!r} is not a UID")
    if not references:
        raise ValueError("Referenced SOP Sequence is empty")
    return transaction, references


class CommitmentSCP:
    """Storage Commitment Push Model SCP (see the module docstring).

    ``pending`` keeps the requests (``PendingRequests(root, COMMITMENT_DIRECTORY)``);
    ``ae_table`` and ``outbound`` reach requestors on new associations; ``verify``
    checks digests; ``grace_s`` bounds the wait for instances not yet indexed.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: InstanceStore,
        pending: PendingRequests,
        *,
        ae_table: AETable,
        outbound: Outbound,
        verify: bool = False,
        grace_s: float = 10.0,
        executor: concurrent.futures.Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        node: str | None = None,
    ) -> None:
        self.catalog = catalog
        #: This node's id in a shared index (module doc); None: every row is ours.
        self.node = node
        self.store = store
        self.pending = pending
        self.ae_table = ae_table
        self.outbound = outbound
        self.verify = verify
        self.grace_s = grace_s
        self.executor = executor
        self.clock = clock
        self.accepting = True
        self._tasks: set[asyncio.Task[Any]] = set()
        # Transaction UID -> (attempts, not before) of reports that could not be delivered.
        self._retry: dict[str, tuple[int, float]] = {}

    # -- the seam -----------------------------------------------------------------------

    def contexts(self) -> list[PresentationContext]:
        return [PresentationContext(abstract_syntax=STORAGE_COMMITMENT_PUSH_MODEL,
                                    transfer_syntax=_TRANSFER_SYNTAXES)]

    def register(self, registry: ServiceRegistry) -> None:
        registry.add(self, [N_ACTION_RQ], [STORAGE_COMMITMENT_PUSH_MODEL])

    def start(self, request: Request) -> Any:
        command = request.command
        if not self.accepting:
            return status.RESOURCE_LIMITATION, "the node is shutting down"
        instance = command.requested_sop_instance_uid
        if instance != STORAGE_COMMITMENT_INSTANCE:
            code = status.NO_SUCH_OBJECT_INSTANCE if is_valid_uid(instance) else status.INVALID_OBJECT_INSTANCE
            return code, f"the Storage Commitment instance is {STORAGE_COMMITMENT_INSTANCE}"
        if command.action_type_id != _REQUEST_COMMITMENT:
            return status.NO_SUCH_ACTION_TYPE, f"action type {command.action_type_id} is not 1"
        return _ActionInformation(lambda data: self.accept(request, data))

    async def accept(self, request: Request, data: bytes) -> Any:
        """Persist the request, answer it, and report once the N-ACTION-RSP is out."""
        assoc = request.association
        try:
            transaction, references = _references(data, request.transfer_syntax)
        except ValueError as exc:
            log.info("%s: N-ACTION refused: %s", assoc.peer_label(), exc)
            return status.INVALID_ARGUMENT_VALUE, str(exc)
        commitment = _Commitment(transaction, references, ae_text(assoc.requestor.ae_title), time.time())
        loop = asyncio.get_running_loop()
        try:
            entry = await loop.run_in_executor(
                self.executor, self.pending.add, transaction, msgspec.json.encode(commitment))
        except PendingError as exc:
            log.error("%s: storage commitment %s not recorded: %s", assoc.peer_label(), transaction, exc)
            return status.PROCESSING_FAILURE, "cannot record the request"
        if entry is None:
            log.warning("%s: storage commitment %s is already pending", assoc.peer_label(), transaction)
            decision = Decision([], [(c, i, status.DUPLICATE_TRANSACTION_UID) for c, i in references])
            request.after_response(lambda: self._spawn(
                self._deliver(commitment, decision, None, assoc, request.context_id, request.transfer_syntax)))
            return status.SUCCESS
        log.info("%s: storage commitment %s: %d references", assoc.peer_label(), transaction, len(references))
        request.after_response(lambda: self._spawn(
            self._report(commitment, entry, assoc, request.context_id, request.transfer_syntax)))
        return status.SUCCESS

    # -- deciding -----------------------------------------------------------------------

    async def decide(self, commitment: _Commitment) -> Decision:
        """Each reference committed or failed, with its Failure Reason (module doc)."""
        failed: dict[int, int] = {}
        wanted: dict[str, list[int]] = {}
        for index, (sop_class, sop_instance) in enumerate(commitment.references):
            if not is_valid_uid(sop_class):
                failed[index] = status.REFUSED_SOP_CLASS_NOT_SUPPORTED
            elif not is_valid_uid(sop_instance):
                failed[index] = status.NO_SUCH_OBJECT_INSTANCE
            else:
                wanted.setdefault(sop_instance, []).append(index)
        records, elsewhere = await self._records(list(wanted))
        checks: list[tuple[int, InstanceRecord]] = []
        for uid, indexes in wanted.items():
            record = records.get(uid)
            for index in indexes:
                if record is None:
                    failed[index] = status.NO_SUCH_OBJECT_INSTANCE
                elif record.sop_class_uid != commitment.references[index][0]:
                    failed[index] = status.CLASS_INSTANCE_CONFLICT
                elif uid in elsewhere:
                    if self.verify:  # another node's file: its digest cannot be checked here
                        log.warning("commitment: %s is held by node %s: not verifiable here", uid, elsewhere[uid])
                        failed[index] = status.PROCESSING_FAILURE
                else:
                    checks.append((index, record))
        if checks:
            loop = asyncio.get_running_loop()
            reasons = await loop.run_in_executor(
                self.executor, lambda: [_check_file(self.store, r, self.verify) for _, r in checks])
            for (index, _), reason in zip(checks, reasons):
                if reason is not None:
                    failed[index] = reason
        committed = [ref for i, ref in enumerate(commitment.references) if i not in failed]
        failures = [(*commitment.references[i], failed[i]) for i in sorted(failed)]
        return Decision([tuple(ref) for ref in committed], failures)  # type: ignore[misc]

    async def _records(self, uids: list[str]) -> tuple[dict[str, InstanceRecord], dict[str, str]]:
        """The catalog's records of ``uids``, waiting up to ``grace_s`` for missing ones,
        and (in a shared index) those only another node holds, with that node."""
        found: dict[str, InstanceRecord] = {}
        elsewhere: dict[str, str] = {}
        missing = uids
        deadline = self.clock() + self.grace_s
        pause = _FIRST_LOOK_S
        while missing:
            try:
                if self.node is None:
                    for record in self.catalog.find({"sop_instance_uid": missing}):
                        found[record.sop_instance_uid] = record
                else:
                    loop = asyncio.get_running_loop()
                    rows = await loop.run_in_executor(self.executor, self._cluster_rows, missing)
                    for record, nodes in rows:
                        found[record.sop_instance_uid] = record
                        if self.node not in nodes:
                            elsewhere[record.sop_instance_uid] = nodes[0] if nodes else "?"
            except CatalogError as exc:
                log.warning("commitment: catalog: %s", exc)
            missing = [uid for uid in missing if uid not in found]
            now = self.clock()
            if not missing or now >= deadline:
                break
            await asyncio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, _LONGEST_LOOK_S)
        return found, elsewhere

    def _cluster_rows(self, uids: list[str]) -> list[tuple[InstanceRecord, list[str]]]:
        """Every node's rows of ``uids`` (this node's first), with the nodes holding each."""
        query = CatalogQuery("IMAGE", (Match("sop_instance_uid", "equal", tuple(uids)),), frozenset({"nodes"}))
        cursor = self.catalog.query(query)
        out = []
        try:
            while page := cursor.fetch(1000):
                for row in page:
                    nodes = row.pop("nodes")
                    out.append((InstanceRecord(**row), nodes))
        finally:
            cursor.close()
        return out

    # -- reporting ----------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, commitment: _Commitment, entry: PendingEntry, assoc: Any,
                      context_id: int | None, transfer_syntax: str | None) -> bool:
        """Decide, deliver, and remove the request once delivered (else release it, to
        be retried after a delay). True when delivered."""
        loop = asyncio.get_running_loop()
        delivered = False
        try:
            decision = await self.decide(commitment)
            delivered = await self._deliver(commitment, decision, entry, assoc, context_id, transfer_syntax)
        except Exception:
            log.exception("commitment %s: report failed", commitment.transaction_uid)
        finally:
            if delivered:
                self._retry.pop(commitment.transaction_uid, None)
                try:
                    await loop.run_in_executor(self.executor, entry.done)
                except PendingError as exc:
                    log.error("commitment %s: reported, but %s", commitment.transaction_uid, exc)
            else:
                attempts, _ = self._retry.get(commitment.transaction_uid, (0, 0.0))
                delay = min(_RETRY_FIRST_S * 2 ** attempts, _RETRY_LONGEST_S)
                self._retry[commitment.transaction_uid] = (attempts + 1, self.clock() + delay)
                entry.release()
        return delivered

    async def _deliver(self, commitment: _Commitment, decision: Decision, entry: PendingEntry | None,
                       assoc: Any, context_id: int | None, transfer_syntax: str | None) -> bool:
        """Send the report: on ``assoc`` if still established, else on a new association
        to the requestor. True once an N-EVENT-REPORT-RSP came."""
        event = _SOME_FAILED if decision.failed else _ALL_COMMITTED
        if assoc is not None and assoc.is_established and context_id is not None and transfer_syntax:
            if await self._send(assoc, context_id, transfer_syntax, commitment, decision, event):
                return True
        remote = self.ae_table.get(commitment.requestor)
        if remote is None:
            log.warning("commitment %s: %r is not in the AE table and its association has ended; "
                        "the report waits", commitment.transaction_uid, commitment.requestor)
            return False
        context = PresentationContext(abstract_syntax=STORAGE_COMMITMENT_PUSH_MODEL,
                                      transfer_syntax=_TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        report = await self.outbound.associate(remote, commitment.requestor, [context])
        if not report.is_established:
            log.warning("commitment %s: no association with %s at %s:%s", commitment.transaction_uid,
                        commitment.requestor, remote.host, remote.port)
            return False
        try:
            accepted = next((cx for cx in report.accepted_contexts
                             if str(cx.abstract_syntax) == STORAGE_COMMITMENT_PUSH_MODEL), None)
            if accepted is None:
                log.warning("commitment %s: %s accepted no Storage Commitment context",
                            commitment.transaction_uid, commitment.requestor)
                return False
            return await self._send(report, accepted.context_id, str(accepted.transfer_syntax[0]),
                                    commitment, decision, event)
        finally:
            if report.is_established:
                await report.release()
            else:
                report.abort()

    async def _send(self, assoc: Any, context_id: int, transfer_syntax: str, commitment: _Commitment,
                    decision: Decision, event: int) -> bool:
        message = NEventReportRQ(
            message_id=assoc.scu.next_message_id(),
            affected_sop_class_uid=STORAGE_COMMITMENT_PUSH_MODEL,
            affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
            event_type_id=event,
            command_data_set_type=DATASET_PRESENT,
        )
        data = event_information(commitment.transaction_uid, decision, transfer_syntax)
        try:
            rsp, _ = await assoc.scu.exchange(context_id, message, data)
        except RuntimeError:  # the association ended meanwhile
            return False
        if rsp is None:
            return False
        code = getattr(rsp, "status", None)
        if code != status.SUCCESS:
            log.warning("%s: N-EVENT-REPORT for %s answered 0x%04X", assoc.peer_label(),
                        commitment.transaction_uid, code if isinstance(code, int) else -1)
        log.info("%s: storage commitment %s reported: %d committed, %d failed", assoc.peer_label(),
                 commitment.transaction_uid, len(decision.committed), len(decision.failed))
        return True

    # -- after a restart ----------------------------------------------------------------

    async def sweep(self) -> int:
        """Report every pending request nobody holds (a previous run's, or one whose
        report failed and whose retry is due), on new associations. Returns how many
        were reported."""
        loop = asyncio.get_running_loop()
        try:
            entries = await loop.run_in_executor(self.executor, self.pending.claim)
        except PendingError as exc:
            log.error("commitment sweep: %s", exc)
            return 0
        reported = 0
        now = self.clock()
        reached = 0
        try:
            for reached, entry in enumerate(entries, 1):
                retry = self._retry.get(entry.key)
                if retry is not None and retry[1] > now:
                    entry.release()
                    continue
                try:
                    commitment = msgspec.json.decode(entry.payload, type=_Commitment)
                except msgspec.DecodeError as exc:
                    log.error("commitment %s: pending request unreadable (%s); set aside", entry.key, exc)
                    await loop.run_in_executor(self.executor, entry.set_aside)
                    continue
                if await self._report(commitment, entry, None, None, None):
                    reported += 1
        finally:
            for entry in entries[reached:]:  # a sweep cut short lets go of what it did not reach
                entry.release()
        return reported

    async def run_sweeps(self, interval_s: float = 60.0) -> None:
        """Sweep now, then every ``interval_s``, until cancelled."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("commitment sweep failed")
            await asyncio.sleep(interval_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop taking requests; wait (bounded) for reports under way. A report cut off
        here stays pending for the next run."""
        self.accepting = False
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
