"""The import contract between the packages, read from the source with ``ast``.

Theory of operation: every ``.py`` file of a package is parsed (never imported) and each
import in it -- ``import x``, ``from x import y``, relative imports resolved against the
file's package, imports inside functions, ``importlib.import_module("x")`` with a literal
name -- becomes an absolute dotted name. The layers, each ignorant of the ones above:

- engine/ (the DICOM protocol) imports neither storage nor workers nor bench nor tests;
- storage/ (files, journal, index) imports neither engine nor workers nor bench nor tests;
- bench/ (load tools, benchmarks) never imports tests (tests may import bench);
- workers/services/, once it exists, imports of our own code only the engine's public
  API (``engine`` and :data:`ENGINE_PUBLIC`, never an ``engine._*`` module), the
  ``storage`` package (never ``storage._*``) and its own modules.

What the protocol core may import (no I/O) is tests/engine/test_sans_io.py's business.

Known violations are listed in :data:`KNOWN_VIOLATIONS`, explicitly, and the list may
only shrink: a new violation fails, and so does a listed one that is gone (remove it from
the list in the same change that fixes it, so it cannot come back unnoticed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = frozenset({"engine", "storage", "workers", "bench", "tests"})

#: package -> the first-party packages it must not import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "engine": frozenset({"storage", "workers", "bench", "tests"}),
    "storage": frozenset({"engine", "workers", "bench", "tests"}),
    "bench": frozenset({"tests"}),
}

#: (file, forbidden package it imports) pairs known today, each with why it is here.
#: This set may only shrink.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

#: The engine modules a services package may import, besides ``engine`` itself.
ENGINE_PUBLIC = frozenset({"aio", "services", "status", "sop_class", "presentation",
                           "dataset", "evt", "dimse"})
SERVICES = "workers/services"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    """The package a file's relative imports start from."""
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    base = parts[: len(parts) - (level - 1)] if level - 1 <= len(parts) else []
    return ".".join(base + ([module] if module else []))


def imported_names(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of everything ``source`` imports; for ``from m import
    a`` the name is ``m.a`` (a submodule or an attribute of ``m``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(package, node.level, node.module)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                yield node.lineno, first.value


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _imports(folder: str) -> Iterator[tuple[str, int, str]]:
    """(file relative to the repository, line, name) of every import under ``folder``."""
    for path in _files(folder):
        for line, name in imported_names(path.read_text(encoding="utf-8"), _package_of(path)):
            yield path.relative_to(REPO).as_posix(), line, name


def layer_violations(package: str) -> dict[tuple[str, str], list[int]]:
    """(file, forbidden package) -> the lines importing it, for ``package``'s files."""
    found: dict[tuple[str, str], list[int]] = {}
    for file, line, name in _imports(package):
        top = name.split(".")[0]
        if top in FORBIDDEN[package]:
            found.setdefault((file, top), []).append(line)
    return found


def _is_engine_module(name: str) -> bool:
    return (REPO / "engine" / f"{name}.py").is_file() or (REPO / "engine" / name).is_dir()


def services_breaks(name: str) -> str | None:
    """Why a services module may not import ``name`` (None: it may)."""
    parts = name.split(".")
    top = parts[0]
    if top not in FIRST_PARTY:
        return None
    if top == "engine":
        if len(parts) == 1:
            return None
        sub = parts[1]
        if sub.startswith("_"):
            return "a private engine module"
        if sub in ENGINE_PUBLIC or not _is_engine_module(sub):
            return None  # a public module, or a name the engine package exports
        return "an engine module outside its public API"
    if top == "storage":
        return "a private storage module" if len(parts) > 1 and parts[1].startswith("_") else None
    if top == "workers" and parts[1:2] == ["services"]:
        return None
    return f"{top}: not a layer below the services"


def services_violations() -> list[str]:
    return [f"{file}:{line} imports {name}: {why}" for file, line, name in _imports(SERVICES)
            if (why := services_breaks(name))]


# ------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(package: str) -> None:
    found = layer_violations(package)
    known = {key for key in KNOWN_VIOLATIONS if key[0].split("/")[0] == package}
    new = {f"{file}:{','.join(map(str, lines))} imports {top}"
           for (file, top), lines in found.items() if (file, top) not in known}
    assert not new, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {sorted(new)}"
    fixed = sorted(f"{file} no longer imports {top}" for file, top in known - set(found))
    assert not fixed, f"fixed, so remove from KNOWN_VIOLATIONS in tests/test_layers.py: {fixed}"


def test_services_import_only_the_public_engine_and_storage() -> None:
    if not (REPO / SERVICES).is_dir():
        pytest.skip(f"{SERVICES}/ does not exist yet: the rule applies once it does")
    violations = services_violations()
    assert not violations, "\n".join(violations)


# ------------------------------------------------------------------------------ the detector


@pytest.mark.parametrize(
    "source,package,names",
    [
        ("import storage", "engine", ["storage"]),
        ("import os.path, storage._part10 as p", "engine", ["os.path", "storage._part10"]),
        ("from storage import read_file_meta", "engine", ["storage.read_file_meta"]),
        ("def f():\n    from storage import x", "engine", ["storage.x"]),
        ("from . import evt", "engine", ["engine.evt"]),
        ("from ._pdu import PDV", "engine", ["engine._pdu.PDV"]),
        ("from .. import config", "workers.services", ["workers.config"]),
        ("from ..services import base", "workers.services", ["workers.services.base"]),
        ("import importlib\nimportlib.import_module('tests.peers')", "bench",
         ["importlib", "tests.peers"]),
        ("__import__('workers')", "storage", ["workers"]),
    ],
    ids=["import", "dotted-as", "from", "nested", "relative", "relative-module", "parent",
         "sibling", "import_module", "__import__"],
)
def test_import_detector(source: str, package: str, names: list[str]) -> None:
    assert [name for _, name in imported_names(source, package)] == names


@pytest.mark.parametrize(
    "name,allowed",
    [
        ("engine", True), ("engine.AE", True), ("engine.aio", True),
        ("engine.aio.Association", True), ("engine.services", True), ("engine.status", True),
        ("engine.sop_class", True), ("engine.presentation", True), ("engine.dataset", True),
        ("engine.evt", True), ("engine._pdu", False), ("engine._acse.AcceptorPolicy", False),
        ("engine.ae", False), ("engine.dul", False), ("storage", True),
        ("storage.InstanceWriter", True), ("storage._writer", False),
        ("workers.services.base", True), ("workers.config", False), ("workers", False),
        ("bench.corpus", False), ("tests.peers", False), ("pydicom.uid", True),
        ("asyncio", True),
    ],
)
def test_services_rule(name: str, allowed: bool) -> None:
    assert (services_breaks(name) is None) is allowed, services_breaks(name)

