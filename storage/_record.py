"""The record of a stored instance: what the writer makes, the journal carries and a
catalog keeps.

Theory of operation: :class:`InstanceRecord` is the one description of a stored SOP
instance. A store makes it when an instance is published, the journal carries it as a
compact msgpack array, and every :class:`~storage.Catalog` keeps it, one per SOP
Instance UID; :class:`IndexStats` is what a catalog counts over them. This module holds
data only: no files, no database.
"""

from __future__ import annotations

import msgspec

__all__ = ["InstanceRecord", "IndexStats"]


class InstanceRecord(msgspec.Struct, frozen=True, array_like=True):
    """One stored instance. Field order is the msgpack array layout of the journal:
    append new fields at the end, with defaults, so old journals still decode.

    ``path`` is relative to the storage root; ``size`` counts the whole file (File Meta
    included); ``sha256`` is the hex digest of the data set bytes as received;
    ``received_at`` is Unix time given by the caller.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    modality: str | None
    study_date: str | None
    instance_number: str | None
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str
    calling_ae: str
    called_ae: str
    received_at: float


class IndexStats(msgspec.Struct, frozen=True):
    """Totals over a catalog. ``patients`` counts distinct non-empty Patient IDs."""

    instances: int
    bytes: int
    studies: int
    series: int
    patients: int
