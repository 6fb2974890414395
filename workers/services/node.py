"""The node's set of services, built from its ports and configuration.

Theory of operation: :func:`build_services` makes every provider the node offers,
registers each for its DIMSE commands and collects the presentation contexts they
serve, so a worker only has to hand :attr:`NodeServices.registry` to the engine's
server and :attr:`NodeServices.contexts` to its ACSE policy, and start and stop the
services' background work with :meth:`NodeServices.start` / :meth:`NodeServices.aclose`
on its loop. Draining is switched here for every provider that takes new work.

Verification and Storage are always there. Given a :class:`storage.Catalog`, the node
also answers C-FIND (``query``), C-GET and C-MOVE (``retrieve``) and Storage
Commitment (``commitment``), each on unless switched off. A worker wires them like::

    services = build_services(
        store, called_ae=cfg.aet, observer=observer,
        catalog=catalog,                                  # the node's index
        pending=PendingRequests(cfg.storage, COMMITMENT_DIRECTORY),
        ae_table=workers.config.ae_table(cfg),            # title -> (host, port)
        outbound=Outbound(cfg.aet, cfg.max_pdu, cfg.acse_timeout, cfg.dimse_timeout,
                          cfg.network_timeout),
        query=cfg.query, retrieve=cfg.retrieve, commitment=cfg.commitment,
        commitment_verify=cfg.commitment_verify,
    )
    await services.start()          # the commitment sweep (reports left by a restart)
    ...
    await services.aclose()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.presentation import PresentationContext
from engine.services import ServiceRegistry
from storage import Catalog, InstanceStore, PendingRequests

from .commitment_scp import CommitmentSCP
from .find_scp import FindSCP
from .outbound import Outbound, ae_table as _ae_table
from .retrieve_scp import GetSCP, MoveSCP
from .storage_scp import StorageSCP, StoreObserver
from .verification import VerificationSCP

__all__ = ["NodeServices", "build_services", "COMMITMENT_SWEEP_S"]

#: How often pending Storage Commitment reports are looked for (after the first sweep
#: at start): a report that failed is retried on its own, growing schedule.
COMMITMENT_SWEEP_S = 60.0


@dataclass
class NodeServices:
    """The providers of one worker, their registry and their presentation contexts."""

    registry: ServiceRegistry
    contexts: list[PresentationContext]
    storage: StorageSCP
    providers: list[Any] = field(default_factory=list)
    commitment: CommitmentSCP | None = None
    #: Accepts every storage SOP class not listed (None: only the known ones).
    any_other: PresentationContext | None = None
    _sweeper: asyncio.Task[None] | None = None

    def stop_accepting(self) -> None:
        """Draining: refuse new work (each provider's own way); work in progress ends."""
        for provider in self.providers:
            if hasattr(provider, "accepting"):
                provider.accepting = False

    async def start(self) -> None:
        """Start background work on the running loop: the Storage Commitment sweep."""
        if self.commitment is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self.commitment.run_sweeps(COMMITMENT_SWEEP_S))

    async def aclose(self) -> None:
        """Stop background work; reports under way get a few seconds to finish."""
        self.stop_accepting()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        if self.commitment is not None:
            await self.commitment.aclose()


def build_services(
    store: InstanceStore,
    *,
    called_ae: str,
    observer: StoreObserver | None = None,
    catalog: Catalog | None = None,
    pending: PendingRequests | None = None,
    ae_table: Mapping[str, tuple[str, int]] | None = None,
    outbound: Outbound | None = None,
    query: bool = True,
    retrieve: bool = True,
    commitment: bool = True,
    commitment_verify: bool = False,
    commitment_grace_s: float = 10.0,
    executor: concurrent.futures.Executor | None = None,
    unknown_sop_classes: bool = True,
    node: str | None = None,
) -> NodeServices:
    """Verification and Storage over ``store``; with a ``catalog``, also Query
    (C-FIND), Retrieve (C-GET, C-MOVE) and Storage Commitment, each unless switched
    off. Commitment needs ``pending`` (where requests are kept). ``ae_table`` names
    the AEs the node may reach (C-MOVE destinations, commitment requestors);
    ``outbound`` how it reaches them (default: calling AE ``called_ae``). ``node``:
    this node's id when ``catalog`` is shared with other nodes (their instances are
    found by C-FIND, failed by C-GET/C-MOVE, and committed on the index's word).
    ``unknown_sop_classes``: also accept (as storage) SOP classes not in pydicom's
    dictionary -- a vendor's private classes, classes newer than the dictionary."""
    table = _ae_table(ae_table)
    outbound = outbound or Outbound(called_ae)
    verification = VerificationSCP()
    retrieving = catalog is not None and retrieve
    storage = StorageSCP(store, called_ae=called_ae, observer=observer, role_selection=retrieving)
    providers: list[Any] = [verification, storage]
    commitment_scp = None
    if catalog is not None:
        if query:
            providers.append(FindSCP(catalog, retrieve_ae=called_ae, executor=executor))
        if retrieve:
            providers.append(GetSCP(catalog, store, executor=executor, node=node))
            providers.append(MoveSCP(catalog, store, ae_table=table, outbound=outbound, executor=executor,
                                     node=node))
        if commitment:
            if pending is None:
                raise ValueError("Storage Commitment needs pending (where its requests are kept)")
            commitment_scp = CommitmentSCP(catalog, store, pending, ae_table=table, outbound=outbound,
                                           verify=commitment_verify, grace_s=commitment_grace_s,
                                           executor=executor, node=node)
            providers.append(commitment_scp)
    registry = ServiceRegistry()
    contexts: list[PresentationContext] = []
    for provider in providers:
        provider.register(registry)
        contexts.extend(provider.contexts())
    return NodeServices(registry=registry, contexts=contexts, storage=storage, providers=providers,
                        commitment=commitment_scp,
                        any_other=storage.any_other_context() if unknown_sop_classes else None)
