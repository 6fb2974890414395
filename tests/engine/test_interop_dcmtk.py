"""The engine against DCMTK 3.6.7 over loopback: both roles, every transfer syntax we carry.

Theory of operation: these are acceptance tests. DCMTK's echoscu/storescu talk to our
acceptor (``AE.start_server`` on an ephemeral 127.0.0.1 port, or an
``engine.aio.AssociationServer`` on a loop thread for the streaming case), and our
requestor (``AE.associate``) talks to a bit-preserving DCMTK storescp. "Stored correctly"
always means byte-identical: what our handler gets from ``event.encoded_dataset()`` is the
data set portion of the sent file exactly (``tests.dicomdata.dataset_bytes``), and what
storescp +B writes is the data set we streamed from disk. Deflated files are compared as
the raw deflated bytes, not inflated.

DCMTK quirks relied on (see tests/peers.py for the rest):
- storescu does not send a deflated file's stream as stored: it inflates and deflates
  again (zlib level 6). That is pydicom's level too, so the stream we receive equals the
  file's; a file deflated at another level would arrive different. Pass-through of raw
  deflated bytes is proven instead by our SCU to storescp +B with a file re-deflated at
  level 1 (and by pynetdicom, which sends file bytes as they are).
- storescp aborts on an odd-length data set ("DIMSE: Odd Fragment Length"), so the
  re-deflated file is padded to even length, as pydicom pads its own.
- storescu exits 0 even when a store is refused (with --no-halt) or answered with a
  failure, so success is counted from its ``-v`` log ("Received Store Response
  (Success)").
- A rejected association makes storescu and echoscu exit 1 with "Association Rejected"
  and the result, source and reason spelled out on stderr, stable enough to assert on.
- Offered no PDU limit (0), DCMTK caps its PDVs at its own 128 KiB maximum.

Every server is stopped and every peer reaped at the end of its test (fixtures,
``finally`` blocks, ``tests.conftest`` reaping).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)

from engine import AE, StoragePresentationContexts, aio, build_context, evt
from engine._acse import AcceptorPolicy
from engine._dimse import C_STORE_RQ
from engine._loop import LoopThread
from engine._transcode import transcode
from engine.dataset import encode_dataset
from engine.services import Request, ServiceRegistry
from engine.sop_class import (
    COMPRESSED_TRANSFER_SYNTAXES,
    DEFAULT_TRANSFER_SYNTAXES,
    Verification,
)
from tests import peers
from tests.dicomdata import (
    dataset_bytes,
    dataset_offset,
    dataset_sha256,
    make_dataset,
    make_large_file,
    write_part10,
)

pytestmark = [pytest.mark.interop]

HOST = peers.HOST
SUCCESS_LINE = "Received Store Response (Success)"
#: Every transfer syntax the corpus uses: the uncompressed three, deflated, and the
#: compressed ones (the "encapsulated" kind is JPEG Baseline).
ALL_TS = [*DEFAULT_TRANSFER_SYNTAXES, DeflatedExplicitVRLittleEndian,
          *COMPRESSED_TRANSFER_SYNTAXES]
LARGE_FILE_BYTES = 64 << 20  # big enough that buffering would show, small enough for CI


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    peers.require_dcmtk()


def _meta(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID) from a file's meta."""
    meta = read_file_meta_info(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def _scp_ae(ae_title: str = "OURSCP") -> AE:
    """An AE supporting every Storage SOP class in every corpus syntax, plus Verification."""
    ae = AE(ae_title)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TS)
    ae.add_supported_context(Verification)
    return ae


def reflate(src: Path, dst: Path, level: int = 1) -> Path:
    """Copy a Deflated Explicit VR LE file with its data set re-deflated at ``level``
    (padded to even length as pydicom does): a stream no re-encoding peer produces, so
    a byte-identical arrival proves the bytes were passed through untouched."""
    inflated = dataset_bytes(src, inflate=True)
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(inflated) + deflater.flush()
    stream += b"\0" * (len(stream) % 2)
    with open(src, "rb") as f:
        head = f.read(dataset_offset(src))
    dst.write_bytes(head + stream)
    assert dataset_bytes(dst) != dataset_bytes(src)  # really a different stream
    return dst


class Received:
    """An EVT_C_STORE handler that writes each data set as received to
    ``out_dir``/<SOP Instance UID> and notes how it came, keyed by that UID."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.items: dict[str, dict] = {}

    def __call__(self, event: evt.Event) -> int:
        request = event.request
        path = self.out_dir / str(request.AffectedSOPInstanceUID)
        path.write_bytes(event.encoded_dataset())
        item = {
            "path": path,
            "sop_class": str(request.AffectedSOPClassUID),
            "ts": str(event.context.transfer_syntax[0]),
            "meta_ts": str(event.file_meta.TransferSyntaxUID),
        }
        with self.lock:
            self.items[str(request.AffectedSOPInstanceUID)] = item
        return 0x0000

    def check_identical(self, files: list[Path]) -> None:
        assert len(self.items) == len(files), f"{len(self.items)} stored of {len(files)}"
        for path in files:
            sop_class, sop_uid, ts = _meta(path)
            item = self.items.get(sop_uid)
            assert item is not None, f"{path.name} never arrived"
            assert item["sop_class"] == sop_class, path.name
            assert item["ts"] == ts == item["meta_ts"], f"{path.name}: sent in {item['ts']}"
            # Deflated data sets too: the raw deflated stream, exactly as sent.
            stored = item["path"].read_bytes()
            assert stored == dataset_bytes(path), f"{path.name} not byte-identical"


@pytest.fixture
def our_scp() -> Iterator:
    """Factory: our_scp(handler, **ae_settings) -> (ae, port); every server shut down after."""
    started: list[AE] = []

    def start(handler=None, ae_title: str = "OURSCP", **settings) -> tuple[AE, int]:
        ae = _scp_ae(ae_title)
        for name, value in settings.items():
            setattr(ae, name, value)
        handlers = [(evt.EVT_C_STORE, handler)] if handler is not None else []
        started.append(ae)
        server = ae.start_server((HOST, 0), block=False, evt_handlers=handlers)
        return ae, server.server_address[1]

    try:
        yield start
    finally:
        for ae in started:
            ae.shutdown()


# ------------------------------------------------------------------ (a) echoscu -> us


def test_echoscu_to_our_scp(our_scp, peer_log_dir):
    _, port = our_scp()
    result = peers.run_echoscu(HOST, port, aec="OURSCP", log_dir=peer_log_dir)
    assert result.returncode == 0, result.describe()


def test_echoscu_repeat_and_abort_seen_by_our_scp(peer_log_dir):
    seen: list[str] = []
    done = threading.Event()

    def note(event: evt.Event) -> None:
        seen.append(event.event.name)
        if event.event is evt.EVT_CONN_CLOSE:
            done.set()

    def on_echo(event: evt.Event) -> int:
        seen.append(f"echo {event.request.message_id}")
        return 0x0000

    ae = _scp_ae()
    handlers = [(e, note) for e in evt.NOTIFICATION_EVENTS] + [(evt.EVT_C_ECHO, on_echo)]
    try:
        port = ae.start_server((HOST, 0), block=False, evt_handlers=handlers).server_address[1]
        result = peers.run_echoscu(HOST, port, extra_args=["--repeat", "3", "--abort"],
                                   log_dir=peer_log_dir)
        assert result.returncode == 0, result.describe()
        assert done.wait(10)
    finally:
        ae.shutdown()
    echoes = [s for s in seen if s.startswith("echo")]
    assert len(echoes) == 3 and len(set(echoes)) == 3  # three messages, three IDs
    assert "EVT_ABORTED" in seen and "EVT_RELEASED" not in seen
    assert seen.index("EVT_ESTABLISHED") < seen.index(echoes[0])
    assert seen[-1] == "EVT_CONN_CLOSE"


# ------------------------------------------------------------------ (b) storescu -> us


def test_storescu_corpus_one_association_byte_identical(
    our_scp, dicom_files, peer_log_dir, tmp_path
):
    syntaxes = {_meta(p)[2] for p in dicom_files}
    assert len(syntaxes) >= 5 and DeflatedExplicitVRLittleEndian in syntaxes  # the corpus
    received = Received(tmp_path / "stored")
    _, port = our_scp(received)
    result = peers.run_storescu(
        HOST, port, dicom_files, aec="OURSCP", extra_args=["-v"], log_dir=peer_log_dir
    )
    assert result.returncode == 0, result.describe()
    assert result.stderr.count("Requesting Association") == 1, result.describe()
    assert result.stderr.count(SUCCESS_LINE) == len(dicom_files), result.describe()
    received.check_identical(dicom_files)


def test_storescu_parallel_tiny_files_byte_identical(our_scp, tiny_files, peer_log_dir, tmp_path):
    received = Received(tmp_path / "stored")
    _, port = our_scp(received)
    results = peers.run_storescu_parallel(
        HOST, port, tiny_files, 4, aec="OURSCP", extra_args=["-v"], log_dir=peer_log_dir
    )
    assert len(results) == 4
    for result in results:
        assert result.returncode == 0, result.describe()
    assert sum(r.stderr.count(SUCCESS_LINE) for r in results) == len(tiny_files)
    received.check_identical(tiny_files)


@pytest.mark.parametrize("our_max_pdu", [4096, 0], ids=["ours-4096", "ours-unlimited"])
def test_storescu_small_pdu_to_our_scp(
    our_scp, dicom_files, peer_log_dir, tmp_path, our_max_pdu
):
    """storescu limited to 4 KiB PDUs; our limit 4 KiB or none (0: DCMTK then caps its
    PDVs at its own 128 KiB maximum)."""
    received = Received(tmp_path / "stored")
    _, port = our_scp(received, maximum_pdu_size=our_max_pdu)
    result = peers.run_storescu(HOST, port, dicom_files, aec="OURSCP",
                                extra_args=["-v", "--max-pdu", "4096"], log_dir=peer_log_dir)
    assert result.returncode == 0, result.describe()
    assert result.stderr.count(SUCCESS_LINE) == len(dicom_files), result.describe()
    received.check_identical(dicom_files)


# ------------------------------------------------------------------ (c) us -> storescp


def _exact_contexts(files: list[Path]) -> list:
    """One requested context per (SOP class, transfer syntax) pair, each with that syntax."""
    pairs = dict.fromkeys((_meta(p)[0], _meta(p)[2]) for p in files)
    return [build_context(sop, ts) for sop, ts in pairs]


def _received_by_uid(files: list[Path]) -> dict[str, Path]:
    return {_meta(p)[1]: p for p in files}


def test_our_scu_streams_files_to_storescp_byte_identical(storescp, dicom_files, tmp_path):
    fresh = write_part10(make_dataset("deflated", unique=True), tmp_path / "deflated.dcm")
    dicom_files = [*dicom_files, reflate(fresh, tmp_path / "reflated.dcm")]
    scp = storescp()
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(HOST, scp.port, _exact_contexts(dicom_files), ae_title="STORESCP")
        assert assoc.is_established, scp.logs()
        for path in dicom_files:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, f"{path.name}: {status}\n{scp.logs()}"
        assoc.release()
        assert assoc.is_released
    finally:
        ae.shutdown()
    stored = _received_by_uid(scp.wait_for_files(len(dicom_files)))
    assert len(stored) == len(dicom_files)
    for path in dicom_files:
        _, sop_uid, ts = _meta(path)
        out = stored[sop_uid]
        assert _meta(out)[2] == ts, path.name
        assert dataset_bytes(out) == dataset_bytes(path), f"{path.name} not byte-identical"


@pytest.mark.parametrize("their_max_pdu", [4096, 131072])
def test_our_scu_respects_storescp_max_pdu(storescp, dicom_files, their_max_pdu):
    scp = storescp(max_pdu=their_max_pdu)
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(HOST, scp.port, _exact_contexts(dicom_files),
                             ae_title="STORESCP", max_pdu=4096)
        assert assoc.is_established, scp.logs()
        assert assoc.acceptor.maximum_length == their_max_pdu
        for path in dicom_files:
            assert assoc.send_c_store(path).Status == 0x0000, f"{path.name}\n{scp.logs()}"
        assoc.release()
    finally:
        ae.shutdown()
    stored = _received_by_uid(scp.wait_for_files(len(dicom_files)))
    for path in dicom_files:
        assert dataset_bytes(stored[_meta(path)[1]]) == dataset_bytes(path), path.name


def test_our_scu_sends_datasets_to_storescp(storescp):
    scp = storescp()
    datasets = [
        make_dataset("ct", unique=True),
        make_dataset("implicit", unique=True),
        make_dataset("bigendian", unique=True),
        make_dataset("tiny", seed=1, unique=True),  # Basic Text SR: nested sequences
    ]
    contexts = [build_context(ds.SOPClassUID, DEFAULT_TRANSFER_SYNTAXES) for ds in datasets]
    contexts = list({str(cx.abstract_syntax): cx for cx in contexts}.values())
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(HOST, scp.port, contexts, ae_title="STORESCP")
        assert assoc.is_established, scp.logs()
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000, scp.logs()
        assoc.release()
    finally:
        ae.shutdown()
    stored = _received_by_uid(scp.wait_for_files(len(datasets)))
    for ds in datasets:
        out = stored[str(ds.SOPInstanceUID)]
        ts = _meta(out)[2]
        source = str(ds.file_meta.TransferSyntaxUID)
        big = ExplicitVRBigEndian
        # What storescp +B wrote is exactly pydicom's encoding in the accepted syntax,
        # or, across byte orders, the data set's own encoding swapped by VR...
        if (source == big) == (ts == big):
            assert dataset_bytes(out) == encode_dataset(ds, ts)
        else:
            assert dataset_bytes(out) == transcode(encode_dataset(ds, source), source, ts)
        # ...and it decodes to the same content (16-bit pixels as numbers).
        back = dcmread(out)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PatientName == ds.PatientName
        if "PixelData" in ds:
            assert _words(back.PixelData, ts == big) == _words(ds.PixelData, source == big)


def _words(data: bytes, big_endian: bool) -> list[int]:
    """16-bit pixel values of raw Pixel Data in the given byte order."""
    return list(struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 2}H", data))


def test_our_scu_echo_to_storescp(storescp):
    scp = storescp()
    ae = AE("OURSCU")
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(HOST, scp.port, ae_title="STORESCP")
        assert assoc.is_established, scp.logs()
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released
    finally:
        ae.shutdown()


# ------------------------------------------------------------------ (d) rejections


def test_wrong_called_aet_rejected_storescu_and_echoscu(
    our_scp, tiny_files, peer_log_dir, tmp_path
):
    received = Received(tmp_path / "stored")
    _, port = our_scp(received, require_called_aet=True)
    store = peers.run_storescu(HOST, port, tiny_files[:2], aec="NOT-OURSCP",
                               log_dir=peer_log_dir)
    echo = peers.run_echoscu(HOST, port, aec="NOT-OURSCP", log_dir=peer_log_dir)
    for result in (store, echo):
        assert result.returncode != 0, result.describe()
        assert "Association Rejected" in result.stderr, result.describe()
        assert "Rejected Permanent, Source: Service User" in result.stderr
        assert "Called AE Title Not Recognized" in result.stderr
    assert not received.items
    # The right title is still accepted.
    assert peers.run_echoscu(HOST, port, aec="OURSCP", log_dir=peer_log_dir).returncode == 0


def _aio_requestor_config(ae: AE) -> aio.RequestorConfig:
    return aio.RequestorConfig(
        calling_ae_title=b"AIOSCU".ljust(16),
        called_ae_title=b"OURSCP".ljust(16),
        contexts=[build_context(Verification)],
        implementation_class_uid=str(ae.implementation_class_uid),
        acse_timeout=10,
        dimse_timeout=10,
        network_timeout=10,
    )


def test_maximum_associations_rejects_second(our_scp, peer_log_dir):
    _, port = our_scp(maximum_associations=1)
    holder = AE("HOLDER")
    holder.add_requested_context(Verification)
    try:
        first = holder.associate(HOST, port, ae_title="OURSCP")
        assert first.is_established

        async def second() -> aio.Association:
            assoc = await aio.associate(HOST, port, _aio_requestor_config(holder))
            await assoc.wait_closed()
            return assoc

        with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
            rejected = runner.run(second())
        assert rejected.is_rejected and not rejected.is_established
        rj = rejected.rejection
        # PS3.8 Table 9-21: rejected-transient, service-provider (presentation), local
        # limit exceeded.
        assert (rj.result, rj.source, rj.reason) == (2, 3, 2)

        echo = peers.run_echoscu(HOST, port, aec="OURSCP", log_dir=peer_log_dir)
        assert echo.returncode != 0, echo.describe()
        assert "Rejected Transient" in echo.stderr, echo.describe()
        assert "Local Limit Exceeded" in echo.stderr, echo.describe()

        first.release()
        assert first.is_released
    finally:
        holder.shutdown()
    # With the first one gone, a new association is welcome again.
    assert peers.run_echoscu(HOST, port, aec="OURSCP", log_dir=peer_log_dir).returncode == 0


# ------------------------------------------------------------------ (e) streaming, large


class HashingSink:
    """A C-STORE operation that hashes fragments as they come and keeps none of them."""

    holds_reading = True

    def __init__(self, log: list) -> None:
        self.digest = hashlib.sha256()
        self.writes = 0
        self.largest = 0
        self.total = 0
        self.log = log

    def write(self, data: memoryview) -> None:
        self.digest.update(data)
        self.writes += 1
        self.total += data.nbytes
        self.largest = max(self.largest, data.nbytes)

    async def finish(self) -> int:
        self.log.append(("finish", self))
        return 0x0000

    def abort(self) -> None:
        self.log.append(("abort", self))


def test_large_file_streams_through_hashing_sink(tmp_path, peer_log_dir):
    path = make_large_file(tmp_path / "large.dcm", LARGE_FILE_BYTES)
    sop_class, sop_uid, ts = _meta(path)
    assert ts == ExplicitVRLittleEndian
    log: list = []
    requests: list = []
    max_pdu = 16382

    class Hashing:
        def start(self, request: Request) -> HashingSink:
            requests.append(request.command)
            return HashingSink(log)

    policy = AcceptorPolicy(
        ae_title=b"OURSCP".ljust(16),
        supported_contexts=[build_context(sop_class, ALL_TS)],
        maximum_pdu_size=max_pdu,
        implementation_class_uid=str(AE().implementation_class_uid),
    )
    config = aio.ServerConfig(policy=policy,
                              services=ServiceRegistry().add(Hashing(), [C_STORE_RQ]))
    runner = LoopThread(name="test-large-file")
    server = None
    try:

        async def start() -> aio.AssociationServer:
            srv = aio.AssociationServer(config, loop=runner.loop)
            await srv.start(HOST, 0)
            return srv

        server = runner.run(start())
        port = server.address[1]
        result = peers.run_storescu(HOST, port, [path], aec="OURSCP", extra_args=["-v"],
                                    timeout=120, log_dir=peer_log_dir)
        assert result.returncode == 0, result.describe()
        assert result.stderr.count(SUCCESS_LINE) == 1, result.describe()
    finally:
        if server is not None:
            runner.run(server.close(grace=2.0))
        runner.stop()
    assert [r.affected_sop_instance_uid for r in requests] == [sop_uid]
    assert [kind for kind, _ in log] == ["finish"]
    sink = log[0][1]
    assert sink.digest.hexdigest() == dataset_sha256(path)
    assert sink.total == path.stat().st_size - dataset_offset(path)
    # Streamed: the data set came as many PDU-sized fragments, never as one buffer.
    assert sink.largest <= max_pdu
    assert sink.writes >= LARGE_FILE_BYTES // max_pdu
