"""The native async API (``engine.aio``): many associations on one uvloop loop, timers,
streaming operations and the order of events around a slow one.

Theory of operation: each test runs one coroutine on a fresh uvloop loop
(``asyncio.Runner(loop_factory=aio.new_event_loop)``) that owns both ends: an
``aio.AssociationServer`` on an ephemeral 127.0.0.1 port, serving C-STORE through a
service provider the test controls, and requestors made with ``aio.associate`` (or raw sockets, for peers
that misbehave on purpose). Timer tests use sub-second ACSE/DIMSE/network timeouts and
wait for the resulting event with a generous bound; they assert what happened (EOF,
A-ABORT, ``sink.abort()``), never how fast. Every server is closed and every requestor
ended inside the coroutine; the runner closes the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from engine import AE, aio, build_context, evt
from engine._acse import AcceptorPolicy
from engine._dimse import C_ECHO_RQ, C_STORE_RQ, CStoreRQ, encode_command, fragment_message
from engine._handlers import EchoHandler
from engine.services import Request, ServiceRegistry
from engine._pdu import pdata_header
from engine.sop_class import Verification
from tests.dicomdata import SOP_CLASSES, dataset_offset, make_dataset

HOST = "127.0.0.1"
WAIT_S = 10.0  # bound on waiting for an expected event; normally milliseconds
SHORT_TIMEOUT_S = 1.0  # the timeout under test: short, but longer than a stall of a loaded machine
IMPLEMENTATION_UID = str(AE().implementation_class_uid)
TINY_SOP_CLASSES = (SOP_CLASSES["sc"], SOP_CLASSES["sr"], SOP_CLASSES["ct"])


def run(main: Callable[[], Awaitable]) -> object:
    """Run ``main()`` on a new uvloop loop and close it."""
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        return runner.run(main())


def store_services(provider: object) -> ServiceRegistry:
    """C-ECHO answered Success, C-STORE served by ``provider``."""
    return ServiceRegistry().add(EchoHandler(), [C_ECHO_RQ]).add(provider, [C_STORE_RQ])


def server_config(**overrides) -> aio.ServerConfig:
    contexts = [build_context(uid, ExplicitVRLittleEndian) for uid in TINY_SOP_CLASSES]
    contexts.append(build_context(Verification))
    policy = AcceptorPolicy(
        ae_title=b"AIOSCP".ljust(16),
        supported_contexts=contexts,
        implementation_class_uid=IMPLEMENTATION_UID,
    )
    settings = dict(policy=policy, maximum_associations=None)
    settings.update(overrides)
    return aio.ServerConfig(**settings)


def requestor_config(**overrides) -> aio.RequestorConfig:
    settings = dict(
        calling_ae_title=b"AIOSCU".ljust(16),
        called_ae_title=b"AIOSCP".ljust(16),
        contexts=[build_context(uid, ExplicitVRLittleEndian) for uid in TINY_SOP_CLASSES]
        + [build_context(Verification)],
        implementation_class_uid=IMPLEMENTATION_UID,
        acse_timeout=WAIT_S,
        dimse_timeout=WAIT_S,
        network_timeout=WAIT_S,
    )
    settings.update(overrides)
    return aio.RequestorConfig(**settings)


async def start_server(config: aio.ServerConfig) -> tuple[aio.AssociationServer, int]:
    server = aio.AssociationServer(config, loop=asyncio.get_running_loop())
    _, port = await server.start(HOST, 0)
    return server, port


class Sinks:
    """A C-STORE service provider that counts, and remembers every operation it started."""

    def __init__(self, finish: Callable[["Sink"], Awaitable[int]] | None = None) -> None:
        self.opened: list[Sink] = []
        self.finished = 0
        self.aborted = 0
        self.bytes = 0
        self.max_active = 0
        self._finish = finish

    def start(self, request: Request) -> "Sink":
        assoc = request.association
        if assoc.server is not None:
            self.max_active = max(self.max_active, assoc.server.established_count)
        sink = Sink(self, request)
        self.opened.append(sink)
        return sink


class Sink:
    holds_reading = True

    def __init__(self, owner: Sinks, request: Request) -> None:
        self.owner = owner
        self.request = request
        self.received = 0
        self.state = "open"

    def write(self, data: memoryview) -> None:
        self.received += data.nbytes

    async def finish(self) -> int:
        self.state = "finishing"
        status = 0x0000
        if self.owner._finish is not None:
            status = await self.owner._finish(self)
        self.state = "finished"
        self.owner.finished += 1
        self.owner.bytes += self.received
        return status

    def abort(self) -> None:
        self.state = "aborted"
        self.owner.aborted += 1


def test_default_loop_is_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> bool:
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)

    assert run(main)


# ------------------------------------------------------------------ many associations


ASSOCIATIONS = 50
STORES_EACH = 10


def test_fifty_concurrent_associations_store_500(tiny_files):
    files = list(tiny_files)
    expected_bytes = sum(p.stat().st_size - dataset_offset(p) for p in files) * (
        ASSOCIATIONS * STORES_EACH // len(files)
    )
    assert ASSOCIATIONS * STORES_EACH % len(files) == 0  # every file sent equally often
    sinks = Sinks()

    async def one(index: int, port: int, barrier: asyncio.Barrier) -> list[int]:
        assoc = await aio.associate(HOST, port, requestor_config())
        assert assoc.is_established
        await barrier.wait()  # all 50 established at once before anyone stores
        statuses = []
        for j in range(STORES_EACH):
            path = files[(index * STORES_EACH + j) % len(files)]
            statuses.append(int((await assoc.send_c_store(path)).Status))
        await assoc.release()
        assert assoc.is_released
        return statuses

    async def main() -> list[list[int]]:
        server, port = await start_server(server_config(services=store_services(sinks)))
        try:
            barrier = asyncio.Barrier(ASSOCIATIONS)
            return await asyncio.wait_for(
                asyncio.gather(*(one(i, port, barrier) for i in range(ASSOCIATIONS))), 60
            )
        finally:
            await server.close(grace=WAIT_S)

    results = run(main)
    assert [s for statuses in results for s in statuses] == [0] * (ASSOCIATIONS * STORES_EACH)
    assert sinks.finished == ASSOCIATIONS * STORES_EACH
    assert sinks.aborted == 0
    assert sinks.bytes == expected_bytes
    assert sinks.max_active == ASSOCIATIONS


# ------------------------------------------------------------------ timers


def test_artim_closes_connection_that_never_requests():
    """PS3.8 9.2.3 (Sta2, Evt18 -> AA-2): a connection that sends nothing is closed."""
    events: list[str] = []

    def note(event: evt.Event) -> None:
        events.append(event.event.name)

    async def main() -> bytes:
        config = server_config(acse_timeout=SHORT_TIMEOUT_S, network_timeout=WAIT_S,
                               handlers=evt.normalize_handlers(
                                   [(e, note) for e in evt.NOTIFICATION_EVENTS]))
        server, port = await start_server(config)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                data = await asyncio.wait_for(reader.read(), WAIT_S)
            finally:
                writer.close()
            for _ in range(100):  # the server forgets it once the close completes
                if not server.active:
                    break
                await asyncio.sleep(0.01)
            assert not server.active
            return data
        finally:
            await server.close(grace=1.0)

    assert run(main) == b""  # closed without any PDU (no association ever existed)
    assert events == ["EVT_CONN_OPEN", "EVT_CONN_CLOSE"]


def test_network_timeout_aborts_silent_established_peer():
    server_side: list[aio.Association] = []

    def on_established(event: evt.Event) -> None:
        server_side.append(event.assoc)

    async def main() -> aio.Association:
        config = server_config(
            network_timeout=SHORT_TIMEOUT_S,
            handlers=evt.normalize_handlers([(evt.EVT_ESTABLISHED, on_established)]),
        )
        server, port = await start_server(config)
        try:
            # The requestor itself never times out: only the server's timer can end it.
            assoc = await aio.associate(HOST, port, requestor_config(network_timeout=None))
            assert assoc.is_established
            await asyncio.wait_for(asyncio.shield(assoc.closed), WAIT_S)
            return assoc
        finally:
            await server.close(grace=1.0)

    requestor = run(main)
    assert requestor.is_aborted and not requestor.is_released
    assert requestor.abort_info is not None and not requestor.abort_info.local  # A-ABORT
    (acceptor,) = server_side
    assert acceptor.is_aborted
    assert acceptor.abort_info.local and "network timeout" in acceptor.abort_info.detail


def test_dimse_timeout_aborts_peer_stalled_mid_dataset():
    sinks = Sinks()
    server_side: list[aio.Association] = []

    def on_established(event: evt.Event) -> None:
        server_side.append(event.assoc)

    async def main() -> aio.Association:
        config = server_config(
            dimse_timeout=SHORT_TIMEOUT_S,
            network_timeout=WAIT_S,
            services=store_services(sinks),
            handlers=evt.normalize_handlers([(evt.EVT_ESTABLISHED, on_established)]),
        )
        server, port = await start_server(config)
        loop = asyncio.get_running_loop()
        try:
            assoc = await aio.associate(HOST, port, requestor_config(network_timeout=None))
            assert assoc.is_established
            cx = next(c for c in assoc.accepted_contexts
                      if str(c.abstract_syntax) == SOP_CLASSES["ct"])
            rq = CStoreRQ(
                message_id=1,
                affected_sop_class_uid=str(SOP_CLASSES["ct"]),
                affected_sop_instance_uid="1.2.3.4.5",
                priority=2,
            )
            # The whole command, then the first (not last) fragment of a data set.
            part = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"  # (0008,0005) CS "ISO_IR 100"
            buffers = fragment_message(cx.context_id, encode_command(rq), None,
                                       assoc.conn.peer_max_pdu)
            buffers += [pdata_header(cx.context_id, False, False, len(part)), part]
            assoc.conn.send_buffers(buffers, loop.time())
            assoc.pump()
            await asyncio.wait_for(asyncio.shield(assoc.closed), WAIT_S)
            return assoc
        finally:
            await server.close(grace=1.0)

    requestor = run(main)
    assert requestor.is_aborted
    (sink,) = sinks.opened
    assert sink.state == "aborted" and sinks.aborted == 1 and sinks.finished == 0
    assert sink.received == 18  # the one fragment that came: 8-byte header + 10
    assert sink.request.command.affected_sop_instance_uid == "1.2.3.4.5"
    (acceptor,) = server_side
    assert acceptor.is_aborted and "DIMSE timeout" in acceptor.abort_info.detail


def test_store_handler_without_application_entity():
    """An aio server built without an AE still gives handlers a File Meta group."""
    from io import BytesIO

    from pydicom import dcmread

    seen: dict = {}

    def on_store(event: evt.Event) -> int:
        seen["part10"] = event.encoded_dataset(include_meta=True)
        seen["raw"] = event.encoded_dataset()
        return 0x0000

    ds = make_dataset("tiny", seed=0, unique=True)

    async def main() -> int:
        config = server_config(handlers=evt.normalize_handlers([(evt.EVT_C_STORE, on_store)]))
        assert config.ae is None
        server, port = await start_server(config)
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            status = await assoc.send_c_store(ds)
            await assoc.release()
            return int(status.Status)
        finally:
            await server.close(grace=1.0)

    assert run(main) == 0x0000
    back = dcmread(BytesIO(seen["part10"]))
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.SourceApplicationEntityTitle == "AIOSCU"
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_UID
    assert back.PixelData == ds.PixelData
    assert seen["part10"].endswith(seen["raw"])


def test_requestor_dimse_timeout_when_response_never_comes():
    """Our requestor gives up on a C-STORE-RSP after dimse_timeout and aborts; the
    acceptor's still-running sink is cut off cleanly when its loop shuts down."""
    never = asyncio.Event()

    async def stuck(sink: Sink) -> int:
        await never.wait()
        return 0x0000

    sinks = Sinks(stuck)
    problems: list[dict] = []

    async def main() -> tuple:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
        server, port = await start_server(server_config(services=store_services(sinks)))
        try:
            assoc = await aio.associate(HOST, port,
                                        requestor_config(dimse_timeout=SHORT_TIMEOUT_S))
            status = await assoc.send_c_store(make_dataset("tiny", seed=2, unique=True))
            await asyncio.wait_for(asyncio.shield(assoc.closed), WAIT_S)
            return status, assoc
        finally:
            await server.close(grace=SHORT_TIMEOUT_S)

    status, requestor = run(main)
    assert "Status" not in status  # no response: an empty status Dataset
    assert requestor.is_aborted and requestor.abort_info.local
    assert "DIMSE timeout" in requestor.abort_info.detail
    assert [s.state for s in sinks.opened] == ["finishing"]  # finish() never returned
    assert problems == []  # no "exception in callback" when the loop cancelled it


# ------------------------------------------------------------------ ordering


def test_release_request_waits_for_slow_sink_response():
    """An A-RELEASE-RQ that arrives while a sink finishes is handled after the
    C-STORE-RSP is sent: the requestor (already in Sta7) still gets its response."""
    order: list[str] = []
    finishing = asyncio.Event()

    async def slow_finish(sink: Sink) -> int:
        order.append("finish-start")
        finishing.set()
        await asyncio.sleep(SHORT_TIMEOUT_S)
        order.append("finish-end")
        return 0x0000

    def on_released(event: evt.Event) -> None:
        order.append("released")

    sinks = Sinks(slow_finish)
    ds = make_dataset("tiny", seed=2, unique=True)

    async def main() -> tuple[int, str]:
        config = server_config(
            services=store_services(sinks),
            handlers=evt.normalize_handlers([(evt.EVT_RELEASED, on_released)]),
        )
        server, port = await start_server(config)
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            store = asyncio.create_task(assoc.send_c_store(ds))
            await asyncio.wait_for(finishing.wait(), WAIT_S)
            release = asyncio.create_task(assoc.release())
            await asyncio.sleep(0)  # the release task runs up to its first wait
            state = assoc.conn.state.name
            assert not store.done()  # the A-RELEASE-RQ went out before the response
            status = await asyncio.wait_for(store, WAIT_S)
            await asyncio.wait_for(release, WAIT_S)
            assert assoc.is_released
            return int(status.Status), state
        finally:
            await server.close(grace=1.0)

    status, state_after_release_rq = run(main)
    assert state_after_release_rq == "Sta7"  # awaiting A-RELEASE-RP
    assert status == 0x0000
    assert order == ["finish-start", "finish-end", "released"]


def test_adopted_socket_is_served():
    """``adopt`` serves a connection accepted elsewhere (the listener-process design)."""
    import socket

    async def main() -> int:
        server = aio.AssociationServer(server_config(), loop=asyncio.get_running_loop())
        listener = socket.create_server((HOST, 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()
        try:
            connecting = asyncio.create_task(aio.associate(HOST, port, requestor_config()))
            accepted, _ = await loop.sock_accept(listener)
            await server.adopt(accepted)
            assoc = await connecting
            assert assoc.is_established
            status = await assoc.send_c_echo()
            await assoc.release()
            return int(status.Status)
        finally:
            listener.close()
            await server.close(grace=1.0)

    assert run(main) == 0x0000


def test_adopt_with_the_real_peer_address_of_a_relay():
    """``adopt(sock, peer=...)``: the address a relay reported is the one the allow-list
    judges and the association, its events and its logs show."""
    import ipaddress
    import socket

    seen: list[object] = []

    async def main() -> tuple[str, int]:
        config = server_config(handlers=evt.normalize_handlers(
            [(evt.EVT_CONN_OPEN, lambda event: seen.append(event.address))]))
        config.allowed_networks = [ipaddress.ip_network("192.0.2.0/24")]  # not 127.0.0.1
        server = aio.AssociationServer(config, loop=asyncio.get_running_loop())
        listener = socket.create_server((HOST, 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()
        try:
            connecting = asyncio.create_task(aio.associate(HOST, port, requestor_config()))
            accepted, _ = await loop.sock_accept(listener)
            served = await server.adopt(accepted, peer=("192.0.2.7", 4242))
            assoc = await connecting
            assert assoc.is_established
            await assoc.release()
            address = (served.requestor.address, served.requestor.port)
            # Refused by the allow-list when the real peer lies outside it.
            refused = asyncio.create_task(aio.associate(HOST, port, requestor_config()))
            other, _ = await loop.sock_accept(listener)
            try:
                await server.adopt(other, peer=("198.51.100.1", 1))
            except ConnectionRefusedError:
                pass
            else:
                raise AssertionError("a peer outside the allow-list was served")
            assert not (await refused).is_established
            return address
        finally:
            listener.close()
            await server.close(grace=1.0)

    assert run(main) == ("192.0.2.7", 4242)
    assert seen == [("192.0.2.7", 4242)]
