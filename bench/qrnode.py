"""A storage node's services in this process: what the Q/R tests and benchmarks talk to.

Theory of operation: :class:`QRNode` runs, on its own thread and uvloop loop, an
:class:`engine.aio.AssociationServer` on 127.0.0.1 (port 0) serving exactly what
:func:`workers.services.build_services` builds for a worker: Verification, Storage,
C-FIND, C-GET, C-MOVE and Storage Commitment, over a
:class:`storage.PosixInstanceStore` and a :class:`storage.SqliteCatalog`. The store
journals, and every journal append is applied to the catalog at once on the loop (an
indexer with no lag); a catalog built beforehand (a benchmark's million rows) can be
given instead. Pending commitment requests live under the storage root, so a second
QRNode over the same root is "the node after a restart".

It is a test and benchmark fixture: it holds no process, only a thread, and
:meth:`QRNode.stop` always closes the server, the store and the catalog. Run as
``python -m bench.qrnode ROOT --ready-file F [--catalog PATH]`` it serves in a process
of its own (a benchmark's client must not share the server's interpreter) until
SIGTERM, having written ``{"port": n}`` to F.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, aio
from engine.aio import AcceptorPolicy
from storage import InstanceRecord, PendingRequests, PosixInstanceStore, SqliteCatalog, StorageConfig
from workers.services import COMMITMENT_DIRECTORY, NodeServices, Outbound, build_services

__all__ = ["QRNode", "HOST"]

HOST = "127.0.0.1"
#: Bound on every wait for the server thread (start, stop, a call on its loop).
_WAIT_S = 30.0
# A journal segment is rotated past this; a test's stores never reach it.
_SEGMENT_BYTES = 64 << 20


class QRNode:
    """The node's services on ``root`` (see the module docstring).

    ``catalog_path``: an existing catalog to serve (default ``root/index.sqlite``).
    ``ae_table``: title -> (host, port) for C-MOVE destinations and commitment reports.
    ``timeout``: the ACSE, DIMSE and network timeouts of both its sides.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        ae_title: str = "QRSCP",
        ae_table: Mapping[str, tuple[str, int]] | None = None,
        catalog_path: str | Path | None = None,
        commitment_verify: bool = False,
        commitment_grace_s: float = 0.5,
        query: bool = True,
        retrieve: bool = True,
        commitment: bool = True,
        timeout: float = 15.0,
        max_pdu: int = 131072,
    ) -> None:
        self.root = Path(root)
        self.ae_title = ae_title
        self.ae_table = dict(ae_table or {})
        self.catalog_path = Path(catalog_path) if catalog_path else self.root / "index.sqlite"
        self.options = dict(query=query, retrieve=retrieve, commitment=commitment,
                            commitment_verify=commitment_verify, commitment_grace_s=commitment_grace_s)
        self.timeout = timeout
        self.max_pdu = max_pdu
        self.host = HOST
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.services: NodeServices | None = None
        self.catalog: SqliteCatalog | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> QRNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> QRNode:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="qrnode", daemon=True)
        self._thread.start()
        if not self._ready.wait(_WAIT_S):
            raise RuntimeError("the Q/R node did not start")
        if self._error is not None:
            raise RuntimeError(f"the Q/R node failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, event = self.loop, self._stop
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(_WAIT_S)
            if self._thread.is_alive():
                raise RuntimeError("the Q/R node did not stop")
            self._thread = None

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a coroutine function or a plain one) on the node's loop; its result."""
        assert self.loop is not None

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(_WAIT_S * 4)

    def apply(self, records: list[InstanceRecord]) -> None:
        """Put rows straight into the catalog (on its loop)."""
        self.call(lambda: self.catalog.apply(records))  # type: ignore[union-attr]

    def sweep(self) -> int:
        """Run one Storage Commitment sweep now; how many reports it delivered."""
        assert self.services is not None and self.services.commitment is not None
        return self.call(self.services.commitment.sweep)

    def pending_commitments(self) -> list[str]:
        return PendingRequests(self.root, COMMITMENT_DIRECTORY).keys()

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        loop = aio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.catalog = catalog = SqliteCatalog(self.catalog_path)
        config = StorageConfig(root=str(self.root), durability="none",
                               implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                               implementation_version_name=IMPLEMENTATION_VERSION_NAME)
        store = PosixInstanceStore(config, loop, segment_label="q0", segment_bytes=_SEGMENT_BYTES,
                                   on_append=lambda name, start, end, records: catalog.apply(records, {name: end}))
        outbound = Outbound(self.ae_title, self.max_pdu, self.timeout, self.timeout, self.timeout)
        self.services = services = build_services(
            store, called_ae=self.ae_title, catalog=catalog,
            pending=PendingRequests(self.root, COMMITMENT_DIRECTORY),
            ae_table=self.ae_table, outbound=outbound, **self.options)  # type: ignore[arg-type]
        policy = AcceptorPolicy(ae_title=self.ae_title.encode().ljust(16), supported_contexts=services.contexts,
                                maximum_pdu_size=self.max_pdu, implementation_class_uid=IMPLEMENTATION_CLASS_UID)
        server = aio.AssociationServer(aio.ServerConfig(
            policy=policy, services=services.registry, maximum_associations=None,
            acse_timeout=self.timeout, dimse_timeout=self.timeout, network_timeout=self.timeout,
        ), loop=loop)
        try:
            _, self.port = await server.start(HOST, 0)
            await services.start()  # as a worker does: the commitment sweep runs now
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await services.aclose()
            await server.close(grace=2.0)
            await store.aclose()
            catalog.close()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os
    import signal

    parser = argparse.ArgumentParser(prog="python -m bench.qrnode")
    parser.add_argument("root", type=Path)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--catalog", type=Path)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with QRNode(args.root, catalog_path=args.catalog) as node:
        temp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        temp.write_text(json.dumps({"port": node.port, "ae_title": node.ae_title}))
        os.replace(temp, args.ready_file)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
