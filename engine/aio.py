"""The engine on asyncio (uvloop when present): the API for programs that run many
associations from one process.

Theory of operation: this module is the public face of the asyncio side and holds only
the requestor's entry point, :func:`associate`. The parts live in private modules, each
with one reason to change:

* :mod:`engine._transport` -- the thin adapter: bytes in and out of the sans-IO core,
  its timers on the loop's clock, reading paused in one place;
* :mod:`engine._assoc` -- :class:`Association`, the ACSE service user of one
  association in either role;
* :mod:`engine._dispatch` -- serving the peer's DIMSE requests through the service
  providers of :mod:`engine.services`;
* :mod:`engine._scu` -- our own DIMSE requests (``send_c_echo``, ``send_c_store``);
* :mod:`engine._server` -- :class:`AssociationServer` and its :class:`ServerConfig`;
* :mod:`engine._handlers` -- pynetdicom-style ``evt`` handlers as service providers.

No threads, no polling: everything runs on the loop that owns the transport.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from dataclasses import dataclass, field
from typing import Any, Sequence

from ._acse import AcceptorPolicy, build_request, rejection_description
from ._assoc import Association, ServiceUserInfo
from ._connection import Aborted
from ._handlers import StoreRequest
from ._server import AssociationServer, ServerConfig, address_allowed
from ._transport import ULProtocol
from .presentation import PresentationContext
from .services import ServiceRegistry

__all__ = [
    "AcceptorPolicy",
    "Association",
    "AssociationServer",
    "ServerConfig",
    "RequestorConfig",
    "ServiceRegistry",
    "StoreRequest",
    "associate",
    "address_allowed",
    "rejection_description",
    "install_uvloop",
    "new_event_loop",
    "ServiceUserInfo",
]

log = logging.getLogger("scpfleet.engine")


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed; return whether it is."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when available, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class RequestorConfig:
    """Settings of an association we request.

    ``services`` serve requests the peer sends us on this association (C-STORE
    sub-operations of a C-GET, an N-EVENT-REPORT); None: the ``evt`` handlers.
    """

    calling_ae_title: bytes
    called_ae_title: bytes
    contexts: Sequence[PresentationContext]
    maximum_pdu_size: int = 16382
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    extended: Sequence[Any] = ()
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 30.0
    network_timeout: float | None = 60.0
    #: Bound on opening the TCP connection; None: ``network_timeout``.
    connection_timeout: float | None = None
    handlers: dict = field(default_factory=dict)
    services: ServiceRegistry | None = None
    ae: Any = None


async def associate(
    host: str,
    port: int,
    config: RequestorConfig,
    *,
    ssl_context: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    bind_address: tuple[str, int] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Association:
    """Request an association (PS3.8 7.1); returns it whether or not it was accepted.

    Check ``is_established`` before use. A connection that cannot be made gives an
    association that is aborted (``is_aborted``), as pynetdicom does.
    """
    loop = loop or asyncio.get_running_loop()
    if not config.contexts:
        raise RuntimeError("at least one presentation context must be requested")
    contexts = []
    for index, cx in enumerate(config.contexts):
        copy = PresentationContext()
        copy.context_id = 2 * index + 1  # PS3.8 9.3.2.2: odd integers 1-255
        copy.abstract_syntax = cx.abstract_syntax
        copy.transfer_syntax = list(cx.transfer_syntax)
        copy.scu_role = cx.scu_role
        copy.scp_role = cx.scp_role
        contexts.append(copy)
    if len(contexts) > 128:
        raise ValueError("at most 128 presentation contexts can be requested")
    assoc = Association(
        is_requestor=True,
        loop=loop,
        handlers=config.handlers,
        acse_timeout=config.acse_timeout,
        dimse_timeout=config.dimse_timeout,
        network_timeout=config.network_timeout,
        maximum_pdu_size=config.maximum_pdu_size,
        ae=config.ae,
        services=config.services,
        requested_contexts=contexts,
    )
    assoc.connection_timeout = config.connection_timeout
    assoc.requestor.ae_title = config.calling_ae_title
    assoc.acceptor.ae_title = config.called_ae_title
    assoc.acceptor.address, assoc.acceptor.port = host, port
    rq = build_request(
        called_ae_title=config.called_ae_title,
        calling_ae_title=config.calling_ae_title,
        contexts=contexts,
        maximum_pdu_size=config.maximum_pdu_size,
        implementation_class_uid=config.implementation_class_uid,
        implementation_version_name=config.implementation_version_name,
        extended=config.extended,
    )
    assoc.conn.request_association(rq, loop.time())
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: ULProtocol(assoc.link),
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
                local_addr=bind_address if bind_address and bind_address != ("", 0) else None,
            ),
            config.connection_timeout or config.network_timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        log.info("association to %s:%s failed: %s", host, port, exc or "timeout")
        assoc.is_aborted = True
        assoc.abort_info = Aborted(None, None, local=True, detail=f"connection failed: {exc}")
        assoc.link.lost()
        return assoc
    await assoc.wait_established()
    return assoc
