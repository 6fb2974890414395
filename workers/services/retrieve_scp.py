"""C-GET and C-MOVE SCPs (PS3.4 C.4.3, C.4.2): stored instances sent as C-STORE
sub-operations, streamed from disk without decoding.

Theory of operation: the Identifier (unique keys only) becomes an IMAGE-level
:class:`storage.CatalogQuery` (:func:`~.query_model.retrieve_plan`); its rows, read a
page at a time off the loop, are turned into the file paths the
:class:`storage.InstanceStore` gives (``path_of``), their SOP classes and transfer
syntaxes (:class:`Item`). Each is then one C-STORE sub-operation, ``send_c_store(path)``
on an association of the engine, which streams the Part 10 file's data set as stored:

* C-GET (:class:`GetSCP`) sends on the requestor's own association, on a context of
  the instance's SOP class for which the requestor granted us the SCU role (SCP/SCU
  Role Selection, PS3.7 D.3.3.4); an instance with no such context fails.
* C-MOVE (:class:`MoveSCP`) looks the Move Destination up in the AE table (unknown:
  A801) and requests a new association to it, proposing for each SOP class one context
  per stored transfer syntax plus one of the uncompressed ones (for conversion);
  each C-STORE-RQ names the C-MOVE's requestor and Message ID as its Move Originator.
  More SOP classes than fit one association's 128 contexts take several associations,
  one after the other.

In an index shared by the nodes of a cluster (``node`` given), an instance that only
other nodes hold cannot be sent from here (its file is on another machine): its
sub-operation fails, it is listed in the Failed SOP Instance UID List, and the log says
which node holds it. Retrieve it from that node (its own port), not through the
balancer. Instances this node holds are sent as usual, whatever else the request names.

After each sub-operation a pending response reports the Number of Remaining,
Completed, Failed and Warning Sub-operations. A C-CANCEL-RQ stops at the next
sub-operation (FE00). The final response is 0000 when every sub-operation succeeded,
B000 when some failed or warned, A702 when none could be attempted (the destination
refused the association), with the Failed SOP Instance UID List whenever one failed
(PS3.4 C.4.2.1.4, C.4.3.1.4). An association that ends on either side ends the
operation; nothing is retried.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, NamedTuple

import msgspec

from engine import status
from engine.dimse import C_GET_RQ, C_MOVE_RQ
from engine.presentation import PresentationContext
from engine.services import Reply, Request, ServiceRegistry
from storage import Catalog, CatalogError, InstanceRecord, InstanceStore, StorageError

from .find_scp import PAGE_ROWS, STATUS_CATALOG_FAILED
from .outbound import AETable, Outbound, ae_text
from .qr_operation import IdentifierOperation, Rows, log
from .query_model import (
    GET_SOP_CLASSES,
    MODELS,
    MOVE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    IdentifierError,
    Model,
    failed_instances,
    retrieve_plan,
)

__all__ = ["GetSCP", "MoveSCP", "Item", "Counts", "MAX_SUBOPERATIONS"]

#: A retrieve is held in memory as one small :class:`Item` per instance (~300 bytes);
#: this many bounds that to a few hundred MB. Larger ones are refused A702.
MAX_SUBOPERATIONS = 1_000_000
#: The sub-operation counts are US (PS3.7 9.3.3.2): larger numbers are reported as this.
_MAX_COUNT = 0xFFFF
#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
_MAX_CONTEXTS = 128
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
# PS3.7 C.4: 0001 and Bxxx are warnings; everything else that is not success failed.
_WARNINGS = range(0xB000, 0xC000)


class Item(NamedTuple):
    """One instance to send: its UIDs, stored transfer syntax and file."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str


class Counts:
    """The sub-operation counts of one retrieve."""

    __slots__ = ("remaining", "completed", "failed", "warning", "failed_uids")

    def __init__(self, total: int) -> None:
        self.remaining = total
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []

    def record(self, uid: str, code: int | None) -> None:
        """The outcome of one sub-operation (``code`` None: it could not be made)."""
        self.remaining -= 1
        if code == status.SUCCESS:
            self.completed += 1
        elif code is not None and (code == status.WARNING or code in _WARNINGS):
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)

    def fail_rest(self, items: list[Item]) -> None:
        for item in items:
            self.record(item.sop_instance_uid, None)

    def fields(self, *, remaining: bool = True) -> dict[str, int]:
        out = {
            "number_of_completed_sub_operations": min(self.completed, _MAX_COUNT),
            "number_of_failed_sub_operations": min(self.failed, _MAX_COUNT),
            "number_of_warning_sub_operations": min(self.warning, _MAX_COUNT),
        }
        if remaining:
            out["number_of_remaining_sub_operations"] = min(self.remaining, _MAX_COUNT)
        return out


def _store_status(rsp: Any) -> int | None:
    """The Status of a C-STORE-RSP as ``send_c_store`` returns it (None: none came)."""
    code = getattr(rsp, "Status", None)
    return int(code) if code is not None else None


class _Retrieve:
    """What C-GET and C-MOVE share: reading the identifier, finding the instances,
    counting, answering."""

    command: int = 0
    sop_classes: tuple[str, ...] = ()

    def __init__(
        self,
        catalog: Catalog,
        store: InstanceStore,
        *,
        executor: concurrent.futures.Executor | None = None,
        page_rows: int = PAGE_ROWS,
        node: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.executor = executor
        self.page_rows = page_rows
        #: This node's id in a shared index (module doc); None: every row is ours.
        self.node = node
        self.accepting = True

    def contexts(self) -> list[PresentationContext]:
        return [PresentationContext(abstract_syntax=uid, transfer_syntax=list(TRANSFER_SYNTAXES))
                for uid in self.sop_classes]

    def register(self, registry: ServiceRegistry) -> None:
        registry.add(self, [self.command], self.sop_classes)

    def start(self, request: Request) -> Any:
        if not self.accepting:
            return status.REFUSED_OUT_OF_RESOURCES, "the node is shutting down"
        refused = self.check(request)
        if refused is not None:
            return refused
        model = MODELS[request.abstract_syntax]
        return IdentifierOperation(lambda identifier: self.retrieve(request, model, identifier))

    def check(self, request: Request) -> Any:
        """An answer refusing the request before its identifier is read, or None."""
        return None

    async def items(self, request: Request, model: Model, identifier: bytes) -> list[Item] | Reply:
        """The instances the identifier names, or the Reply refusing it."""
        try:
            plan = retrieve_plan(identifier, request.transfer_syntax, model)
        except IdentifierError as exc:
            log.info("%s: retrieve refused: %s", request.association.peer_label(), exc.comment)
            return Reply(exc.status, exc.comment, fields=exc.reply_fields() or None)
        items: list[Item] = []
        query = plan.query
        if self.node is not None:
            query = msgspec.structs.replace(query, aggregates=frozenset({"nodes"}))
        elsewhere: dict[str, int] = {}
        rows = Rows(self.catalog.query(query), self.page_rows, self.executor)
        try:
            async for page in rows.pages():
                for row in page:
                    nodes = row.pop("nodes", None)
                    record = InstanceRecord(**row)
                    if nodes and self.node not in nodes:
                        path = ""  # another node's file: a failed sub-operation
                        elsewhere[nodes[0]] = elsewhere.get(nodes[0], 0) + 1
                    else:
                        try:
                            path = self.store.path_of(record)
                        except StorageError as exc:
                            log.error("%s: %s", record.sop_instance_uid, exc)
                            path = ""
                    items.append(Item(record.sop_instance_uid, record.sop_class_uid,
                                      record.transfer_syntax_uid, path))
                if len(items) > MAX_SUBOPERATIONS:
                    return Reply(status.OUT_OF_RESOURCES_SUBOPERATIONS,
                                 f"more than {MAX_SUBOPERATIONS} instances in one retrieve")
                if request.cancelled:
                    return Reply(status.CANCEL, fields=Counts(0).fields())
        except CatalogError as exc:
            log.error("%s: retrieve failed in the catalog: %s", request.association.peer_label(), exc)
            return Reply(STATUS_CATALOG_FAILED, f"catalog failed: {exc}")
        except (ValueError, msgspec.ValidationError, TypeError) as exc:
            log.error("%s: retrieve: bad catalog row: %s", request.association.peer_label(), exc)
            return Reply(STATUS_CATALOG_FAILED, "catalog row unreadable")
        finally:
            rows.close()
        if elsewhere:
            log.warning("%s: retrieve names instance(s) held only by other nodes, failed here (retrieve "
                        "them from the node holding them): %s", request.association.peer_label(),
                        ", ".join(f"{count} on {node}" for node, count in sorted(elsewhere.items())))
        return items

    async def retrieve(self, request: Request, model: Model, identifier: bytes) -> Any:
        raise NotImplementedError

    async def send_all(self, request: Request, assoc: Any, items: list[Item], counts: Counts,
                       usable: Any, **store_args: Any) -> bool:
        """Send ``items`` on ``assoc`` (``usable(item)``: whether a context can carry it),
        a pending response to ``request`` after each. False: stopped (cancel, or an
        association gone)."""
        peer = request.association
        for index, item in enumerate(items):
            if request.cancelled or not peer.is_established:
                return False
            if not assoc.is_established:
                counts.fail_rest(items[index:])
                return True
            code: int | None = None
            if item.path and usable(item):
                try:
                    rsp = await assoc.send_c_store(item.path, **store_args)
                except (OSError, ValueError, StorageError) as exc:
                    log.warning("%s: sub-operation for %s not sent: %s", assoc.peer_label(),
                                item.sop_instance_uid, exc)
                else:
                    code = _store_status(rsp)
                    if code is None and not assoc.is_established:
                        counts.record(item.sop_instance_uid, None)
                        counts.fail_rest(items[index + 1:])
                        return True
            counts.record(item.sop_instance_uid, code)
            if counts.remaining:
                await request.send_pending(status.PENDING, **counts.fields())
        return True

    def final(self, request: Request, counts: Counts, *, cancelled: bool = False,
              refused: str | None = None) -> Reply:
        """The final response (PS3.4 C.4.2.1.5, C.4.3.1.5)."""
        if cancelled:
            code, comment = status.CANCEL, None
        elif refused is not None:
            code, comment = status.OUT_OF_RESOURCES_SUBOPERATIONS, refused
        elif counts.failed or counts.warning:
            code, comment = status.SUBOPERATIONS_WARNING, None
        else:
            code, comment = status.SUCCESS, None
        data = failed_instances(counts.failed_uids, request.transfer_syntax) if counts.failed_uids else None
        return Reply(code, comment, data, counts.fields(remaining=cancelled))


class GetSCP(_Retrieve):
    """C-GET SCP (PS3.4 C.4.3) of the Patient Root and Study Root models: instances go
    back on the requestor's association, where it granted us the SCU role."""

    command = C_GET_RQ
    sop_classes = GET_SOP_CLASSES

    async def retrieve(self, request: Request, model: Model, identifier: bytes) -> Any:
        found = await self.items(request, model, identifier)
        if isinstance(found, Reply):
            return found
        assoc = request.association
        counts = Counts(len(found))
        ours = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts if cx.as_scu}
        done = await self.send_all(request, assoc, found, counts,
                                   lambda item: item.sop_class_uid in ours)
        return self.final(request, counts, cancelled=not done)


class MoveSCP(_Retrieve):
    """C-MOVE SCP (PS3.4 C.4.2) of the Patient Root and Study Root models: instances go
    to the Move Destination, found in ``ae_table``, on associations we request."""

    command = C_MOVE_RQ
    sop_classes = MOVE_SOP_CLASSES

    def __init__(self, catalog: Catalog, store: InstanceStore, *, ae_table: AETable,
                 outbound: Outbound, **kwargs: Any) -> None:
        super().__init__(catalog, store, **kwargs)
        self.ae_table = ae_table
        self.outbound = outbound

    def check(self, request: Request) -> Any:
        destination = ae_text(request.command.move_destination)
        if destination not in self.ae_table:
            log.info("%s: C-MOVE to unknown destination %r", request.association.peer_label(), destination)
            return status.MOVE_DESTINATION_UNKNOWN, f"move destination {destination!r} unknown"
        return None

    async def retrieve(self, request: Request, model: Model, identifier: bytes) -> Any:
        destination = ae_text(request.command.move_destination)
        remote = self.ae_table[destination]
        found = await self.items(request, model, identifier)
        if isinstance(found, Reply):
            return found
        counts = Counts(len(found))
        originator = ae_text(request.association.requestor.ae_title)
        for batch, contexts in _batches(found):
            if request.cancelled:
                return self.final(request, counts, cancelled=True)
            assoc = await self.outbound.associate(remote, destination, contexts)
            if not assoc.is_established:
                log.warning("%s: C-MOVE: no association with %s at %s:%s", request.association.peer_label(),
                            destination, remote.host, remote.port)
                counts.fail_rest(batch)
                continue
            try:
                done = await self.send_all(
                    request, assoc, batch, counts, lambda item: True,
                    originator_aet=originator or None, originator_id=request.message_id,
                )
            finally:
                if assoc.is_established:
                    await assoc.release()
                else:
                    assoc.abort()
            if not done:
                return self.final(request, counts, cancelled=True)
        if found and counts.failed == len(found) and not counts.completed and not counts.warning:
            return self.final(request, counts, refused=f"no sub-operation reached {destination}")
        return self.final(request, counts)


def _batches(items: list[Item]) -> list[tuple[list[Item], list[PresentationContext]]]:
    """``items`` grouped by SOP class into associations of at most 128 contexts: per
    class, one context per stored transfer syntax, plus one of every uncompressed
    syntax (Explicit VR LE first) when any of them is stored."""
    by_class: dict[str, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.sop_class_uid, []).append(item)
    batches: list[tuple[list[Item], list[PresentationContext]]] = []
    current: list[Item] = []
    contexts: list[PresentationContext] = []
    for sop_class, members in by_class.items():
        syntaxes = list(dict.fromkeys(item.transfer_syntax_uid for item in members))
        wanted = [PresentationContext(abstract_syntax=sop_class, transfer_syntax=[ts]) for ts in syntaxes]
        if any(ts in _UNCOMPRESSED for ts in syntaxes):
            wanted.append(PresentationContext(abstract_syntax=sop_class, transfer_syntax=list(_UNCOMPRESSED)))
        if contexts and len(contexts) + len(wanted) > _MAX_CONTEXTS:
            batches.append((current, contexts))
            current, contexts = [], []
        current.extend(members)
        contexts.extend(wanted[:_MAX_CONTEXTS])
    if current:
        batches.append((current, contexts))
    return batches
