"""DICOM services of the storage node: providers on the engine's service seam.

Theory of operation: each module here is one DICOM service, written against two things
only: the engine's public API (:mod:`engine.services` -- a provider's ``start`` gets a
:class:`~engine.services.Request` and returns an operation or an answer -- plus
``engine.status``, ``engine.dimse``, ``engine.sop_class``, ``engine.presentation``) and
the storage ports (:class:`storage.InstanceStore` for instance files,
:class:`storage.Catalog` for the index). A provider declares the presentation contexts
it serves and registers itself for its DIMSE commands; the node's process code
(:mod:`workers.worker`) only builds them (:func:`build_services`), wires their ports
and hooks, and hands the registry to the engine.

- :mod:`.storage_scp` -- Storage SCP (PS3.4 Annex B): C-STORE streamed to an
  :class:`~storage.InstanceStore`.
- :mod:`.verification` -- Verification SCP (PS3.4 Annex A): C-ECHO.

Nothing here opens sockets, spawns processes or reads configuration files.
"""

from .node import NodeServices, build_services
from .storage_scp import StorageSCP, StoreObserver, calling_title, store_status
from .verification import VerificationSCP

__all__ = [
    "NodeServices",
    "StorageSCP",
    "StoreObserver",
    "VerificationSCP",
    "build_services",
    "calling_title",
    "store_status",
]
