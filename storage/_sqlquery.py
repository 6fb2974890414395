"""A :class:`~storage.CatalogQuery` as SQLite statements, one page at a time.

Theory of operation: :func:`page_statement` turns a query, the key of the last row
already returned and a page size into one ``SELECT`` over table ``instances`` and its
parameters. Every value from the query is a bound parameter: the statement text is
made only from this module's constants and the field names a :class:`Match` has
already checked against :data:`~storage.MATCH_FIELDS` (so no text a peer sent ever
becomes SQL). Pages follow the level's key (keyset pagination): each page is a new
statement starting after the last key, so no read transaction lasts longer than one
page and nothing is loaded beyond ``limit`` rows.

The translation of each match kind (see :mod:`storage._query`):

* ``equal``: ``f = ?``, or for several values ``f IN (SELECT value FROM json_each(?))``
  with one JSON array parameter (no bound on SQLite's parameter count); with
  ``fold_case``, ``f LIKE ? ESCAPE '\\'`` per value, its ``%``, ``_`` and ``\\`` escaped
  (SQLite's LIKE folds ASCII letters only, which is what ``fold_case`` promises);
* ``pattern``: ``f GLOB ?`` (case-sensitive; DICOM's ``*`` and ``?`` are GLOB's own, and
  a literal ``[`` is written ``[[]``), or with ``fold_case`` ``f LIKE ?`` with ``*`` as
  ``%`` and ``?`` as ``_``;
* ``range``: ``f >= low`` and ``f <= high || U+10FFFF`` (every value that, cut to the
  length of ``high``, is ``<= high``: the largest code point sorts after any other);
  an empty field is excluded explicitly.

Entities above IMAGE are ``GROUP BY`` their key, their fields taken with ``MAX`` over
the matching rows; aggregates are correlated sub-queries over *all* rows of the entity,
through the index on its key. This module builds text only; :mod:`storage._sqlite` runs it.
"""

from __future__ import annotations

import json
from typing import Any

from ._query import CatalogQuery, Match

__all__ = ["page_statement", "row_dict"]

# Above every other code point in SQLite's BINARY (memcmp of UTF-8) order.
_TOP = "\U0010ffff"

_AGGREGATE_SQL = {
    "related_instances": "COUNT(*)",
    "related_series": "COUNT(DISTINCT c.series_instance_uid)",
    "related_studies": "COUNT(DISTINCT c.study_instance_uid)",
    "modalities": "GROUP_CONCAT(DISTINCT c.modality)",
    "sop_classes": "GROUP_CONCAT(DISTINCT c.sop_class_uid)",
}
#: Aggregates returned as lists (GROUP_CONCAT's comma-separated text, split).
_LISTS = frozenset(("modalities", "sop_classes"))


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_pattern(pattern: str) -> str:
    return _like_literal(pattern).replace("*", "%").replace("?", "_")


def _glob_pattern(pattern: str) -> str:
    return pattern.replace("[", "[[]")


def _condition(match: Match, params: list[Any]) -> str:
    column = f"i.{match.field}"
    kind = match.kind
    if kind == "range":
        low, high = match.values
        parts = [f"{column} <> ''"]
        if low:
            parts.append(f"{column} >= ?")
            params.append(low)
        if high:
            parts.append(f"{column} <= ?")
            params.append(high + _TOP)
        return "(" + " AND ".join(parts) + ")"
    if kind == "equal" and not match.fold_case:
        if len(match.values) == 1:
            params.append(match.values[0])
            return f"{column} = ?"
        params.append(json.dumps(list(match.values)))
        return f"{column} IN (SELECT value FROM json_each(?))"
    alternatives = []
    for value in match.values:
        if kind == "equal":
            alternatives.append(f"{column} LIKE ? ESCAPE '\\'")
            params.append(_like_literal(value))
        elif match.fold_case:
            alternatives.append(f"{column} LIKE ? ESCAPE '\\'")
            params.append(_like_pattern(value))
        else:
            alternatives.append(f"{column} GLOB ?")
            params.append(_glob_pattern(value))
    return f"({column} <> '' AND (" + " OR ".join(alternatives) + "))"


def page_statement(query: CatalogQuery, after: Any, started: bool, limit: int) -> tuple[str, list[Any]]:
    """The statement and parameters of the page of ``query`` that follows key ``after``
    (``started`` False: the first page). At most ``limit`` rows."""
    params: list[Any] = []
    key = f"i.{query.key}"
    where = [_condition(match, params) for match in query.matches]
    if started:
        if after is None:  # only a PATIENT key can be NULL; NULL sorts first
            where.append(f"{key} IS NOT NULL")
        else:
            where.append(f"{key} > ?")
            params.append(after)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    if query.level == "IMAGE":
        columns = ", ".join(f"i.{name}" for name in query.fields)
        sql = f"SELECT {columns} FROM instances AS i{clause} ORDER BY {key} LIMIT ?"
    else:
        selected = [key if name == query.key else f"MAX(i.{name})" for name in query.fields]
        same = "IS" if query.level == "PATIENT" else "="
        for name in sorted(query.aggregates):
            selected.append(f"(SELECT {_AGGREGATE_SQL[name]} FROM instances AS c "
                            f"WHERE c.{query.key} {same} {key})")
        sql = (f"SELECT {', '.join(selected)} FROM instances AS i{clause} "
               f"GROUP BY {key} ORDER BY {key} LIMIT ?")
    params.append(limit)
    return sql, params


def row_dict(query: CatalogQuery, row: tuple[Any, ...]) -> dict[str, Any]:
    """A result row as the field -> value mapping of :class:`~storage.QueryCursor`."""
    fields = query.fields
    out = dict(zip(fields, row))
    for name, value in zip(sorted(query.aggregates), row[len(fields):]):
        if name in _LISTS:
            out[name] = [v for v in value.split(",") if v] if value else []
        else:
            out[name] = int(value or 0)
    return out
