"""``Catalog.query``: every level, match kind and aggregate, against a reference matcher.

Theory of operation: a small corpus of records (patients, studies, series with mixed
case, empty and absent values, a NULL Patient ID, wildcard and LIKE metacharacters in
values) is applied to each catalog implementation of test_catalog.IMPLEMENTATIONS. Each
query is answered by the catalog and by :func:`reference`, a plain-Python reading of
storage._query's rules (an entity matches when one of its rows meets every condition;
aggregates count the whole entity), and both must agree row for row, in key order, for
any page size. Hypothesis draws random conditions over the same corpus.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import AGGREGATES, LEVELS, Catalog, CatalogQuery, InstanceRecord, Match, QueryCursor
from tests.storage import record
from tests.storage.test_catalog import IMPLEMENTATIONS


def _corpus() -> list[InstanceRecord]:
    rows = []
    n = 0
    patients = [("P1", "Doe^Jane", "19700101", "F"), ("P2", "doe^john", "19800202", "M"),
                ("P3", "Smith^Ann", None, "F"), (None, None, None, None),
                ("P_5%", "O'Brien^Sean", "19901231", "")]
    modalities = ["CT", "MR", "ct", "SR", None]
    for p, (pid, name, birth, sex) in enumerate(patients):
        for s in range(2):
            study = 10 * p + s
            for r in range(2 if pid else 1):
                for k in range(2):
                    n += 1
                    base = record(n, study=study, series=r, patient=pid)
                    rows.append(msgspec.structs.replace(
                        base,
                        patient_name=name,
                        patient_birth_date=birth,
                        patient_sex=sex,
                        modality=modalities[(p + r) % len(modalities)],
                        study_date=["20240102", "20231231", "", None][(p + s) % 4],
                        study_time=["0930", "101500.25", "23", None][(p + s + k) % 4],
                        accession_number=f"A[{p}]{s}" if s else f"ACC*{p}",
                        study_description=["Chest CT", "chest ct", "Head"][study % 3],
                        series_number=str(r + 1),
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2" if k else "1.2.840.10008.5.1.4.1.1.4",
                    ))
    return rows


CORPUS = _corpus()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    with IMPLEMENTATIONS[request.param](tmp_path, request) as opened:
        opened.apply(CORPUS)
        yield opened


# ------------------------------------------------------------------ the reference


def _fold(text: str) -> str:
    return re.sub("[A-Z]", lambda m: m.group(0).lower(), text)


def _row_matches(rec: InstanceRecord, match: Match) -> bool:
    value = getattr(rec, match.field)
    if not value:
        return False
    if match.kind == "range":
        low, high = match.values
        return (not low or value >= low) and (not high or value[: len(high)] <= high)
    for wanted in match.values:
        got, want = (_fold(value), _fold(wanted)) if match.fold_case else (value, wanted)
        if match.kind == "equal" and got == want:
            return True
        if match.kind == "pattern" and fnmatch.fnmatchcase(got, want.replace("[", "[[]")):
            return True
    return False


def reference(records: list[InstanceRecord], query: CatalogQuery, node: str = "") -> list[dict[str, Any]]:
    """What ``query`` answers over ``records``, all stored by ``node`` ('' names none)."""
    key = query.key
    groups: dict[Any, list[InstanceRecord]] = {}
    for rec in records:
        groups.setdefault(getattr(rec, key), []).append(rec)
    out = []
    for entity in sorted(groups, key=lambda k: (k is not None, k or "")):
        rows = groups[entity]
        matching = [r for r in rows if all(_row_matches(r, m) for m in query.matches)]
        if not matching:
            continue
        row: dict[str, Any] = {}
        for name in query.fields:
            values = [getattr(r, name) for r in matching if getattr(r, name) is not None]
            row[name] = max(values) if values else None
        for name in query.aggregates:
            if name == "related_instances":
                row[name] = len(rows)
            elif name == "related_series":
                row[name] = len({r.series_instance_uid for r in rows})
            elif name == "related_studies":
                row[name] = len({r.study_instance_uid for r in rows})
            elif name == "modalities":
                row[name] = sorted({r.modality for r in rows if r.modality})
            elif name == "sop_classes":
                row[name] = sorted({r.sop_class_uid for r in rows})
            elif name == "nodes":
                row[name] = [node] if node else []
        out.append(row)
    return out


def everything(cursor: QueryCursor, page: int) -> list[dict[str, Any]]:
    rows = []
    try:
        while batch := cursor.fetch(page):
            rows.extend(batch)
    finally:
        cursor.close()
    for row in rows:
        for name in ("modalities", "sop_classes"):
            if name in row:
                row[name] = sorted(row[name])
    return rows


def check(catalog: Catalog, query: CatalogQuery, pages: tuple[int, ...] = (1, 3, 1000)) -> list[dict[str, Any]]:
    expected = reference(CORPUS, query, getattr(catalog, "node", "") or "")
    for page in pages:
        assert everything(catalog.query(query), page) == expected, (query, page)
    return expected


def keys(rows: list[dict[str, Any]], field: str) -> list[Any]:
    return [row[field] for row in rows]


# ------------------------------------------------------------------ cases


@pytest.mark.parametrize("level", LEVELS)
def test_universal_query_every_level_with_every_aggregate(catalog: Catalog, level: str) -> None:
    rows = check(catalog, CatalogQuery(level, aggregates=AGGREGATES[level]))
    assert rows and len(rows) == len({row[CatalogQuery(level).key] for row in rows})


def test_patient_level_includes_the_entity_without_a_patient_id(catalog: Catalog) -> None:
    rows = check(catalog, CatalogQuery("PATIENT", aggregates=frozenset({"related_studies"})))
    assert keys(rows, "patient_id") == [None, "P1", "P2", "P3", "P_5%"]
    assert rows[0]["related_studies"] == 2


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (Match("patient_id", "equal", ("P2",)), ["P2"]),
        (Match("patient_id", "equal", ("P2", "P3", "P9")), ["P2", "P3"]),
        (Match("patient_id", "equal", ("p2",)), []),  # case-sensitive without fold_case
        (Match("patient_name", "equal", ("DOE^JANE",), fold_case=True), ["P1"]),
        (Match("patient_name", "pattern", ("doe*",), fold_case=True), ["P1", "P2"]),
        (Match("patient_name", "pattern", ("Doe*",)), ["P1"]),
        (Match("patient_name", "pattern", ("?mith*",)), ["P3"]),
        (Match("patient_name", "pattern", ("O'*",)), ["P_5%"]),
        (Match("patient_id", "pattern", ("P_*",)), ["P_5%"]),  # '_' is no wildcard
        (Match("patient_id", "pattern", ("P%*",)), []),  # nor is '%'
        (Match("patient_id", "equal", ("P_5%",), fold_case=True), ["P_5%"]),
        (Match("patient_id", "equal", ("P__%",), fold_case=True), []),
        (Match("patient_birth_date", "range", ("19750101", "")), ["P2", "P_5%"]),
        (Match("patient_birth_date", "range", ("", "19850101")), ["P1", "P2"]),
        (Match("patient_sex", "equal", ("F",)), ["P1", "P3"]),
    ],
)
def test_patient_matching(catalog: Catalog, match: Match, expected: list[str]) -> None:
    rows = check(catalog, CatalogQuery("PATIENT", (match,)))
    assert keys(rows, "patient_id") == expected


def test_wildcards_and_brackets_are_literal_where_they_are_no_wildcard(catalog: Catalog) -> None:
    # "A[1]1": '[' is a literal character in DICOM; GLOB must not read it as a class.
    rows = check(catalog, CatalogQuery("STUDY", (Match("accession_number", "pattern", ("A[1]*",)),)))
    assert keys(rows, "accession_number") == ["A[1]1"]
    rows = check(catalog, CatalogQuery("STUDY", (Match("accession_number", "equal", ("ACC*2",)),)))
    assert keys(rows, "accession_number") == ["ACC*2"]  # a literal '*' matched by equality


def test_date_and_time_ranges_exclude_empty_and_compare_at_the_bound_precision(catalog: Catalog) -> None:
    rows = check(catalog, CatalogQuery("STUDY", (Match("study_date", "range", ("20240101", "20240131")),)))
    assert {row["study_date"] for row in rows} == {"20240102"}
    rows = check(catalog, CatalogQuery("STUDY", (Match("study_date", "range", ("", "20241231")),)))
    assert "" not in {row["study_date"] for row in rows} and None not in {row["study_date"] for row in rows}
    rows = check(catalog, CatalogQuery("IMAGE", (Match("study_time", "range", ("0900", "1015")),)))
    assert {row["study_time"] for row in rows} == {"0930", "101500.25"}  # 1015 includes 101500.25


def test_a_lower_level_condition_selects_studies_and_counts_stay_whole(catalog: Catalog) -> None:
    query = CatalogQuery("STUDY", (Match("modality", "equal", ("MR",)),),
                         frozenset({"related_instances", "related_series", "modalities"}))
    rows = check(catalog, query)
    assert rows
    for row in rows:
        assert "MR" in row["modalities"]
        assert row["related_instances"] == sum(r.study_instance_uid == row["study_instance_uid"] for r in CORPUS)


def test_conditions_meet_on_one_row(catalog: Catalog) -> None:
    """Series 0 of study 0 is CT with SOP class MR on k=0: both on one row match."""
    both = (Match("modality", "equal", ("CT",)), Match("sop_class_uid", "equal", ("1.2.840.10008.5.1.4.1.1.4",)))
    check(catalog, CatalogQuery("SERIES", both))
    check(catalog, CatalogQuery("IMAGE", both))


def test_hierarchical_image_query(catalog: Catalog) -> None:
    rows = check(catalog, CatalogQuery("IMAGE", (Match("study_instance_uid", "equal", ("1.2.4.0",)),
                                                 Match("series_instance_uid", "equal", ("1.2.4.0.1",)))))
    assert [InstanceRecord(**row) for row in rows] == sorted(
        (r for r in CORPUS if r.series_instance_uid == "1.2.4.0.1"), key=lambda r: r.sop_instance_uid)


def test_quarantined_instances_are_out_of_every_query(catalog: Catalog) -> None:
    """Rows without a Study or Series Instance UID (kept by ``incomplete quarantine``)
    have no place in the hierarchy: no level lists them, no count includes them."""
    catalog.apply([msgspec.structs.replace(record(900_001, patient="P1"), study_instance_uid="",
                                           path="quarantine/1.2.3.900001.dcm"),
                   msgspec.structs.replace(record(900_002, patient="P9"), series_instance_uid="",
                                           path="quarantine/1.2.3.900002.dcm")])
    for level in LEVELS:
        check(catalog, CatalogQuery(level, aggregates=AGGREGATES[level]), pages=(1000,))
    assert catalog.get("1.2.3.900001") is not None  # indexed all the same


def test_a_cursor_sees_rows_stored_after_its_last_key(catalog: Catalog) -> None:
    cursor = catalog.query(CatalogQuery("IMAGE"))
    first = cursor.fetch(2)
    catalog.apply([record(999_999, study=99)])  # sorts after 1.2.3.2...
    rest = everything(cursor, 100)
    assert "1.2.3.999999" in keys(first + rest, "sop_instance_uid")
    assert cursor.fetch(5) == []  # closed: nothing more


def test_cursor_from_another_thread(catalog: Catalog) -> None:
    import concurrent.futures

    cursor = catalog.query(CatalogQuery("SERIES", aggregates=frozenset({"related_instances"})))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(cursor.fetch, 2).result()
        second = pool.submit(cursor.fetch, 100).result()
    cursor.close()
    assert first + second == reference(CORPUS, CatalogQuery("SERIES", aggregates=frozenset({"related_instances"})))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Match("path", "equal", ("x",)),  # not a matchable field
        lambda: Match("patient_id", "regex", ("x",)),
        lambda: Match("patient_id", "equal", ()),
        lambda: Match("patient_id", "equal", ("",)),
        lambda: Match("study_date", "range", ("", "")),
        lambda: Match("study_date", "range", ("1",)),
        lambda: CatalogQuery("FRAME"),
        lambda: CatalogQuery("IMAGE", aggregates=frozenset({"related_instances"})),
    ],
)
def test_invalid_queries_are_refused_when_built(build: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        build()


def test_peer_text_never_becomes_sql(catalog: Catalog) -> None:
    hostile = "x' OR 1=1; DROP TABLE instances; --"
    for kind in ("equal", "pattern"):
        for fold in (False, True):
            assert everything(catalog.query(CatalogQuery("IMAGE", (Match("patient_name", kind, (hostile,), fold),))), 10) == []
    assert catalog.count() == len(CORPUS)


# ------------------------------------------------------------------ random


_VALUES = {
    "patient_id": ["P1", "P2", "P_5%", "p1", "P*", "P?", "*5*"],
    "patient_name": ["Doe^Jane", "doe*", "*^*", "SMITH^ANN", "?oe*", "O'*"],
    "study_date": ["20240102", "2023*", "20231231"],
    "modality": ["CT", "ct", "MR", "S?"],
    "accession_number": ["A[1]1", "ACC*", "A[*", "*]*"],
    "study_description": ["chest ct", "Chest*", "*CT"],
    "sop_class_uid": ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"],
}


@st.composite
def matches(draw: st.DrawFn) -> Match:
    field = draw(st.sampled_from(sorted(_VALUES)))
    kind = draw(st.sampled_from(["equal", "pattern", "range"]))
    if kind == "range":
        low, high = draw(st.sampled_from([("2023", ""), ("", "20240101"), ("20231231", "20240102"),
                                          ("A", "P2"), ("D", "d")]))
        return Match(field, "range", (low, high))
    values = tuple(draw(st.lists(st.sampled_from(_VALUES[field]), min_size=1, max_size=3)))
    return Match(field, kind, values, fold_case=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(level=st.sampled_from(LEVELS), conditions=st.lists(matches(), max_size=3), page=st.integers(1, 7))
def test_random_queries_agree_with_the_reference(catalog: Catalog, level: str, conditions: list[Match], page: int) -> None:
    query = CatalogQuery(level, tuple(conditions), AGGREGATES[level])
    assert everything(catalog.query(query), page) == reference(CORPUS, query, getattr(catalog, "node", "") or "")
