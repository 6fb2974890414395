"""Micro-benchmarks of the storage hot paths (storage/).

Run with ``pytest bench/test_bench_storage.py``; CI runs them once each with
``--benchmark-disable`` as a smoke test.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from bench.corpus import make_dataset
from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storage import InstanceRecord, InstanceWriter, MetadataExtractor, SqliteCatalog, StorageConfig, publish_now

# A common P-DATA payload size (PS3.8 D.1 Maximum Length), so headers straddle fragments.
FRAGMENT = 16 * 1024
# A small CT slice: 256x256x16-bit pixel data plus the header, about 128 KiB + header.
INSTANCE_BYTES = 512 * 1024
# The indexer commits journal records in batches of this size.
BATCH = 500


def _data_set(ds) -> bytes:
    """The data set portion of ``ds`` written as a Part 10 file (what a C-STORE carries)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    (group_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + group_length :]


_CT = make_dataset("ct")  # CT Image Storage, 512x512x16 bit: a header then 512 KiB of pixels
_CT_BYTES = _data_set(_CT)
_CT_TS = str(_CT.file_meta.TransferSyntaxUID)


def _fragments(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + FRAGMENT] for i in range(0, len(view), FRAGMENT)]


def test_bench_metadata_extractor_ct(benchmark) -> None:
    chunks = _fragments(_CT_BYTES)

    def run() -> MetadataExtractor:
        extractor = MetadataExtractor(_CT_TS)
        for chunk in chunks:
            extractor.feed(chunk)
        return extractor

    extractor = benchmark(run)
    assert extractor.result.sop_instance_uid == _CT.SOPInstanceUID and extractor.error is None


def test_bench_writer_publish_none(benchmark, tmp_path: Path) -> None:
    ds = make_dataset("ct")
    ds.PixelData = bytes(INSTANCE_BYTES - len(_CT_BYTES) + len(_CT.PixelData))
    chunks = _fragments(_data_set(ds))
    config = StorageConfig(root=str(tmp_path), durability="none",
                           implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                           implementation_version_name=IMPLEMENTATION_VERSION_NAME)

    def run() -> InstanceRecord:
        writer = InstanceWriter(config, ds.SOPClassUID, ds.SOPInstanceUID, _CT_TS, "MODALITY", "ARCHIVE", received_at=0.0)
        writer.begin()
        for chunk in chunks:
            writer.write(chunk)
        return publish_now(writer)

    record = benchmark(run)
    assert abs(record.size - INSTANCE_BYTES) < 4096


def test_bench_catalog_apply(benchmark, tmp_path: Path) -> None:
    records = [
        InstanceRecord(
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid=f"1.2.826.0.1.3680043.8.499.{i // 100}",
            series_instance_uid=f"1.2.826.0.1.3680043.8.500.{i // 20}",
            patient_id=f"P{i // 100:04d}",
            patient_name="Doe^Jane",
            modality="CT",
            study_date="20240102",
            instance_number=str(i % 20 + 1),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"a/b/{i}.dcm",
            size=INSTANCE_BYTES,
            digest="ab" * 32,
            calling_ae="MODALITY",
            called_ae="ARCHIVE",
            received_at=1_700_000_000.0 + i,
        )
        for i in range(BATCH)
    ]
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        benchmark(catalog.apply, records, {"worker-1-1": BATCH})
        assert catalog.count() == BATCH
