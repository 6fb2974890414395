"""``ApplicationEntity``: the pynetdicom-style entry point, on the asyncio engine.

Theory of operation: the configuration half (titles, timeouts, contexts, validation)
lives in :class:`engine._config.ApplicationEntityConfig`; this class adds the network
half. ``associate`` and ``start_server`` build :mod:`engine.aio` objects and run them on
the AE's private loop thread (:mod:`engine._loop`), so every blocking call a ported
script makes is a coroutine awaited on that loop. ``start_server(block=True)`` blocks the
calling thread until :meth:`shutdown` (or Ctrl-C); ``block=False`` returns an
:class:`AssociationServer` handle with ``shutdown()`` and ``server_address``.

Event handlers run on the loop thread; a handler that blocks holds up every association
of this AE. Programs serving many associations at once should use :mod:`engine.aio`
directly (as ``scpfleet serve`` does) or keep handlers short.
"""

from __future__ import annotations

import ssl as _ssl
import threading
from typing import Any, Sequence

from . import aio
from ._acse import AcceptorPolicy
from ._config import ApplicationEntityConfig, validate_ae_title
from ._loop import LoopThread
from .association import Association
from .evt import normalize_handlers
from .presentation import PresentationContext

__all__ = ["ApplicationEntity", "AE", "AssociationServer"]


class AssociationServer:
    """A running association acceptor started by ``start_server(block=False)``."""

    def __init__(self, ae: "ApplicationEntity", server: aio.AssociationServer) -> None:
        self.ae = ae
        self._server = server
        self._stopped = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (the real port when 0 was asked)."""
        return self._server.address

    @property
    def active_associations(self) -> list:
        runner = self.ae._runner
        return [Association(a, runner, self.ae) for a in self._server.active
                if a.is_established] if runner is not None else []

    def shutdown(self) -> None:
        """Stop listening and end the server's associations."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        runner = self.ae._runner
        if runner is not None:
            runner.run(self._server.close(grace=0.5))
        if self in self.ae._servers:
            self.ae._servers.remove(self)

    def wait(self) -> None:
        """Block until :meth:`shutdown` is called (from any thread)."""
        while not self._stopped.wait(0.5):
            pass


class ApplicationEntity(ApplicationEntityConfig):
    """A DICOM Application Entity: association requestor and/or acceptor."""

    def __init__(self, ae_title: bytes | str = b"PYNETDICOM") -> None:
        super().__init__(ae_title)
        self._runner: LoopThread | None = None
        self._servers: list[AssociationServer] = []
        self._requestors: list[Association] = []

    def _loop(self) -> LoopThread:
        if self._runner is None:
            self._runner = LoopThread()
        return self._runner

    @property
    def active_associations(self) -> list[Association]:
        """The AE's live associations, requested and accepted."""
        live = [a for a in self._requestors if a.is_established]
        self._requestors = [a for a in self._requestors if a.is_alive()]
        for server in self._servers:
            live.extend(server.active_associations)
        return live

    def _version_name(self) -> str | None:
        name = self.implementation_version_name
        return name.decode("ascii") if name else None

    # -- requestor ------------------------------------------------------------------------

    def associate(
        self,
        addr: str,
        port: int,
        contexts: Sequence[PresentationContext] | None = None,
        ae_title: bytes | str = b"ANY-SCP",
        max_pdu: int = 16382,
        ext_neg: Sequence[Any] | None = None,
        bind_address: tuple[str, int] = ("", 0),
        tls_args: tuple[_ssl.SSLContext, str] | None = None,
        evt_handlers: Sequence[tuple] | None = None,
    ) -> Association:
        """Request an association with the peer at ``addr:port`` (PS3.8 7.1).

        Returns an :class:`Association` whether or not it was accepted: check
        ``is_established``. Raises RuntimeError if no presentation context is requested.
        """
        if not isinstance(addr, str):
            raise TypeError("addr must be the peer's address as a str")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        contexts = list(contexts) if contexts is not None else self.requested_contexts
        if not contexts:
            raise RuntimeError(
                "At least one requested presentation context is required before "
                "associating with a peer"
            )
        if not isinstance(max_pdu, int) or max_pdu < 0:
            raise ValueError("max_pdu must be an int >= 0 (0: no maximum)")
        called = validate_ae_title(ae_title, "called AE title")
        config = aio.RequestorConfig(
            calling_ae_title=self.ae_title,
            called_ae_title=called.ljust(16),
            contexts=contexts,
            maximum_pdu_size=max_pdu,
            implementation_class_uid=str(self.implementation_class_uid),
            implementation_version_name=self._version_name(),
            extended=list(ext_neg or ()),
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            network_timeout=self.network_timeout,
            handlers=normalize_handlers(evt_handlers),
            ae=self,
        )
        ssl_context, server_hostname = tls_args if tls_args else (None, None)
        runner = self._loop()
        inner = runner.run(
            aio.associate(
                addr,
                port,
                config,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
                bind_address=bind_address,
                loop=runner.loop,
            )
        )
        assoc = Association(inner, runner, self)
        self._requestors.append(assoc)
        return assoc

    # -- acceptor -------------------------------------------------------------------------

    def start_server(
        self,
        address: tuple[str, int],
        block: bool = True,
        ssl_context: _ssl.SSLContext | None = None,
        evt_handlers: Sequence[tuple] | None = None,
        ae_title: bytes | str | None = None,
        contexts: Sequence[PresentationContext] | None = None,
    ) -> AssociationServer | None:
        """Start accepting associations on ``address`` (host, port).

        With ``block=True`` (default) this returns only after :meth:`shutdown`;
        with ``block=False`` it returns the running :class:`AssociationServer`.
        """
        host, port = address
        supported = list(contexts) if contexts is not None else self.supported_contexts
        if not supported:
            raise ValueError(
                "At least one supported presentation context is required before "
                "starting a server"
            )
        title = validate_ae_title(ae_title, "AE title").ljust(16) if ae_title else self.ae_title
        policy = AcceptorPolicy(
            ae_title=title,
            supported_contexts=supported,
            maximum_pdu_size=self.maximum_pdu_size,
            implementation_class_uid=str(self.implementation_class_uid),
            implementation_version_name=self._version_name(),
            require_called_aet=self.require_called_aet,
            require_calling_aet=tuple(self.require_calling_aet),
        )
        runner = self._loop()
        config = aio.ServerConfig(
            policy=policy,
            handlers=normalize_handlers(evt_handlers),
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            network_timeout=self.network_timeout,
            maximum_associations=self.maximum_associations,
            ssl_context=ssl_context,
            ae=self,
        )

        async def start() -> aio.AssociationServer:
            server = aio.AssociationServer(config, loop=runner.loop)
            await server.start(host, port)
            return server

        handle = AssociationServer(self, runner.run(start()))
        self._servers.append(handle)
        if not block:
            return handle
        try:
            handle.wait()
        except KeyboardInterrupt:
            handle.shutdown()
        return None

    def shutdown(self) -> None:
        """Stop every server of this AE, abort its requested associations and stop its
        loop thread (pynetdicom: "Stop any active association servers and threads").
        The AE stays usable: a later call starts a new loop thread."""
        for server in list(self._servers):
            server.shutdown()
        for assoc in list(self._requestors):
            if assoc.is_alive():
                assoc.abort()
        self._requestors.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()


#: pynetdicom's short alias.
AE = ApplicationEntity
