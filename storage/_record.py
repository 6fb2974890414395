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

__all__ = ["InstanceRecord", "IndexStats", "QUERY_FIELDS"]


class InstanceRecord(msgspec.Struct, frozen=True, array_like=True):
    """One stored instance. Field order is the msgpack array layout of the journal:
    append new fields at the end, with defaults, so old journals still decode.

    ``path`` is relative to the storage root; ``size`` counts the whole file (File Meta
    included); ``digest`` is the hex digest of the data set bytes as received, by
    ``digest_algorithm``; ``received_at`` is Unix time given by the caller.

    ``generation`` orders the copies of one SOP instance the node published: every
    publish takes a new, larger value, and the file carries it as its modification
    time (nanoseconds), so a record can be checked against the file at its path (see
    :mod:`storage._integrity`). 0: a record from before generations existed.

    The attributes after it are what query/retrieve matches on (PS3.4 C.6 keys beyond
    the ones above), extracted while the data set streams in; None when absent.
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
    digest: str
    calling_ae: str
    called_ae: str
    received_at: float
    # -- appended in record version 2 -------------------------------------------------
    generation: int = 0
    digest_algorithm: str = "sha256"
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    series_number: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    # -- appended in record version 3 -------------------------------------------------
    calling_address: str = ""
    specific_character_set: str | None = None


#: The fields a catalog matches query keys on (PS3.4 C.6.1.1.2 to C.6.1.1.5 keys the
#: record carries), beyond the UIDs.
QUERY_FIELDS = (
    "patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "study_date", "study_time", "accession_number", "study_id", "study_description",
    "referring_physician_name", "modality", "series_number", "series_description",
    "body_part_examined", "instance_number",
)


class IndexStats(msgspec.Struct, frozen=True):
    """Totals over a catalog. ``patients`` counts distinct non-empty Patient IDs."""

    instances: int
    bytes: int
    studies: int
    series: int
    patients: int
