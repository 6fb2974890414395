"""engine._scu: what our C-STORE puts on the wire for files and Datasets.

Theory of operation: our requestor AE sends to our acceptor AE over 127.0.0.1; the
acceptor's EVT_C_STORE handler records the C-STORE-RQ's UIDs, the accepted transfer
syntax and the data set bytes exactly as received. Each test checks one rule of
send_c_store: the data set's own SOP UIDs go in the request (a File Meta that differs
is logged), a deflated data set of odd length is padded to even, a file or Dataset
the peer accepted only in another uncompressed syntax is converted, and a compressed
one is refused with a clear error before anything is sent.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from engine import AE, build_context, evt
from engine._transcode import transcode
from engine.dataset import decode_dataset, encode_dataset
from tests import peers
from tests.dicomdata import dataset_bytes, make_dataset, write_part10

HOST = peers.HOST


class Received:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, str, str, bytes]] = []

    def __call__(self, event: evt.Event) -> int:
        with self.lock:
            self.items.append((
                event.request.AffectedSOPClassUID,
                event.request.AffectedSOPInstanceUID,
                str(event.context.transfer_syntax[0]),
                bytes(event.encoded_dataset()),
            ))
        return 0x0000


@pytest.fixture
def link() -> Iterator:
    """Factory: link(sop_class, transfer syntaxes) -> (requestor association, Received)."""
    made: list[AE] = []

    def make(sop_class: str, syntaxes: list[str]):
        received = Received()
        server = AE("OURSCP")
        made.append(server)
        server.add_supported_context(sop_class, syntaxes)
        port = server.start_server((HOST, 0), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, received)]).server_address[1]
        client = AE("OURSCU")
        made.append(client)
        assoc = client.associate(HOST, port, [build_context(sop_class, syntaxes)])
        assert assoc.is_established
        return assoc, received

    try:
        yield make
    finally:
        for ae in made:
            ae.shutdown()


def _rewrite_meta_instance(path: Path, uid: str) -> None:
    """Change the File Meta's Media Storage SOP Instance UID, not the data set's (by
    hand: pydicom's writer would make them agree)."""
    meta = dcmread(path).file_meta
    meta.MediaStorageSOPInstanceUID = uid
    head = BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.write_bytes(head.getvalue() + dataset_bytes(path))


def test_request_uses_the_data_sets_uids_and_logs_a_mismatch(link, tmp_path, caplog):
    ds = make_dataset("tiny", seed=3, unique=True)
    path = write_part10(ds, tmp_path / "a.dcm")
    _rewrite_meta_instance(path, "1.2.3.999")
    assoc, received = link(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    with caplog.at_level(logging.WARNING, logger="scpfleet.engine"):
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ((sop_class, sop_instance, _, _),) = received.items
    assert (sop_class, sop_instance) == (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert "1.2.3.999" in caplog.text and "data set's" in caplog.text


def _odd_deflated_file(tmp_path: Path):
    """(dataset, path, data set bytes) of a deflated instance whose data set has an
    odd length."""
    ds = make_dataset("deflated", unique=True)
    path = write_part10(ds, tmp_path / "d.dcm")
    raw = dataset_bytes(path)
    if len(raw) % 2 == 0:
        # Make it odd: add Data Set Trailing Padding (FFFC,FFFC) of growing length (the
        # last tag a data set may hold) until the deflated stream is odd.
        inflated = zlib.decompress(raw, -15)
        for size in range(2, 512, 2):
            padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, size) + bytes(size)
            body = zlib.compressobj(6, zlib.DEFLATED, -15)
            odd = body.compress(inflated + padding) + body.flush()
            if len(odd) % 2:
                break
        else:
            pytest.fail("no padding gave an odd deflated length")
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - len(raw)] + odd)
        raw = odd
    return ds, path, raw


def test_deflated_odd_length_is_padded(link, tmp_path):
    ds, path, raw = _odd_deflated_file(tmp_path)
    assoc, received = link(str(ds.SOPClassUID), [DeflatedExplicitVRLittleEndian])
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ((_, _, ts, got),) = received.items
    assert ts == DeflatedExplicitVRLittleEndian
    assert got == raw + b"\x00"  # PS3.5 A.5: one trailing null byte makes it even


@pytest.mark.interop
def test_deflated_odd_length_stored_by_storescp(storescp, tmp_path):
    """storescp aborts on an odd-length PDV; padded, it stores the instance."""
    scp = storescp()
    ds, path, raw = _odd_deflated_file(tmp_path)
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(HOST, scp.port, [build_context(str(ds.SOPClassUID),
                                                            [DeflatedExplicitVRLittleEndian])],
                             ae_title="STORESCP")
        assert assoc.is_established, scp.logs()
        assert assoc.send_c_store(path).Status == 0x0000, scp.logs()
        assoc.release()
    finally:
        ae.shutdown()
    (stored,) = scp.wait_for_files(1)
    assert dataset_bytes(stored) == raw + b"\x00"


@pytest.mark.parametrize("accepted", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_file_converted_to_the_accepted_syntax(link, tmp_path, accepted):
    ds = make_dataset("ct", unique=True)  # Explicit VR LE, 16-bit pixels
    path = write_part10(ds, tmp_path / "ct.dcm")
    assoc, received = link(str(ds.SOPClassUID), [accepted])
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ((_, _, ts, got),) = received.items
    assert ts == accepted
    assert got == transcode(dataset_bytes(path), ExplicitVRLittleEndian, accepted)
    back = decode_dataset(got, accepted)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.Rows == ds.Rows


def test_dataset_converted_across_byte_orders(link):
    ds = make_dataset("bigendian", unique=True)
    assoc, received = link(str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    ((_, _, ts, got),) = received.items
    assert ts == ExplicitVRLittleEndian
    expected = transcode(encode_dataset(ds, ExplicitVRBigEndian), ExplicitVRBigEndian, ts)
    assert got == expected  # pixel words swapped, not copied


def test_dataset_converted_from_explicit_to_implicit(link):
    ds = make_dataset("ct", unique=True)
    assoc, received = link(str(ds.SOPClassUID), [ImplicitVRLittleEndian])
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    ((_, _, ts, got),) = received.items
    assert ts == ImplicitVRLittleEndian and got == encode_dataset(ds, ts)


def test_compressed_not_accepted_is_a_clear_error(link, tmp_path):
    ds = make_dataset("encapsulated", unique=True)
    path = write_part10(ds, tmp_path / "j.dcm")
    assoc, received = link(str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    with pytest.raises(ValueError, match="compressed and cannot be converted"):
        assoc.send_c_store(path)
    with pytest.raises(ValueError, match="compressed and cannot be converted"):
        assoc.send_c_store(ds)
    assert assoc.is_established  # nothing was half-sent
    assoc.release()
    assert received.items == []
