"""Queries over a catalog: which entities match, in storage's terms.

Theory of operation: a query/retrieve service asks a :class:`~storage.Catalog` for the
patients, studies, series or instances whose records match a set of conditions. This
module says what such a question is -- a :class:`CatalogQuery` of :class:`Match`
conditions on :class:`~storage.InstanceRecord` fields at one :data:`LEVELS` level --
and what the answer looks like: a :class:`QueryCursor` that gives rows page by page,
each a ``dict`` of the level's fields (:data:`LEVEL_FIELDS`) plus the aggregates asked
for (:data:`AGGREGATES`), ordered by the level's key (:data:`LEVEL_KEYS`). A catalog
implementation translates it into its own query language; nothing here knows SQL,
DICOM tags or a wire encoding.

The match kinds are those of PS3.4 C.2.2.2, reduced to what a catalog must do:

* ``equal``: the field equals one of ``values`` (single value and UID list matching);
* ``pattern``: the field matches one of ``values``, where ``*`` stands for any run of
  characters and ``?`` for exactly one (wildcard matching; no escape exists);
* ``range``: ``values`` is ``(low, high)``; ``low <= field`` and the field, cut to the
  length of ``high``, ``<= high``; an empty bound is open (date and time ranges, whose
  upper bound compares at its own precision: ``1000`` includes ``100059``).

``fold_case`` compares letters A-Z without regard to case (PS3.4 C.2.2.2.1 allows it
for PN). An empty or absent field matches no condition. Universal matching is the
absence of a condition.

Records are rows of one instance each; an entity above IMAGE is the group of rows that
share its key. It matches when one of its rows meets every condition, so a condition on
a field of a lower level (``modality`` at STUDY level: ModalitiesInStudy) selects the
entities having such a row. Its fields are taken from its matching rows (for one entity
they normally agree; when they do not, the largest value is returned). Aggregates
always count the whole entity, matching rows or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._record import QUERY_FIELDS

__all__ = [
    "LEVELS",
    "LEVEL_KEYS",
    "LEVEL_FIELDS",
    "AGGREGATES",
    "MATCH_FIELDS",
    "Match",
    "CatalogQuery",
    "QueryCursor",
]

#: Query levels, from the top of the information model down (PS3.4 C.6.1, C.6.2).
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: The record field that identifies an entity of each level (its unique key).
LEVEL_KEYS: Mapping[str, str] = {
    "PATIENT": "patient_id",
    "STUDY": "study_instance_uid",
    "SERIES": "series_instance_uid",
    "IMAGE": "sop_instance_uid",
}

_PATIENT = ("patient_id", "patient_name", "patient_birth_date", "patient_sex")
_STUDY = ("study_instance_uid", "study_date", "study_time", "accession_number", "study_id",
          "study_description", "referring_physician_name")
_SERIES = ("series_instance_uid", "modality", "series_number", "series_description",
           "body_part_examined")

#: The fields a row of each level carries. A STUDY row has the patient's (the Study Root
#: model puts them at study level), a SERIES row its study's and patient's UIDs and ID;
#: an IMAGE row is the whole record (every field of :class:`~storage.InstanceRecord`).
#: Every row has the Specific Character Set its text values were stored in.
LEVEL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "PATIENT": _PATIENT + ("specific_character_set",),
    "STUDY": _STUDY + _PATIENT + ("specific_character_set",),
    "SERIES": _SERIES + ("study_instance_uid", "patient_id", "specific_character_set"),
    "IMAGE": (),  # every record field; filled in by _record_fields()
}

#: What a row may count or list over its whole entity, by level: the numbers of
#: related studies, series and instances (PS3.4 C.3.2 to C.3.4 "Number of ... Related
#: ..."), the distinct modalities and SOP classes of a study (ModalitiesInStudy,
#: SOPClassesInStudy), as lists, and the nodes whose storage holds a copy of an instance
#: (``nodes``, a list; empty where the catalog is one node's and names none).
AGGREGATES: Mapping[str, frozenset[str]] = {
    "PATIENT": frozenset(("related_studies", "related_series", "related_instances")),
    "STUDY": frozenset(("related_series", "related_instances", "modalities", "sop_classes")),
    "SERIES": frozenset(("related_instances",)),
    "IMAGE": frozenset(("nodes",)),
}

#: Fields a condition may name: the UIDs and the query fields of the record.
MATCH_FIELDS = frozenset(
    ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid",
     "transfer_syntax_uid") + QUERY_FIELDS
)

_KINDS = frozenset(("equal", "pattern", "range"))
# A list of UIDs (PS3.4 C.2.2.2.2) is bounded by the identifier it came in; this bounds
# what a catalog must bind as parameters however the identifier was built.
_MAX_VALUES = 100_000


def _record_fields() -> tuple[str, ...]:
    from ._record import InstanceRecord

    return tuple(InstanceRecord.__struct_fields__)


class Match(msgspec.Struct, frozen=True):
    """One condition on one record field (see the module docstring for the kinds)."""

    field: str
    kind: str
    values: tuple[str, ...]
    fold_case: bool = False

    def __post_init__(self) -> None:
        if self.field not in MATCH_FIELDS:
            raise ValueError(f"cannot match on {self.field!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"unknown match kind {self.kind!r}")
        if not all(isinstance(v, str) for v in self.values):
            raise ValueError("match values must be strings")
        if self.kind == "range":
            if len(self.values) != 2 or not any(self.values):
                raise ValueError("a range has two bounds, at least one of them set")
        elif not self.values or len(self.values) > _MAX_VALUES or not all(self.values):
            raise ValueError(f"a {self.kind} match needs 1 to {_MAX_VALUES} non-empty values")


class CatalogQuery(msgspec.Struct, frozen=True):
    """Entities of ``level`` whose records meet every one of ``matches``; each row also
    carries the ``aggregates`` asked for (names from :data:`AGGREGATES` for the level)."""

    level: str
    matches: tuple[Match, ...] = ()
    aggregates: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown query level {self.level!r}")
        unknown = self.aggregates - AGGREGATES[self.level]
        if unknown:
            raise ValueError(f"{self.level} rows have no {', '.join(sorted(unknown))}")

    @property
    def key(self) -> str:
        """The field rows are ordered and told apart by."""
        return LEVEL_KEYS[self.level]

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields each row carries (aggregates aside)."""
        return LEVEL_FIELDS[self.level] or _record_fields()


@runtime_checkable
class QueryCursor(Protocol):
    """The rows answering one :class:`CatalogQuery`, read page by page.

    It may be read from any thread, one call at a time (a service reads it in a worker
    thread to keep its event loop free); it holds no transaction between calls, so a
    long, slowly read answer does not hold back writers. Rows stored while it is read
    show up if their key comes after the last one returned.
    """

    def fetch(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` more rows, in key order; an empty list at the end.
        Raises :class:`~storage.CatalogError`."""
        ...

    def close(self) -> None:
        """Release what the cursor holds; safe more than once."""
        ...
