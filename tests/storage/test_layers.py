"""The layering rules, read from the source: storage imports neither the engine nor the
node, only the SQLite catalog imports ``sqlite3`` and only the PostgreSQL catalog
``psycopg`` (tests may, to inspect databases)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "storage", "workers", "bench")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def sources(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if not p.name.startswith("test_"))


@pytest.mark.parametrize("path", sources("storage"), ids=lambda p: p.name)
def test_storage_imports_neither_engine_nor_workers(path: Path) -> None:
    assert not imported_modules(path) & {"engine", "workers", "bench"}


def test_only_the_sqlite_catalog_imports_sqlite3() -> None:
    """In the node's packages. (bench/race.py judges indexes of every schema version,
    older nodes' too, with plain SQL from outside: a tool, not the node.)"""
    importers = [
        str(path.relative_to(REPO))
        for package in ("engine", "storage", "workers")
        for path in sources(package)
        if "sqlite3" in imported_modules(path)
    ]
    assert importers == ["storage/_sqlite.py"]


def test_only_the_postgresql_catalog_imports_its_driver() -> None:
    """In the node's packages; the benchmarks and tests talk to PostgreSQL from outside."""
    importers = [
        str(path.relative_to(REPO))
        for package in ("engine", "storage", "workers")
        for path in sources(package)
        if "psycopg" in imported_modules(path)
    ]
    assert importers == ["storage/_postgres.py"]
