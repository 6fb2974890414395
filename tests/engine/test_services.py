"""The service-provider seam (``engine.services``) and its dispatcher (``engine._dispatch``).

Theory of operation: unit tests for :func:`reply_of` and :class:`ServiceRegistry`, then
end-to-end cases on one uvloop loop owning both ends over 127.0.0.1: an
``aio.AssociationServer`` whose registry holds providers written for each case, and an
``aio.associate`` requestor. Cases check what the peer receives (statuses, comments,
order of PDUs) and what providers saw (fragments, cancellation, callbacks). Pipelined
requests and a release sent before our answer are written straight into the requestor's
sans-IO connection, as a misbehaving peer would. Every server is closed inside its
coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from engine import aio, build_context, evt, status
from engine._acse import AcceptorPolicy
from engine._handlers import EchoHandler
from engine.dimse import C_ECHO_RQ, C_STORE_RQ, CEchoRQ, CStoreRQ
from engine.services import Reply, Request, ServiceRegistry, reply_of
from engine.sop_class import Verification

HOST = "127.0.0.1"
WAIT_S = 10.0  # bound on waiting for an expected event; normally milliseconds
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.77"
# A tiny data set: (0008,0016) SOP Class UID only; providers here never parse it.
DATASET = b"\x08\x00\x16\x00\x1a\x00\x00\x00" + CT.encode() + b"\x00"


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        return runner.run(main())


# ------------------------------------------------------------------ reply_of, registry


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (0, (0, None)),
        (0xA700, (0xA700, None)),
        ((0xC000, "broken"), (0xC000, "broken")),
        ((0xB000,), (0xB000, None)),
        (Reply(0xFF00, "more"), (0xFF00, "more")),
        ((0, "x" * 100), (0, "x" * 64)),  # LO: 64 characters
        ((0, "line\nbreak"), (0, "line?break")),  # printable ASCII only
        (0x10000, (0xC000, "status outside 0..0xFFFF")),
        (-1, (0xC000, "status outside 0..0xFFFF")),
        ("nonsense", (0xC000, "invalid answer str")),
        (None, (0xC000, "invalid answer NoneType")),
        (True, (0xC000, "invalid answer bool")),
    ],
)
def test_reply_of(answer: Any, expected: tuple[int, str | None]) -> None:
    reply = reply_of(answer)
    assert (reply.status, reply.comment) == expected


def test_reply_of_keeps_data_set_and_fields() -> None:
    reply = reply_of(Reply(0xFF00, None, b"\x00\x00", {"number_of_remaining_suboperations": 3}))
    assert reply.dataset == b"\x00\x00"
    assert reply.fields == {"number_of_remaining_suboperations": 3}


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, request: Request) -> int:
        return 0


def test_registry_prefers_the_sop_class_specific_provider() -> None:
    specific, general = Named("specific"), Named("general")
    registry = ServiceRegistry().add(general, [C_STORE_RQ]).add(specific, [C_STORE_RQ], [CT])
    assert registry.lookup(C_STORE_RQ, CT) is specific
    assert registry.lookup(C_STORE_RQ, "1.2.3") is general
    assert registry.lookup(C_ECHO_RQ, CT) is None
    assert registry.commands() == {C_STORE_RQ}
    assert registry and not ServiceRegistry()


def test_registry_rejects_what_is_not_a_provider_or_a_request() -> None:
    with pytest.raises(TypeError):
        ServiceRegistry().add(object(), [C_STORE_RQ])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ServiceRegistry().add(Named("x"), [0x8001])  # a response command field


# ------------------------------------------------------------------ on the wire


def server_config(registry: ServiceRegistry, **overrides: Any) -> aio.ServerConfig:
    policy = AcceptorPolicy(
        ae_title=b"SVCSCP".ljust(16),
        supported_contexts=[build_context(CT, ExplicitVRLittleEndian), build_context(Verification)],
        implementation_class_uid=IMPLEMENTATION_UID,
    )
    settings: dict[str, Any] = dict(policy=policy, services=registry, maximum_associations=None,
                                    acse_timeout=WAIT_S, dimse_timeout=WAIT_S, network_timeout=WAIT_S)
    settings.update(overrides)
    return aio.ServerConfig(**settings)


def requestor_config(**overrides: Any) -> aio.RequestorConfig:
    settings: dict[str, Any] = dict(
        calling_ae_title=b"SVCSCU".ljust(16),
        called_ae_title=b"SVCSCP".ljust(16),
        contexts=[build_context(CT, ExplicitVRLittleEndian), build_context(Verification)],
        implementation_class_uid=IMPLEMENTATION_UID,
        acse_timeout=WAIT_S,
        dimse_timeout=WAIT_S,
        network_timeout=WAIT_S,
    )
    settings.update(overrides)
    return aio.RequestorConfig(**settings)


async def serving(registry: ServiceRegistry, **overrides: Any) -> tuple[aio.AssociationServer, int]:
    server = aio.AssociationServer(server_config(registry, **overrides),
                                   loop=asyncio.get_running_loop())
    _, port = await server.start(HOST, 0)
    return server, port


def store_rq(message_id: int, uid: str = "1.2.3.4") -> CStoreRQ:
    return CStoreRQ(message_id=message_id, affected_sop_class_uid=CT, affected_sop_instance_uid=uid)


class Recorder:
    """A C-STORE provider whose operations record what they saw and answer ``answer``."""

    def __init__(self, answer: Callable[[Request, bytes], Any] = lambda r, d: 0) -> None:
        self.answer = answer
        self.seen: list[tuple[int, bytes]] = []
        self.finished_inline: list[bool] = []

    def start(self, request: Request) -> "RecorderOp":
        return RecorderOp(self, request)


class RecorderOp:
    holds_reading = True

    def __init__(self, owner: Recorder, request: Request) -> None:
        self.owner = owner
        self.request = request
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        self.data += data

    def finish(self) -> Any:
        self.owner.seen.append((self.request.message_id, bytes(self.data)))
        return self.owner.answer(self.request, bytes(self.data))

    def abort(self) -> None:
        pass


def test_inline_answer_is_sent_and_the_data_set_arrives_whole() -> None:
    recorder = Recorder(lambda request, data: (0xB000, "coerced"))

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(recorder, [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            rsp = await assoc.send_c_store_raw(CT, "1.2.3.4", ExplicitVRLittleEndian, DATASET)
            await assoc.release()
            return rsp
        finally:
            await server.close(grace=1.0)

    rsp = run(main)
    assert (rsp.status, rsp.error_comment) == (0xB000, "coerced")
    assert rsp.affected_sop_instance_uid == "1.2.3.4"
    assert recorder.seen == [(1, DATASET)]


def test_unserved_command_and_sop_class_mismatch() -> None:
    """C-ECHO with no provider registered: 0211H; a C-STORE whose SOP class is not the
    context's: 0122H (PS3.4 B.2.3). The association stays usable."""
    recorder = Recorder()

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(recorder, [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            echo = await assoc.send_c_echo()
            cx = assoc.scu.find_context(CT)
            wrong = CStoreRQ(message_id=7, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                             affected_sop_instance_uid="1.2.3.5")
            mismatch = await assoc.scu.request(cx.context_id, wrong, dataset=DATASET)
            ok = await assoc.send_c_store_raw(CT, "1.2.3.6", ExplicitVRLittleEndian, DATASET)
            await assoc.release()
            return echo, mismatch, ok, assoc.is_released
        finally:
            await server.close(grace=1.0)

    echo, mismatch, ok, released = run(main)
    assert echo.Status == status.UNRECOGNIZED_OPERATION
    assert mismatch.status == status.REFUSED_SOP_CLASS_NOT_SUPPORTED
    assert ok.status == 0 and released
    assert [mid for mid, _ in recorder.seen] == [2]  # only the good store reached it


def test_provider_failures_are_answered_not_fatal() -> None:
    class Broken:
        def start(self, request: Request) -> Any:
            if request.command.affected_sop_instance_uid == "1.1":
                raise OSError("no such device")
            return RecorderOp(Recorder(self.fail), request)

        @staticmethod
        def fail(request: Request, data: bytes) -> Any:
            raise RuntimeError("bug in finish")

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(Broken(), [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            first = await assoc.send_c_store_raw(CT, "1.1", ExplicitVRLittleEndian, DATASET)
            second = await assoc.send_c_store_raw(CT, "1.2", ExplicitVRLittleEndian, DATASET)
            await assoc.release()
            return first, second
        finally:
            await server.close(grace=1.0)

    first, second = run(main)
    assert first.status == status.REFUSED_OUT_OF_RESOURCES
    assert "no such device" in first.error_comment
    assert second.status == status.ERROR_CANNOT_UNDERSTAND
    assert "bug in finish" in second.error_comment


def test_pipelined_requests_are_served_in_order_one_at_a_time() -> None:
    """A peer that sends three requests without waiting (beyond the asynchronous
    operations window of 1) gets three answers in order; the second operation starts only
    after the first answered, and reading pauses meanwhile."""
    active: list[int] = []
    overlap: list[bool] = []

    class Slow:
        def start(self, request: Request) -> Any:
            overlap.append(bool(active))
            active.append(request.message_id)
            return SlowOp(request)

    class SlowOp(RecorderOp):
        def __init__(self, request: Request) -> None:
            super().__init__(Recorder(), request)

        async def finish(self) -> int:  # type: ignore[override]
            await asyncio.sleep(0.05)
            active.remove(self.request.message_id)
            return 0

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(Slow(), [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            cx = assoc.scu.find_context(CT)
            # Each request is written as soon as the previous one is on the wire, not
            # answered: the three are in flight together.
            answers = await asyncio.wait_for(asyncio.gather(*(
                assoc.scu.request(cx.context_id, store_rq(mid, f"1.2.{mid}"), DATASET)
                for mid in (11, 12, 13)
            )), WAIT_S)
            await assoc.release()
            return answers
        finally:
            await server.close(grace=1.0)

    answers = run(main)
    assert [a.message_id_being_responded_to for a in answers] == [11, 12, 13]
    assert all(a.status == 0 for a in answers)
    assert overlap == [False, False, False]


def test_release_waits_for_the_answer_in_progress() -> None:
    """A-RELEASE-RQ sent right behind a C-STORE: the C-STORE-RSP goes out first, then
    the A-RELEASE-RP (PS3.8 Sta8 allows data; the answer is owed before release)."""

    class Slow:
        def start(self, request: Request) -> Any:
            return SlowOp(request)

    class SlowOp(RecorderOp):
        def __init__(self, request: Request) -> None:
            super().__init__(Recorder(), request)

        async def finish(self) -> int:  # type: ignore[override]
            await asyncio.sleep(0.1)
            return 0

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(Slow(), [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            cx = assoc.scu.find_context(CT)
            store = asyncio.ensure_future(assoc.scu.request(cx.context_id, store_rq(21), DATASET))
            await asyncio.sleep(0)  # the C-STORE is on the wire, its answer not yet back
            await assoc.release()  # sent at once, before the answer
            return (store.result() if store.done() else None), assoc.is_released
        finally:
            await server.close(grace=1.0)

    rsp, released = run(main)
    assert released
    assert rsp is not None and rsp.status == 0


def test_after_response_runs_once_the_answer_is_on_the_wire() -> None:
    """A provider's after-response callback sends a request of its own (as Storage
    Commitment sends its N-EVENT-REPORT after the N-ACTION-RSP): the peer has the
    response (its waiter answered) before the request arrives."""
    order: list[str] = []

    class Echoing:
        def start(self, request: Request) -> Any:
            assoc = request.association
            request.after_response(lambda: assoc.loop.create_task(assoc.send_c_echo()))
            return 0

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(Echoing(), [C_STORE_RQ]))
        try:
            def on_echo(event: Any) -> int:
                still_waiting = 1 in event.assoc.scu._waiters
                order.append(f"echo request, store still awaited: {still_waiting}")
                return 0

            config = requestor_config(
                handlers=evt.normalize_handlers([(evt.EVT_C_ECHO, on_echo)])
            )
            assoc = await aio.associate(HOST, port, config)
            rsp = await assoc.send_c_store_raw(CT, "1.2.3.4", ExplicitVRLittleEndian, DATASET)
            assert rsp.status == 0
            for _ in range(200):
                if order:
                    break
                await asyncio.sleep(0.01)
            await assoc.release()
        finally:
            await server.close(grace=1.0)

    run(main)
    assert order == ["echo request, store still awaited: False"]


def test_c_cancel_marks_the_request_in_progress() -> None:
    seen: list[bool] = []

    class Cancellable:
        def start(self, request: Request) -> Any:
            return CancellableOp(request)

    class CancellableOp(RecorderOp):
        holds_reading = False  # keeps reading: the C-CANCEL must get through

        def __init__(self, request: Request) -> None:
            super().__init__(Recorder(), request)

        async def finish(self) -> int:  # type: ignore[override]
            for _ in range(500):
                if self.request.cancelled:
                    break
                await asyncio.sleep(0.01)
            seen.append(self.request.cancelled)
            return status.CANCEL if self.request.cancelled else 0

    async def main() -> Any:
        from engine.dimse import CCancelRQ

        server, port = await serving(ServiceRegistry().add(Cancellable(), [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            cx = assoc.scu.find_context(CT)
            store = asyncio.ensure_future(assoc.scu.request(cx.context_id, store_rq(31), DATASET))
            await asyncio.sleep(0)
            assoc.conn.send_message(cx.context_id, CCancelRQ(message_id_being_responded_to=31),
                                    None, assoc.loop.time())
            assoc.pump()
            rsp = await asyncio.wait_for(store, WAIT_S)
            await assoc.release()
            return rsp
        finally:
            await server.close(grace=1.0)

    rsp = run(main)
    assert seen == [True] and rsp.status == status.CANCEL


def test_handler_registry_answers_echo_without_a_handler() -> None:
    async def main() -> Any:
        registry = ServiceRegistry().add(EchoHandler(), [C_ECHO_RQ])
        server, port = await serving(registry)
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            echo = await assoc.send_c_echo()
            await assoc.release()
            return echo
        finally:
            await server.close(grace=1.0)

    assert run(main).Status == 0


def test_c_echo_rq_struct_is_the_public_message() -> None:
    """engine.dimse re-exports the codec's messages for the services layer."""
    assert CEchoRQ(message_id=1).command_field == C_ECHO_RQ


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def test_pending_responses_with_identifiers_then_the_final_one() -> None:
    """A C-FIND-like provider sends two Pending responses, each with a data set, then
    Success; the requestor's exchange() hands the pendings to on_pending in order."""
    from engine.dimse import C_FIND_RQ, CFindRQ

    matches = [b"\x10\x00\x20\x00\x02\x00\x00\x00A ", b"\x10\x00\x20\x00\x02\x00\x00\x00B "]

    class Finder:
        def start(self, request: Request) -> Any:
            return FinderOp(request)

    class FinderOp(RecorderOp):
        holds_reading = False

        def __init__(self, request: Request) -> None:
            super().__init__(Recorder(), request)

        async def finish(self) -> Any:  # type: ignore[override]
            assert bytes(self.data) == b"\x10\x00\x20\x00\x00\x00\x00\x00"  # the identifier
            for match in matches:
                await self.request.send_pending(dataset=match)
            return Reply(status.SUCCESS)

    async def main() -> Any:
        contexts = [build_context(STUDY_ROOT_FIND, ExplicitVRLittleEndian)]
        policy = AcceptorPolicy(ae_title=b"SVCSCP".ljust(16), supported_contexts=contexts,
                                implementation_class_uid=IMPLEMENTATION_UID)
        server, port = await serving(ServiceRegistry().add(Finder(), [C_FIND_RQ]), policy=policy)
        try:
            assoc = await aio.associate(HOST, port, requestor_config(contexts=contexts))
            cx = assoc.scu.find_context(STUDY_ROOT_FIND)
            pending: list[tuple[int, bytes | None]] = []
            final, data = await assoc.scu.exchange(
                cx.context_id, CFindRQ(message_id=3, affected_sop_class_uid=STUDY_ROOT_FIND),
                b"\x10\x00\x20\x00\x00\x00\x00\x00",
                on_pending=lambda rsp, ds: pending.append((rsp.status, ds)),
            )
            await assoc.release()
            return pending, final, data
        finally:
            await server.close(grace=1.0)

    pending, final, data = run(main)
    assert pending == [(status.PENDING, matches[0]), (status.PENDING, matches[1])]
    assert final.status == status.SUCCESS and data is None


def test_a_request_the_codec_does_not_know_is_answered_0211() -> None:
    """N-GET-RQ (not served, not even decoded into a struct) on an accepted context:
    the answer is N-GET-RSP 0211H Unrecognized Operation, not an A-ABORT."""
    from engine.dimse import UnknownCommand

    async def main() -> Any:
        server, port = await serving(ServiceRegistry().add(Recorder(), [C_STORE_RQ]))
        try:
            assoc = await aio.associate(HOST, port, requestor_config())
            cx = assoc.scu.find_context(CT)
            n_get = UnknownCommand(
                command_field=0x0110, message_id=41,
                elements={0x0003: CT.encode() + b"\x00", 0x0800: b"\x01\x01",
                          0x1001: b"1.2.3.4\x00"},
            )
            rsp = await assoc.scu.request(cx.context_id, n_get)
            after = await assoc.send_c_store_raw(CT, "1.2.9", ExplicitVRLittleEndian, DATASET)
            await assoc.release()
            return rsp, after
        finally:
            await server.close(grace=1.0)

    rsp, after = run(main)
    assert rsp.command_field == 0x8110
    assert (rsp.message_id_being_responded_to, rsp.status) == (41, status.UNRECOGNIZED_OPERATION)
    assert after.status == 0
