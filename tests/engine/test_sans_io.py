"""The protocol core does no I/O and keeps its checks under ``python -O`` (STYLE.md).

Each core module is read with ``ast`` (never imported): it must not import asyncio,
socket, threading, time, uvloop or selectors, neither with ``import`` nor with
``from ... import``, and it must contain no ``assert`` statement, since ``python -O``
strips those and would change what the module accepts. Engine modules the core imports
relatively are held to the same rules, so the ban cannot be dodged through a helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
CORE = ["_pdu", "_fsm", "_connection", "_acse", "_dimse", "_errors", "presentation", "status",
        "_transcode"]
FORBIDDEN = {"asyncio", "socket", "threading", "time", "uvloop", "selectors"}


def _tree(module: str) -> ast.Module:
    path = ENGINE / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _absolute_imports(tree: ast.Module) -> set[str]:
    """Top-level names of every absolute import anywhere in the module."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _engine_imports(tree: ast.Module) -> set[str]:
    """Engine modules imported relatively (``from .x import y``, ``from . import x``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def _closure() -> list[str]:
    """The core modules and every engine module they import relatively, transitively."""
    seen: list[str] = []
    todo = list(CORE)
    while todo:
        module = todo.pop(0)
        if module in seen:
            continue
        seen.append(module)
        todo.extend(sorted(_engine_imports(_tree(module)) - set(seen)))
    return seen


CHECKED = _closure()


def test_core_modules_exist() -> None:
    for module in CORE:
        assert (ENGINE / f"{module}.py").is_file(), module
    # The closure must not pull in the I/O layer.
    assert not {"aio", "_loop", "ae", "association", "dul"} & set(CHECKED)


@pytest.mark.parametrize("module", CHECKED)
def test_no_io_imports(module: str) -> None:
    banned = _absolute_imports(_tree(module)) & FORBIDDEN
    assert not banned, f"engine/{module}.py imports {sorted(banned)}"


@pytest.mark.parametrize("module", CHECKED)
def test_no_assert_statements(module: str) -> None:
    lines = [node.lineno for node in ast.walk(_tree(module)) if isinstance(node, ast.Assert)]
    assert not lines, f"engine/{module}.py has assert statements at lines {lines}"


@pytest.mark.parametrize(
    "source,banned",
    [
        ("import asyncio", {"asyncio"}),
        ("import socket as s", {"socket"}),
        ("from time import monotonic", {"time"}),
        ("import os.path, threading", {"threading"}),
        ("def f():\n    import selectors", {"selectors"}),
        ("from uvloop import loop", {"uvloop"}),
        ("from .time import x", set()),
        ("import timeit", set()),
    ],
    ids=["import", "import-as", "from-import", "second-name", "nested", "from", "relative",
         "prefix"],
)
def test_import_detector(source: str, banned: set[str]) -> None:
    assert _absolute_imports(ast.parse(source)) & FORBIDDEN == banned
