"""scpfleet's DICOM networking engine: Upper Layer, ACSE and DIMSE, written from the standard.

The protocol core (``_pdu``, ``_fsm``, ``_connection``, ``_acse``, ``_dimse``) is sans-IO;
:mod:`engine.aio` runs it on asyncio/uvloop; :mod:`engine.services` is the seam where
DICOM service providers plug in; :class:`ApplicationEntity` offers the pynetdicom-style
blocking API on top. See docs/architecture.md.
"""

from __future__ import annotations

import logging

from . import _config, evt, services, sop_class, status
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .ae import AE, ApplicationEntity, AssociationServer
from .association import Association
from .dul import DULServiceProvider
from .presentation import (
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    build_context,
)

__all__ = [
    "validate_ae_title",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "AE",
    "ApplicationEntity",
    "Association",
    "AssociationServer",
    "DULServiceProvider",
    "PresentationContext",
    "StoragePresentationContexts",
    "VerificationPresentationContexts",
    "build_context",
    "debug_logger",
    "evt",
    "services",
    "sop_class",
    "status",
    "ProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
]

#: The product's identity, as plain strings: the Implementation Class UID and Version
#: Name the engine advertises (PS3.7 D.3.3.2), for whatever else must carry the same
#: (the File Meta of stored instances, PS3.10 7.1).
from ._config import validate_ae_title  # noqa: E402 - the public AE title check

IMPLEMENTATION_CLASS_UID: str = str(_config.IMPLEMENTATION_CLASS_UID)
IMPLEMENTATION_VERSION_NAME: str = _config.IMPLEMENTATION_VERSION_NAME.decode("ascii")


def debug_logger() -> None:
    """Log the engine's messages at DEBUG level to stderr (pynetdicom's helper)."""
    logger = logging.getLogger("scpfleet")
    logger.setLevel(logging.DEBUG)
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname).1s: %(name)s: %(message)s"))
        logger.addHandler(handler)
