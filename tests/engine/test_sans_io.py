"""The protocol core does no I/O and keeps its checks under ``python -O`` (STYLE.md).

Each core module is read with ``ast`` (never imported): it must not import asyncio,
socket, threading, time, uvloop or selectors, neither with ``import`` nor with
``from ... import``, and it must contain no ``assert`` statement, since ``python -O``
strips those and would change what the module accepts. Engine modules the core imports
relatively are held to the same rules, so the ban cannot be dodged through a helper.

No engine module, core or not, builds and runs code: every one turns peer bytes into
events, so none may use the builtins ``exec``, ``eval`` or ``compile``, by name, as an
attribute of ``builtins`` or imported from it (``re.compile`` is another function).
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


# The builtins that turn text into running code.
CODE_BUILDERS = {"exec", "eval", "compile"}
ENGINE_MODULES = sorted(path.stem for path in ENGINE.glob("*.py"))


def _code_builders(tree: ast.Module) -> list[str]:
    """Every use of exec, eval or compile in the module, with its line.

    A use is the bare name (a call, or a reference that could be called later), an
    attribute of ``builtins`` or ``__builtins__``, or an import from ``builtins``.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in CODE_BUILDERS:
            found.append(f"{node.id} (line {node.lineno})")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in CODE_BUILDERS
            and isinstance(node.value, ast.Name)
            and node.value.id in ("builtins", "__builtins__")
        ):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.module == "builtins":
            found += [
                f"from builtins import {alias.name} (line {node.lineno})"
                for alias in node.names
                if alias.name in CODE_BUILDERS
            ]
    return found


def test_engine_modules_found() -> None:
    assert set(CORE) <= set(ENGINE_MODULES)


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_no_code_generation(module: str) -> None:
    uses = _code_builders(_tree(module))
    assert not uses, f"engine/{module}.py builds code with {uses}"


@pytest.mark.parametrize(
    "source,found",
    [
        ("exec(compile(source, 'x', 'exec'), namespace)", 2),
        ("value = eval(text)", 1),
        ("run = exec", 1),
        ("import builtins\nbuiltins.exec(source)", 1),
        ("__builtins__.eval(text)", 1),
        ("from builtins import compile as build", 1),
        ("import re\npattern = re.compile('[0-9]+')", 0),
        ("def _compile(cls):\n    return cls", 0),
        ("namespace.exec = None", 0),
    ],
    ids=["exec-compile", "eval", "reference", "builtins", "dunder-builtins", "import",
         "re-compile", "own-name", "other-attribute"],
)
def test_code_builder_detector(source: str, found: int) -> None:
    assert len(_code_builders(ast.parse(source))) == found
