"""The node's set of services, built from its ports and configuration.

Theory of operation: :func:`build_services` makes every provider the node offers,
registers each for its DIMSE commands and collects the presentation contexts they
serve, so a worker only has to hand :attr:`NodeServices.registry` to the engine's
server and :attr:`NodeServices.contexts` to its ACSE policy. Draining is switched here
for every provider that takes new work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.presentation import PresentationContext
from engine.services import ServiceRegistry
from storage import InstanceStore

from .storage_scp import StorageSCP, StoreObserver
from .verification import VerificationSCP

__all__ = ["NodeServices", "build_services"]


@dataclass
class NodeServices:
    """The providers of one worker, their registry and their presentation contexts."""

    registry: ServiceRegistry
    contexts: list[PresentationContext]
    storage: StorageSCP
    providers: list[Any] = field(default_factory=list)

    def stop_accepting(self) -> None:
        """Draining: refuse new work (each provider's own way); work in progress ends."""
        self.storage.accepting = False


def build_services(
    store: InstanceStore,
    *,
    called_ae: str,
    observer: StoreObserver | None = None,
) -> NodeServices:
    """Verification and Storage over ``store``."""
    verification = VerificationSCP()
    storage = StorageSCP(store, called_ae=called_ae, observer=observer)
    providers: list[Any] = [verification, storage]
    registry = ServiceRegistry()
    contexts: list[PresentationContext] = []
    for provider in providers:
        provider.register(registry)
        contexts.extend(provider.contexts())
    return NodeServices(registry=registry, contexts=contexts, storage=storage, providers=providers)
