"""Fixtures of the node tests: a factory of real ``scpfleet serve`` nodes, always reaped,
and a session-wide corpus of 1000 tiny instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dicomdata import make_files
from tests.workers.nodes import Node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """node_factory(*serve_args, storage=None, env=None) -> a started Node on 127.0.0.1,
    port 0 (``env``: variables added to the node's environment).

    Every node's process group is killed after the test, whatever happened.
    """
    nodes: list[Node] = []

    def start(*args: str, storage: Path | None = None, start: bool = True,
              env: dict[str, str] | None = None) -> Node:
        node = Node(storage or tmp_path / "archive", tmp_path / f"node-{len(nodes) + 1}.log", args, env)
        nodes.append(node)
        return node.start() if start else node

    try:
        yield start
    finally:
        for node in nodes:
            node.reap()


@pytest.fixture(scope="session")
def thousand_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """1000 tiny instances (SC, Basic Text SR, CT), unique UIDs. Read-only."""
    return make_files(tmp_path_factory.mktemp("thousand"), {"tiny": 1000})
