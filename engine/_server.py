"""The acceptor's side: an association server on an event loop.

Theory of operation: an :class:`AssociationServer` accepts transport connections -- from
its own listening socket, or sockets handed to it by a listener process
(:meth:`AssociationServer.adopt`) -- and gives each one an
:class:`~engine._assoc.Association` in the acceptor role. Everything a server needs is one
:class:`ServerConfig` passed in: the ACSE policy, the service providers, the timeouts,
TLS, the admission test and the peer address allow-list. The server counts established
associations for the local limit, and :meth:`AssociationServer.close` stops accepting,
gives live associations a grace time and aborts the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl as _ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ._acse import AcceptorPolicy
from ._assoc import Association
from ._handlers import handler_registry
from ._transport import ULProtocol
from .services import ServiceRegistry

__all__ = ["AssociationServer", "ServerConfig", "address_allowed"]


@dataclass
class ServerConfig:
    """Everything an :class:`AssociationServer` needs, passed in (never globals).

    ``services`` are the DIMSE service providers (see :mod:`engine.services`); None
    serves C-ECHO and C-STORE through the ``EVT_C_ECHO``/``EVT_C_STORE`` handlers in
    ``handlers``, pynetdicom style.
    """

    policy: AcceptorPolicy
    handlers: dict = field(default_factory=dict)
    services: ServiceRegistry | None = None
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 30.0
    network_timeout: float | None = 60.0
    maximum_associations: int | None = 10
    ssl_context: _ssl.SSLContext | None = None
    #: Optional node-wide admission test, replacing the per-server count: returns True
    #: when one more association may be accepted.
    admission: Callable[[], bool] | None = None
    ae: Any = None
    #: Peer address allow-list: None admits every address; otherwise a connection whose
    #: peer address lies in none of these networks is closed before any PDU is read (no
    #: A-ASSOCIATE-RJ: an unknown host learns nothing, not even that this is DICOM).
    allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None

    def __post_init__(self) -> None:
        if self.services is None:
            self.services = handler_registry()


def address_allowed(
    host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None
) -> bool:
    """Whether peer address ``host`` lies in one of ``networks`` (None: any address).

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, a dual-stack socket) is judged as
    the IPv4 address it carries; anything that is not an IP address is refused.
    """
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class AssociationServer:
    """Accepts associations on a loop: from its own listening socket, or sockets
    handed to it (:meth:`adopt`) by a listener process."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        self.active: set[Association] = set()
        self.established_count = 0
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._closing = False

    def new_association(self) -> Association:
        cfg = self.config
        return Association(
            is_requestor=False,
            loop=self.loop,
            handlers=cfg.handlers,
            acse_timeout=cfg.acse_timeout,
            dimse_timeout=cfg.dimse_timeout,
            network_timeout=cfg.network_timeout,
            maximum_pdu_size=cfg.policy.maximum_pdu_size,
            ae=cfg.ae,
            server=self,
            services=cfg.services,
        )

    def register(self, assoc: Association) -> None:
        """Count ``assoc`` as live. Called when its transport is made, i.e. after any
        TLS handshake: a connection whose handshake fails never reaches the protocol
        (no ``connection_lost`` either), so counting it earlier would leave it in
        ``active`` for ever and stall :meth:`close`. One made while closing is aborted."""
        if assoc in self.active:
            return
        self.active.add(assoc)
        self._idle.clear()
        if self._closing:
            self.loop.call_soon(assoc.abort)

    def forget(self, assoc: Association) -> None:
        self.active.discard(assoc)
        if not self.active:
            self._idle.set()

    def peer_allowed(self, peer: Any) -> bool:
        """Whether a connection from ``peer`` (a socket address) may be served
        (:attr:`ServerConfig.allowed_networks`)."""
        networks = self.config.allowed_networks
        if networks is None:
            return True
        return isinstance(peer, tuple) and address_allowed(str(peer[0]), networks)

    def _protocol_factory(self) -> ULProtocol:
        return ULProtocol(self.new_association().link)

    async def start(self, host: str, port: int, *, backlog: int = 512,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free port); return the bound address."""
        if sock is not None:
            self._server = await self.loop.create_server(
                self._protocol_factory, sock=sock, ssl=self.config.ssl_context,
                backlog=backlog, **self._tls_options(),
            )
        else:
            self._server = await self.loop.create_server(
                self._protocol_factory, host, port, ssl=self.config.ssl_context,
                reuse_address=True, backlog=backlog, **self._tls_options(),
            )
        return self.address

    def _tls_options(self) -> dict[str, float]:
        """The TLS handshake precedes the A-ASSOCIATE-RQ, so ARTIM does not run yet: bound
        it by the same ACSE timeout (asyncio's default would hold a silent peer 60 s)."""
        if self.config.ssl_context is None or not self.config.acse_timeout:
            return {}
        return {"ssl_handshake_timeout": float(self.config.acse_timeout)}

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        return self._server.sockets[0].getsockname()[:2]

    async def adopt(self, sock: socket.socket, *, peer: tuple[str, int] | None = None) -> Association:
        """Serve an already-accepted connection (handed over by a listener process).

        ``peer``: the address of the real peer when the socket's own peer is a relay (a
        load balancer that said who connected through it, e.g. in a PROXY protocol
        header the caller has read off the socket); it is then used instead of the
        socket's peer address for :attr:`ServerConfig.allowed_networks`, the association's
        ``requestor.address``/``port``, the ``EVT_CONN_OPEN`` event and the logs.

        A peer outside :attr:`ServerConfig.allowed_networks` is closed here, before any
        TLS handshake, and ``ConnectionRefusedError`` is raised.
        """
        if self.config.allowed_networks is not None:
            seen = peer
            if seen is None:
                try:
                    seen = sock.getpeername()
                except OSError:
                    seen = None
            if not self.peer_allowed(seen):
                sock.close()
                raise ConnectionRefusedError(f"peer address {seen} is not allowed")
        assoc = self.new_association()
        if peer is not None:
            assoc.peer_address = (str(peer[0]), int(peer[1]))
        self.register(assoc)  # live from now: close() waits for its handshake too
        try:
            await self.loop.connect_accepted_socket(
                lambda: ULProtocol(assoc.link), sock, ssl=self.config.ssl_context,
                **self._tls_options(),
            )
        except Exception:
            self.forget(assoc)
            sock.close()
            raise
        return assoc

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, give live associations ``grace`` seconds, abort the rest."""
        self._closing = True
        self.stop_listening()
        if self._server is not None:
            await self._server.wait_closed()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            for assoc in list(self.active):
                assoc.abort()
            try:
                await asyncio.wait_for(self._idle.wait(), 2.0)
            except asyncio.TimeoutError:
                for assoc in list(self.active):
                    assoc.link.abort_transport()
