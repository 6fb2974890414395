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
- :mod:`.find_scp` -- Query SCP (PS3.4 C.4.1): C-FIND answered from a
  :class:`~storage.Catalog`; :mod:`.query_model` reads identifiers into catalog queries
  (PS3.4 C.2.2.2 matching) and writes the responses' identifiers.
- :mod:`.retrieve_scp` -- Retrieve SCPs (PS3.4 C.4.2, C.4.3): C-GET and C-MOVE, stored
  files sent as C-STORE sub-operations; :mod:`.outbound` requests the node's own
  associations to the AEs of its AE table.
- :mod:`.commitment_scp` -- Storage Commitment Push Model SCP (PS3.4 Annex J):
  N-ACTION persisted, decided against the catalog and the files, N-EVENT-REPORT.
- :mod:`.qr_operation` -- what the Q/R providers share (identifier gathering, cursors
  read off the loop).

Nothing here listens on sockets, spawns processes or reads configuration files; the
associations the node requests itself (C-MOVE, commitment reports) go through
:class:`~.outbound.Outbound` and the engine.
"""

from .commitment_scp import COMMITMENT_DIRECTORY, CommitmentSCP
from .find_scp import FindSCP
from .node import NodeServices, build_services
from .outbound import AETable, Outbound, RemoteAE
from .retrieve_scp import GetSCP, MoveSCP
from .storage_scp import StorageSCP, StoreObserver, calling_title, store_status
from .verification import VerificationSCP

__all__ = [
    "AETable",
    "COMMITMENT_DIRECTORY",
    "CommitmentSCP",
    "FindSCP",
    "GetSCP",
    "MoveSCP",
    "NodeServices",
    "Outbound",
    "RemoteAE",
    "StorageSCP",
    "StoreObserver",
    "VerificationSCP",
    "build_services",
    "calling_title",
    "store_status",
]
