"""C-FIND SCP (PS3.4 C.4.1): the Patient Root and Study Root models, answered from the
catalog.

Theory of operation: a C-FIND-RQ's Identifier is gathered by an
:class:`~.qr_operation.IdentifierOperation` and read into a
:class:`~.query_model.FindPlan` (a refused identifier is answered at once: A900 with
the Offending Element, C000 when it cannot be decoded). The plan's
:class:`storage.CatalogQuery` goes to the :class:`storage.Catalog`, whose cursor is
read a page at a time in an executor thread (:class:`~.qr_operation.Rows`); each row
becomes one pending C-FIND-RSP (FF00, or FF01 when an optional key was not supported)
carrying its Identifier, encoded in the context's transfer syntax. Between responses
the operation yields to the loop, so the peer's C-CANCEL-RQ is read and honoured
(FE00, PS3.4 C.4.1.2.3) and a peer that stops reading slows the query down instead of
growing our buffers. The final response is 0000; a catalog failure is C001.

It holds no state between requests beyond its configuration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from engine import status
from engine.dimse import C_FIND_RQ
from engine.presentation import PresentationContext
from engine.services import Reply, Request, ServiceRegistry
from storage import Catalog, CatalogError

from .qr_operation import IdentifierOperation, Rows, log
from .query_model import FIND_SOP_CLASSES, MODELS, TRANSFER_SYNTAXES, IdentifierError, Model, find_plan

__all__ = ["FindSCP", "STATUS_CATALOG_FAILED"]

#: A catalog that fails under a query: "Unable to process" (PS3.4 Table C.4-1, Cxxx),
#: 001 to tell it from an identifier that cannot be decoded (C000).
STATUS_CATALOG_FAILED = 0xC001
#: Rows per catalog page: a page is read in one executor call (a few ms); 256 keeps
#: the first response quick and the per-page overhead small.
PAGE_ROWS = 256
#: Responses sent between two yields to the loop (so a C-CANCEL-RQ is read).
_YIELD_EVERY = 16


class FindSCP:
    """C-FIND SCP of the Patient Root and Study Root models over ``catalog``.

    ``retrieve_ae`` answers Retrieve AE Title (0008,0054) when a request asks for it.
    While :attr:`accepting` is False (draining), new requests are refused A700.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        retrieve_ae: str,
        executor: concurrent.futures.Executor | None = None,
        page_rows: int = PAGE_ROWS,
        sop_classes: tuple[str, ...] = FIND_SOP_CLASSES,
    ) -> None:
        self.catalog = catalog
        self.retrieve_ae = retrieve_ae
        self.executor = executor
        self.page_rows = page_rows
        self.sop_classes = sop_classes
        self.accepting = True

    def contexts(self) -> list[PresentationContext]:
        return [PresentationContext(abstract_syntax=uid, transfer_syntax=list(TRANSFER_SYNTAXES))
                for uid in self.sop_classes]

    def register(self, registry: ServiceRegistry) -> None:
        registry.add(self, [C_FIND_RQ], self.sop_classes)

    def start(self, request: Request) -> Any:
        if not self.accepting:
            return status.REFUSED_OUT_OF_RESOURCES, "the node is shutting down"
        model = MODELS[request.abstract_syntax]
        return IdentifierOperation(lambda identifier: self.find(request, model, identifier))

    async def find(self, request: Request, model: Model, identifier: bytes) -> Any:
        """Serve one C-FIND: pending responses, then the final status."""
        try:
            plan = find_plan(identifier, request.transfer_syntax, model)
        except IdentifierError as exc:
            log.info("%s: C-FIND refused: %s", request.association.peer_label(), exc.comment)
            return Reply(exc.status, exc.comment, fields=exc.reply_fields() or None)
        except ValueError as exc:  # a condition the catalog's query model refuses
            return Reply(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        assoc = request.association
        ts = request.transfer_syntax
        pending = plan.pending_status
        sent = 0
        rows = Rows(self.catalog.query(plan.query), self.page_rows, self.executor)
        try:
            async for page in rows.pages():
                for row in page:
                    if request.cancelled:
                        return status.CANCEL
                    if not assoc.is_established:
                        return status.CANCEL  # nobody to answer; stop reading the catalog
                    await request.send_pending(pending, plan.identifier(row, ts, self.retrieve_ae))
                    sent += 1
                    if sent % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if request.cancelled:
                    return status.CANCEL
        except CatalogError as exc:
            log.error("%s: C-FIND failed in the catalog: %s", assoc.peer_label(), exc)
            return STATUS_CATALOG_FAILED, f"catalog failed: {exc}"
        finally:
            rows.close()
        return status.SUCCESS
