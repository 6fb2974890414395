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
import weakref
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
        # One blocking view (and so one DUL view) per association, however often asked.
        self._views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def policy(self) -> AcceptorPolicy:
        """What this server agrees to (read for every association request)."""
        return self._server.config.policy

    @property
    def ae_title(self) -> bytes:
        """The AE title this server answers as, 16 bytes space padded."""
        return self.policy.ae_title

    @property
    def contexts(self) -> list[PresentationContext]:
        """The presentation contexts this server supports."""
        return list(self.policy.supported_contexts)

    @property
    def ssl_context(self) -> _ssl.SSLContext | None:
        return self._server.config.ssl_context

    @property
    def server_address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (the real port when 0 was asked)."""
        return self._server.address

    @property
    def active_associations(self) -> list:
        runner = self.ae._runner
        if runner is None:
            return []
        views = []
        for inner in list(self._server.active):
            if not inner.is_established:
                continue
            view = self._views.get(inner)
            if view is None:
                view = self._views[inner] = Association(inner, runner, self.ae)
            views.append(view)
        return views

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
        # start_server and shutdown may be called from different threads (a blocking
        # server in a thread, shut down from the main one): a server is either fully
        # registered before shutdown looks, or started after it.
        self._lifecycle = threading.RLock()

    # -- acceptor checks, read by running servers for every request -----------------------

    def _set_require_called_aet(self, value: bool) -> None:
        ApplicationEntityConfig.require_called_aet.fset(self, value)  # type: ignore[attr-defined]
        for server in list(self._servers):
            server.policy.require_called_aet = self.require_called_aet

    def _set_require_calling_aet(self, value: Any) -> None:
        ApplicationEntityConfig.require_calling_aet.fset(self, value)  # type: ignore[attr-defined]
        for server in list(self._servers):
            server.policy.require_calling_aet = tuple(self.require_calling_aet)

    require_called_aet = property(
        ApplicationEntityConfig.require_called_aet.fget,  # type: ignore[attr-defined]
        _set_require_called_aet,
        doc=ApplicationEntityConfig.require_called_aet.__doc__
        + "\n\nA change applies at once to running servers (their next request).",
    )
    require_calling_aet = property(
        ApplicationEntityConfig.require_calling_aet.fget,  # type: ignore[attr-defined]
        _set_require_calling_aet,
        doc=ApplicationEntityConfig.require_calling_aet.__doc__
        + "\n\nA change applies at once to running servers (their next request).",
    )

    # -- timeouts, applied to running servers and live associations too ------------------

    def _set_timeout(self, name: str, value: float | int | None) -> None:
        getattr(ApplicationEntityConfig, name).fset(self, value)
        value = getattr(self, name)
        for server in list(self._servers):
            if hasattr(server._server.config, name):
                setattr(server._server.config, name, value)
        for assoc in self.active_associations:
            assoc._set_timeout(name, value)

    acse_timeout = property(
        ApplicationEntityConfig.acse_timeout.fget,  # type: ignore[attr-defined]
        lambda self, value: self._set_timeout("acse_timeout", value),
        doc=ApplicationEntityConfig.acse_timeout.__doc__
        + " A change applies to live associations and running servers too.",
    )
    dimse_timeout = property(
        ApplicationEntityConfig.dimse_timeout.fget,  # type: ignore[attr-defined]
        lambda self, value: self._set_timeout("dimse_timeout", value),
        doc=ApplicationEntityConfig.dimse_timeout.__doc__
        + " A change applies to live associations and running servers too.",
    )
    network_timeout = property(
        ApplicationEntityConfig.network_timeout.fget,  # type: ignore[attr-defined]
        lambda self, value: self._set_timeout("network_timeout", value),
        doc=ApplicationEntityConfig.network_timeout.__doc__
        + " A change applies to live associations and running servers too.",
    )

    connection_timeout = property(
        ApplicationEntityConfig.connection_timeout.fget,  # type: ignore[attr-defined]
        lambda self, value: self._set_timeout("connection_timeout", value),
        doc=ApplicationEntityConfig.connection_timeout.__doc__,
    )

    def __str__(self) -> str:
        """A summary of the AE's configuration and associations, for people."""
        def titles(values: Sequence[bytes]) -> str:
            return ", ".join(v.strip().decode("ascii") for v in values) if values else "None"

        def contexts(items: Sequence[PresentationContext]) -> list[str]:
            if not items:
                return ["    None"]
            lines = []
            for cx in items:
                lines.extend("    " + line for line in str(cx).splitlines())
            return lines

        live = self.active_associations
        lines = [
            "Application Entity " + self.ae_title.strip().decode("ascii"),
            "  Requested presentation contexts:",
            *contexts(self.requested_contexts),
            "  Supported presentation contexts:",
            *contexts(self.supported_contexts),
            f"  ACSE timeout: {self.acse_timeout}",
            f"  DIMSE timeout: {self.dimse_timeout}",
            f"  Network timeout: {self.network_timeout}",
            f"  Maximum PDU size: {self.maximum_pdu_size}",
            f"  Require calling AE title: {titles(self.require_calling_aet)}",
            f"  Require called AE title: {self.require_called_aet}",
            f"  Implementation class UID: {self.implementation_class_uid}",
            f"  Active associations: {len(live)}/{self.maximum_associations}",
            *(f"    Peer: {assoc._inner.peer_label()}"
              f" (requested by {'us' if assoc.is_requestor else 'the peer'})" for assoc in live),
        ]
        return "\n".join(lines)

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
        addr = _peer_host(addr)
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"'port' must be int, not {type(port).__name__}")
        if not 0 < port < 65536:
            raise ValueError(f"'port' must be 1..65535, not {port}")
        bind_address = _bind_address(bind_address)
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
            connection_timeout=self.connection_timeout,
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
                "No supported Presentation Contexts have been defined: at least one is "
                "required before starting a server"
            )
        half = [cx for cx in supported if (cx.scu_role is None) != (cx.scp_role is None)]
        if half:
            names = ", ".join(str(cx.abstract_syntax) for cx in half)
            raise ValueError(
                "The following presentation contexts have inconsistent scu_role/scp_role "
                f"values (both must be None, or both bool): {names}"
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
        with self._lifecycle:
            handle = self._start(host, port, policy, evt_handlers, ssl_context)
        if not block:
            return handle
        try:
            handle.wait()
        except KeyboardInterrupt:
            handle.shutdown()
        return None

    def _start(self, host: str, port: int, policy: AcceptorPolicy,
               evt_handlers: Sequence[tuple] | None,
               ssl_context: _ssl.SSLContext | None) -> AssociationServer:
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
        return handle

    def shutdown(self) -> None:
        """Stop every server of this AE, abort its requested associations and stop its
        loop thread (pynetdicom: "Stop any active association servers and threads").
        The AE stays usable: a later call starts a new loop thread."""
        with self._lifecycle:
            self._shutdown()

    def _shutdown(self) -> None:
        for server in list(self._servers):
            server.shutdown()
        for assoc in list(self._requestors):
            if assoc.is_alive():
                assoc.abort()
        self._requestors.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()


def _peer_host(addr: object) -> str:
    """The host to connect to from ``associate``'s ``addr``: a str, or an IPv6
    ``(host, flowinfo, scope_id)`` tuple (pynetdicom 2.0+)."""
    if isinstance(addr, tuple) and len(addr) == 3 and isinstance(addr[0], str) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in addr[1:]
    ):
        host, _, scope = addr
        return f"{host}%{scope}" if scope else host
    if not isinstance(addr, str):
        raise TypeError(f"'addr' must be str or tuple (host, flowinfo, scope_id), "
                        f"not {type(addr).__name__}")
    # A socket connect to '' reaches this host (INADDR_ANY); name resolution would not.
    return addr or "0.0.0.0"


def _bind_address(value: object) -> tuple[str, int]:
    """``associate``'s ``bind_address``: (host, port), or (host, port, flowinfo,
    scope_id) for IPv6; returned as the (host, port) the connection binds."""
    ok = isinstance(value, tuple) and len(value) in (2, 4) and isinstance(value[0], str) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value[1:]
    )
    if not ok:
        raise TypeError("'bind_address' must be tuple (host, port) or "
                        f"(host, port, flowinfo, scope_id), not {value!r}")
    return value[0], value[1]  # type: ignore[index]


#: pynetdicom's short alias.
AE = ApplicationEntity
