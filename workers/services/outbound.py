"""Associations the node requests itself: C-MOVE sub-operations and Storage Commitment
reports to an AE that is no longer connected.

Theory of operation: a service that must reach another AE looks its title up in the
node's AE table (:data:`AETable`: title -> :class:`RemoteAE`, from ``--ae-table``) and
asks :class:`Outbound` for an association to it with the presentation contexts it
needs. :class:`Outbound` holds what every such association shares -- the node's AE
title as calling title, the engine's identity, the PDU size and the three timeouts --
and runs :func:`engine.aio.associate` on the running loop. Requests the remote AE might
send back on it are answered 0211H (an empty registry): the node serves nothing there.

It opens nothing until asked and keeps no association open between requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import engine
from engine import aio
from engine.presentation import PresentationContext
from engine.services import ServiceRegistry

__all__ = ["RemoteAE", "AETable", "Outbound", "ae_table"]


class RemoteAE(NamedTuple):
    """Where an AE listens."""

    host: str
    port: int


#: AE title (without padding) -> where it listens.
AETable = Mapping[str, RemoteAE]


def ae_table(entries: Mapping[str, tuple[str, int]] | None) -> dict[str, RemoteAE]:
    """An :data:`AETable` from ``title -> (host, port)`` pairs (already validated by
    the configuration); titles lose their non-significant spaces."""
    return {title.strip(" "): RemoteAE(str(host), int(port)) for title, (host, port) in (entries or {}).items()}


def ae_text(title: bytes | str | None) -> str:
    """An AE title from a peer as table key: spaces and NULs stripped, anything but
    printable ASCII replaced (it is compared, logged, never trusted)."""
    if title is None:
        return ""
    text = title.decode("ascii", "replace") if isinstance(title, bytes) else title
    text = text.strip(" \x00")
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text)


@dataclass(frozen=True)
class Outbound:
    """How the node requests its own associations (see the module docstring)."""

    calling_ae: str
    maximum_pdu_size: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0

    async def associate(
        self,
        remote: RemoteAE,
        called_ae: str,
        contexts: Sequence[PresentationContext],
    ) -> aio.Association:
        """Request an association of ``contexts`` with ``called_ae`` at ``remote``;
        returned whether or not it was established (check ``is_established``)."""
        config = aio.RequestorConfig(
            calling_ae_title=self.calling_ae.encode("ascii").ljust(16),
            called_ae_title=called_ae.encode("ascii", "replace").ljust(16),
            contexts=list(contexts),
            maximum_pdu_size=self.maximum_pdu_size,
            implementation_class_uid=engine.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=engine.IMPLEMENTATION_VERSION_NAME,
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            network_timeout=self.network_timeout,
            services=ServiceRegistry(),
        )
        return await aio.associate(remote.host, remote.port, config)
