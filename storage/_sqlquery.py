"""A :class:`~storage.CatalogQuery` as SQL statements, one page at a time, for SQLite and
PostgreSQL.

Theory of operation: :func:`page_statement` turns a query, the key of the last row
already returned and a page size into one ``SELECT`` over table ``instances`` and its
parameters, in a :class:`Dialect` (:data:`SQLITE` or :data:`POSTGRESQL`). Every value
from the query is a bound parameter: the statement text is made only from this
module's constants and the field names a :class:`Match` has already checked against
:data:`~storage.MATCH_FIELDS` (so no text a peer sent ever becomes SQL). Pages follow
the level's key (keyset pagination): each page is a new statement starting after the
last key, so no read transaction lasts longer than one page and nothing is loaded
beyond ``limit`` rows.

The translation of each match kind (see :mod:`storage._query`):

* ``equal``: ``f = ?``; several values: SQLite ``f IN (SELECT value FROM json_each(?))``
  with one JSON array parameter, PostgreSQL ``f = ANY(%s)`` with one array parameter
  (no bound on the parameter count either way). With ``fold_case``: SQLite
  ``f LIKE ? ESCAPE '\\'`` per value, its ``%``, ``_`` and ``\\`` escaped (SQLite's LIKE
  folds ASCII letters only, which is what ``fold_case`` promises); PostgreSQL compares
  ``translate(f, 'A..Z', 'a..z')`` with the value folded the same way (``lower`` and
  ``ILIKE`` would fold by the database's locale, beyond A-Z);
* ``pattern``: SQLite ``f GLOB ?`` (case-sensitive; DICOM's ``*`` and ``?`` are GLOB's
  own, and a literal ``[`` is written ``[[]``), or with ``fold_case`` ``f LIKE ?`` with
  ``*`` as ``%`` and ``?`` as ``_``; PostgreSQL's LIKE is case-sensitive, so it is
  ``f LIKE %s`` (or the folded column ``LIKE`` the folded pattern);
* ``range``: ``f >= low`` and ``f <= high || U+10FFFF`` (every value that, cut to the
  length of ``high``, is ``<= high``: the largest code point sorts after any other in
  byte order, SQLite's BINARY and PostgreSQL's ``"C"`` collation, which every text
  column of the PostgreSQL schema has); an empty field is excluded explicitly.

Entities above IMAGE are ``GROUP BY`` their key, their fields taken with ``MAX`` over
the matching rows; aggregates are correlated sub-queries over *all* rows of the entity,
through the index on its key. A PostgreSQL index holds the rows of several nodes
(keyed by node and SOP Instance UID), so there an instance stored on two nodes is one
IMAGE row (``DISTINCT ON``, the row of the node asking first), and counts count
distinct instances. The IMAGE aggregate ``nodes`` lists the nodes holding a copy.
This module builds text only; the catalogs run it.
"""

from __future__ import annotations

import json
from typing import Any

from ._query import CatalogQuery, Match

__all__ = ["Dialect", "SQLITE", "POSTGRESQL", "page_statement", "row_dict", "fold_ascii"]

# Above every other code point in byte order (memcmp of UTF-8).
_TOP = "\U0010ffff"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_FOLD = str.maketrans(_UPPER, _LOWER)

#: Aggregates returned as lists (a list from PostgreSQL, comma-separated text from SQLite).
_LISTS = frozenset(("modalities", "sop_classes", "nodes"))


def fold_ascii(text: str) -> str:
    """``text`` with the letters A-Z in lower case, and nothing else changed."""
    return text.translate(_FOLD)


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_pattern(pattern: str) -> str:
    return _like_literal(pattern).replace("*", "%").replace("?", "_")


def _glob_pattern(pattern: str) -> str:
    return pattern.replace("[", "[[]")


class Dialect:
    """What differs between the SQL of two databases, for :func:`page_statement`."""

    name = ""
    mark = "?"
    #: A catalog of several nodes: one row per node holding an instance.
    many_nodes = False
    aggregates: dict[str, str] = {}

    def equal_many(self, column: str, values: tuple[str, ...], params: list[Any]) -> str:
        raise NotImplementedError

    def folded_equal(self, column: str, value: str, params: list[Any]) -> str:
        raise NotImplementedError

    def pattern(self, column: str, value: str, fold_case: bool, params: list[Any]) -> str:
        raise NotImplementedError

    def same_patient(self, a: str, b: str) -> str:
        raise NotImplementedError

    def nulls_first(self, key: str) -> str:
        return key


class _Sqlite(Dialect):
    name = "sqlite"
    mark = "?"
    aggregates = {
        "related_instances": "COUNT(*)",
        "related_series": "COUNT(DISTINCT c.series_instance_uid)",
        "related_studies": "COUNT(DISTINCT c.study_instance_uid)",
        "modalities": "GROUP_CONCAT(DISTINCT c.modality)",
        "sop_classes": "GROUP_CONCAT(DISTINCT c.sop_class_uid)",
        "nodes": "GROUP_CONCAT(DISTINCT c.node)",
    }

    def equal_many(self, column: str, values: tuple[str, ...], params: list[Any]) -> str:
        params.append(json.dumps(list(values)))
        return f"{column} IN (SELECT value FROM json_each(?))"

    def folded_equal(self, column: str, value: str, params: list[Any]) -> str:
        params.append(_like_literal(value))
        return f"{column} LIKE ? ESCAPE '\\'"

    def pattern(self, column: str, value: str, fold_case: bool, params: list[Any]) -> str:
        if fold_case:
            params.append(_like_pattern(value))
            return f"{column} LIKE ? ESCAPE '\\'"
        params.append(_glob_pattern(value))
        return f"{column} GLOB ?"

    def same_patient(self, a: str, b: str) -> str:
        return f"{a} IS {b}"


class _Postgresql(Dialect):
    name = "postgresql"
    mark = "%s"
    many_nodes = True
    aggregates = {
        "related_instances": "COUNT(DISTINCT c.sop_instance_uid)",
        "related_series": "COUNT(DISTINCT c.series_instance_uid)",
        "related_studies": "COUNT(DISTINCT c.study_instance_uid)",
        "modalities": "array_agg(DISTINCT c.modality) FILTER (WHERE c.modality <> '')",
        "sop_classes": "array_agg(DISTINCT c.sop_class_uid)",
        "nodes": "array_agg(DISTINCT c.node ORDER BY c.node)",
    }

    @staticmethod
    def _folded(column: str) -> str:
        return f"translate({column}, '{_UPPER}', '{_LOWER}')"

    def equal_many(self, column: str, values: tuple[str, ...], params: list[Any]) -> str:
        params.append(list(values))
        return f"{column} = ANY(%s)"

    def folded_equal(self, column: str, value: str, params: list[Any]) -> str:
        params.append(fold_ascii(value))
        return f"{self._folded(column)} = %s"

    def pattern(self, column: str, value: str, fold_case: bool, params: list[Any]) -> str:
        if fold_case:
            params.append(_like_pattern(fold_ascii(value)))
            return f"{self._folded(column)} LIKE %s ESCAPE '\\'"
        params.append(_like_pattern(value))
        return f"{column} LIKE %s ESCAPE '\\'"

    def same_patient(self, a: str, b: str) -> str:
        return f"{a} IS NOT DISTINCT FROM {b}"

    def nulls_first(self, key: str) -> str:
        return f"{key} NULLS FIRST"  # SQLite's order: a NULL key (no Patient ID) first


SQLITE: Dialect = _Sqlite()
POSTGRESQL: Dialect = _Postgresql()


def _condition(match: Match, params: list[Any], dialect: Dialect) -> str:
    column = f"i.{match.field}"
    kind = match.kind
    mark = dialect.mark
    if kind == "range":
        low, high = match.values
        parts = [f"{column} <> ''"]
        if low:
            parts.append(f"{column} >= {mark}")
            params.append(low)
        if high:
            parts.append(f"{column} <= {mark}")
            params.append(high + _TOP)
        return "(" + " AND ".join(parts) + ")"
    if kind == "equal" and not match.fold_case:
        if len(match.values) == 1:
            params.append(match.values[0])
            return f"{column} = {mark}"
        return dialect.equal_many(column, match.values, params)
    alternatives = []
    for value in match.values:
        if kind == "equal":
            alternatives.append(dialect.folded_equal(column, value, params))
        else:
            alternatives.append(dialect.pattern(column, value, match.fold_case, params))
    return f"({column} <> '' AND (" + " OR ".join(alternatives) + "))"


#: A row with a place in the hierarchy (not quarantined: storage/_writer.py).
_PLACED = "{table}.study_instance_uid <> '' AND {table}.series_instance_uid <> ''"


def page_statement(
    query: CatalogQuery,
    after: Any,
    started: bool,
    limit: int,
    dialect: Dialect = SQLITE,
    node: str | None = None,
) -> tuple[str, list[Any]]:
    """The statement and parameters of the page of ``query`` that follows key ``after``
    (``started`` False: the first page). At most ``limit`` rows. ``node``: in a catalog
    of several nodes, the node asking, whose row of an instance is preferred."""
    params: list[Any] = []
    mark = dialect.mark
    key = f"i.{query.key}"
    # Quarantined instances (no valid Study or Series Instance UID) have no place in
    # the hierarchy, so no query or retrieval reaches them.
    where = [_PLACED.format(table="i")]
    where += [_condition(match, params, dialect) for match in query.matches]
    if started:
        if after is None:  # only a PATIENT key can be NULL; NULL sorts first
            where.append(f"{key} IS NOT NULL")
        else:
            where.append(f"{key} > {mark}")
            params.append(after)
    clause = " WHERE " + " AND ".join(where)
    aggregates = [f"(SELECT {dialect.aggregates[name]} FROM instances AS c "
                  f"WHERE {_same_entity(query, key, dialect)} AND {_PLACED.format(table='c')})"
                  for name in sorted(query.aggregates)]
    if query.level == "IMAGE":
        columns = ", ".join([f"i.{name}" for name in query.fields] + aggregates)
        if not dialect.many_nodes:
            sql = f"SELECT {columns} FROM instances AS i{clause} ORDER BY {key} LIMIT {mark}"
        else:
            prefer = "i.node"
            if node is not None:
                prefer = f"(i.node = {mark}) DESC, i.node"
            # The parameter of ORDER BY comes after those of WHERE, in text order.
            sql = (f"SELECT DISTINCT ON ({key}) {columns} FROM instances AS i{clause} "
                   f"ORDER BY {key}, {prefer} LIMIT {mark}")
            if node is not None:
                params.append(node)
    else:
        selected = [key if name == query.key else f"MAX(i.{name})" for name in query.fields]
        sql = (f"SELECT {', '.join(selected + aggregates)} FROM instances AS i{clause} "
               f"GROUP BY {key} ORDER BY {dialect.nulls_first(key)} LIMIT {mark}")
    params.append(limit)
    return sql, params


def _same_entity(query: CatalogQuery, key: str, dialect: Dialect) -> str:
    column = f"c.{query.key}"
    if query.level == "PATIENT":
        return dialect.same_patient(column, key)
    return f"{column} = {key}"


def row_dict(query: CatalogQuery, row: tuple[Any, ...]) -> dict[str, Any]:
    """A result row as the field -> value mapping of :class:`~storage.QueryCursor`."""
    fields = query.fields
    out = dict(zip(fields, row))
    for name, value in zip(sorted(query.aggregates), row[len(fields):]):
        if name in _LISTS:
            if isinstance(value, str):
                value = value.split(",")
            out[name] = [v for v in value if v] if value else []
        else:
            out[name] = int(value or 0)
    return out
