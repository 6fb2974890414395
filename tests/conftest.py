"""Shared test configuration: markers, the slow-test switch, default timeout, peer fixtures.

Theory of operation: this file owns what every test directory shares. It registers the
markers `slow` (soak, fuzz and large runs: skipped unless --run-slow or SCPFLEET_SLOW=1;
CI (SCPFLEET_CI=1) runs them bounded, scaled by the `slow_scale` fixture)
and `interop` (tests that talk to external peers); gives every test a 120 s timeout when
pytest-timeout is loaded and no timeout was configured (CLI, PYTEST_TIMEOUT, ini) or marked;
and provides DICOM corpora (tests/dicomdata.py) and real-peer factories (tests/peers.py)
whose processes are always reaped, even when a test fails or forgets to stop them;
and a PostgreSQL server for the session (bench/postgres.py: a temporary data directory,
127.0.0.1 on an ephemeral port, an unprivileged account), with a fresh schema or
database per test. A PostgreSQL that cannot start fails the tests that need it, with
the reason; none is skipped. It never starts anything at import time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import peers
from tests.dicomdata import KINDS, make_files

DEFAULT_TIMEOUT_S = 120  # generous for a 2-core CI box; hangs must still end the run
SMALL_CORPUS_PER_KIND = 2
TINY_CORPUS_SIZE = 100


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run tests marked slow (soak, fuzz, multi-GB); also SCPFLEET_SLOW=1",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: soak/fuzz/large runs, skipped unless --run-slow or SCPFLEET_SLOW=1"
    )
    config.addinivalue_line(
        "markers", "interop: talks to an external peer (DCMTK tools or pynetdicom)"
    )


def _slow_full(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slow")) or os.environ.get("SCPFLEET_SLOW") == "1"


def _slow_enabled(config: pytest.Config) -> bool:
    """Slow tests run in full on demand, and in a bounded form in CI (SCPFLEET_CI=1)."""
    return _slow_full(config) or os.environ.get("SCPFLEET_CI") == "1"


#: The fraction of its full size a slow test runs at in CI: enough to exercise every
#: path (kill -9 mid-load, multi-hundred-MB streaming, fuzzing) within CI's time.
CI_SLOW_SCALE = 0.125


@pytest.fixture(scope="session")
def slow_scale(request: pytest.FixtureRequest) -> float:
    """1.0 when slow tests run in full (--run-slow), CI_SLOW_SCALE in CI's bounded run.

    Slow tests multiply their sizes, counts and durations by this.
    """
    return 1.0 if _slow_full(request.config) else CI_SLOW_SCALE


def _timeout_configured(config: pytest.Config) -> bool:
    """Whether the user set a timeout pytest-timeout would use (CLI, env, ini)."""
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return True
    try:
        return bool(config.getini("timeout"))
    except ValueError:  # ini key unknown: plugin not loaded
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = None
    if not _slow_enabled(config):
        skip_slow = pytest.mark.skip(
            reason="slow test: use --run-slow or SCPFLEET_SLOW=1 (CI runs it bounded)"
        )
    default_timeout = None
    if config.pluginmanager.hasplugin("timeout") and not _timeout_configured(config):
        default_timeout = pytest.mark.timeout(DEFAULT_TIMEOUT_S)
    for item in items:
        if skip_slow is not None and "slow" in item.keywords:
            item.add_marker(skip_slow)
        if default_timeout is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(default_timeout)


# ------------------------------------------------------------------------------ process hygiene


@pytest.fixture(scope="session", autouse=True)
def _reap_peers_at_session_end() -> Iterator[None]:
    yield
    peers.reap_all()


@pytest.fixture(autouse=True)
def _reap_peers_after_test() -> Iterator[None]:
    """Kill any peer a test started and left running (the test still fails on its own)."""
    before = peers.live_processes()
    yield
    peers.reap_all(keep=before)


# ------------------------------------------------------------------------------ data


@pytest.fixture(scope="session")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two instances of every dicomdata kind (CT, MR, SC, tiny, multi-frame, JPEG
    encapsulated, deflated, big endian, implicit), named <kind>_<n>.dcm, unique UIDs.
    Session-wide: read them, never modify them."""
    directory = tmp_path_factory.mktemp("dicom_files")
    return make_files(directory, {kind: SMALL_CORPUS_PER_KIND for kind in KINDS})


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """100 tiny (< 8 KB) instances rotating SC, Basic Text SR and CT, 5 studies x 2 series,
    unique UIDs. Session-wide: read them, never modify them."""
    directory = tmp_path_factory.mktemp("tiny_files")
    return make_files(directory, {"tiny": TINY_CORPUS_SIZE})


# ------------------------------------------------------------------------------ peers


@pytest.fixture
def peer_log_dir(tmp_path: Path) -> Path:
    """Where this test's peer stdout/stderr logs go (pass as log_dir=)."""
    path = tmp_path / "peer-logs"
    path.mkdir(exist_ok=True)
    return path


def _scp_factory(cls, tmp_path: Path, log_dir: Path, prefix: str):
    started: list[peers._ScpBase] = []

    def start(**kwargs) -> peers._ScpBase:
        out_dir = kwargs.pop("out_dir", tmp_path / f"{prefix}-{len(started) + 1}")
        kwargs.setdefault("log_dir", log_dir)
        scp = cls(out_dir, **kwargs)
        started.append(scp)
        return scp.start()

    return start, started


@pytest.fixture
def storescp(tmp_path: Path, peer_log_dir: Path) -> Iterator[Callable[..., peers.DcmtkStorescp]]:
    """Factory: storescp(**DcmtkStorescp options) -> a started DCMTK storescp writing to a
    fresh directory under tmp_path (or out_dir=...); all are stopped after the test."""
    peers.require_dcmtk()
    start, started = _scp_factory(peers.DcmtkStorescp, tmp_path, peer_log_dir, "storescp")
    try:
        yield start
    finally:
        for scp in started:
            scp.stop()


@pytest.fixture
def pynetdicom_scp(
    tmp_path: Path, peer_log_dir: Path
) -> Iterator[Callable[..., peers.PynetdicomStorescp]]:
    """Factory: pynetdicom_scp(**PynetdicomStorescp options) -> a started pynetdicom
    storage SCP subprocess on an ephemeral port; all are stopped after the test."""
    start, started = _scp_factory(peers.PynetdicomStorescp, tmp_path, peer_log_dir, "pynetdicom")
    try:
        yield start
    finally:
        for scp in started:
            scp.stop()


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One temporary PostgreSQL server for the session (bench.postgres.TemporaryPostgres),
    always destroyed. Fails (never skips) when it cannot start."""
    from bench.postgres import PostgresError, TemporaryPostgres

    try:
        server = TemporaryPostgres().start()
    except PostgresError as exc:
        pytest.fail(f"PostgreSQL could not be started for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


_SCHEMAS = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: Any) -> str:
    """The URL of a fresh, empty schema of the session's PostgreSQL (search_path set in
    the URL): as good as a database of its own, and made in a millisecond."""
    import psycopg

    name = f"t{os.getpid()}_{next(_SCHEMAS)}"
    with psycopg.connect(postgres.url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {name}")
    return f"{postgres.url}?options=-csearch_path%3D{name}"


_DATABASES = itertools.count(1)


@pytest.fixture
def postgres_database(postgres: Any) -> str:
    """The URL of a fresh, empty database of the session's PostgreSQL."""
    return postgres.create_database(f"db{os.getpid()}_{next(_DATABASES)}")
