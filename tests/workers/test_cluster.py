"""Three nodes behind HAProxy sharing one PostgreSQL index, under load and under faults.

Theory of operation: :class:`bench.cluster.LocalCluster` starts three ``scpfleet serve``
nodes (one worker each, ``--index`` a fresh database of the session's PostgreSQL, their
``/health`` checked by HAProxy, PROXY v2 from it) and HAProxy in front, all on
127.0.0.1. :class:`bench.cluster.Load` keeps 8 DCMTK ``storescu`` associations going
through HAProxy, 25 instances each, and records what every C-STORE was answered; then
the disks and the index are compared with that, from outside: every acknowledged
instance is on exactly one node's disk, its data set byte-identical to what was sent,
and in the index as that node's row; every row describes a file on its node's disk. The
faults -- kill -9 of a node, PostgreSQL stopped for 10 s, SIGTERM of a node -- happen
mid-load. The loads are slow tests: 3000 instances with --run-slow, slow_scale of that
in CI. The shipped HAProxy configuration and /health are checked without a load.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.cluster import (
    DRAIN_DELAY_S,
    HaproxyServer,
    Load,
    LocalCluster,
    exact_profile,
    haproxy_config,
)
from tests.dicomdata import dataset_bytes, make_files
from tests.workers.nodes import sop_uid

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
FULL_LOAD = 3000


# ------------------------------------------------------------------------------ without a load


def _directives(text: str) -> list[str]:
    return [" ".join(line.split("#", 1)[0].split()) for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def test_the_shipped_haproxy_configuration_is_valid_and_the_one_the_tests_run(tmp_path: Path) -> None:
    shipped = REPO / "deploy" / "haproxy.cfg"
    checked = subprocess.run(["haproxy", "-c", "-f", str(shipped)], capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    servers = [HaproxyServer(f"node{n}", "127.0.0.1", 11112 + n, 9112 + n) for n in (1, 2, 3)]
    assert _directives(shipped.read_text()) == _directives(haproxy_config(("127.0.0.1", 11112), servers))
    cluster_sh = (REPO / "scripts" / "cluster.sh").read_text()
    assert "deploy/haproxy.cfg" in cluster_sh


def test_health_says_ready_then_draining_and_refuses_while_draining(node_factory, tiny_files) -> None:
    import json
    import urllib.error
    import urllib.request

    from tests.workers.nodes import _contexts, associate, run

    node = node_factory("--workers", "1", "--metrics-port", "0", "--node-id", "solo", "--drain-delay", "3")

    def health() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/health", timeout=5) as rsp:
                return rsp.status, json.load(rsp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    code, body = health()
    assert (code, body["status"], body["node"], body["workers"]) == (200, "ready", "solo", 1)
    contexts = _contexts(tiny_files[:1])

    async def hold_then_store() -> tuple[int, bool]:
        """An association open before SIGTERM goes on; one requested after is refused."""
        held = await associate(node.port, contexts)
        assert held.is_established
        node.popen.send_signal(15)
        deadline = time.monotonic() + 5
        while health()[1]["status"] != "draining":
            assert time.monotonic() < deadline, "not draining"
            time.sleep(0.05)
        late = await associate(node.port, contexts)
        refused = late.is_rejected
        status = int((await held.send_c_store(tiny_files[0])).Status)
        await held.release()
        return status, refused

    status, refused = run(hold_then_store())
    assert status == 0x0000 and refused
    assert health()[0] == 503
    assert node.popen.wait(60) == 0
    assert "draining: new associations refused" in node.log()


# ------------------------------------------------------------------------------ under load


@pytest.fixture(scope="session")
def cluster_files(tmp_path_factory: pytest.TempPathFactory, slow_scale: float) -> dict[Path, str]:
    """3000 tiny instances (slow_scale of that in CI): file -> SOP Instance UID."""
    count = max(200, int(FULL_LOAD * slow_scale))
    files = make_files(tmp_path_factory.mktemp("cluster-files"), {"tiny": count})
    return {path: sop_uid(path) for path in files}


@pytest.fixture
def cluster(tmp_path: Path, postgres_database: str) -> Iterator[LocalCluster]:
    for tool in ("haproxy", "storescu"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/test.sh installs it)", pytrace=False)
    running = LocalCluster(tmp_path / "cluster", postgres_database).start()
    try:
        yield running
    finally:
        running.close()


def pg_rows(url: str) -> dict[tuple[str, str], tuple[str, int]]:
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT node, sop_instance_uid, path, size FROM instances").fetchall()
    return {(node, uid): (path, size) for node, uid, path, size in rows}


def settle(cluster: LocalCluster, want: set[str], timeout: float = 90.0) -> dict[tuple[str, str], tuple[str, int]]:
    """The index's rows once they hold ``want`` and every instance file of every node."""
    deadline = time.monotonic() + timeout
    while True:
        rows = pg_rows(cluster.index_url)
        on_disk = {(m.name, uid) for m in cluster.members for uid in m.stored_files()}
        if want <= {uid for _, uid in rows} and on_disk <= set(rows):
            return rows
        if time.monotonic() > deadline:
            missing = sorted(want - {uid for _, uid in rows})[:5]
            raise AssertionError(f"index not caught up: {len(rows)} rows, missing e.g. {missing}, "
                                 f"{len(on_disk - set(rows))} file(s) without a row")
        time.sleep(0.25)


def check(cluster: LocalCluster, files: dict[Path, str], acknowledged: list[Path]) -> dict[str, int]:
    """The invariants of the module doc; the number of instances each node holds."""
    uids = {files[p] for p in acknowledged}
    assert len(uids) == len(acknowledged), "an instance was acknowledged twice"
    rows = settle(cluster, uids)
    holders: dict[str, list[tuple[str, Path]]] = collections.defaultdict(list)
    for member in cluster.members:
        for uid, path in member.stored_files().items():
            holders[uid].append((member.name, path))
    sent = {uid: path for path, uid in files.items()}
    for uid in uids:
        assert len(holders[uid]) == 1, f"{uid} is on {len(holders[uid])} nodes"
        node, path = holders[uid][0]
        assert dataset_bytes(path) == dataset_bytes(sent[uid]), f"{uid} on {node} differs from what was sent"
        relative, size = rows[(node, uid)]
        assert (cluster.node(node).storage / relative) == path and path.stat().st_size == size
    # Every row is a file of its node; no instance has rows on two nodes.
    assert set(rows) == {(name, uid) for uid, where in holders.items() for name, _ in where}
    assert len({uid for _, uid in rows}) == len(rows)
    return collections.Counter(node for node, _ in rows)


@pytest.mark.slow
def test_eight_storescu_through_haproxy(cluster: LocalCluster, cluster_files: dict[Path, str], tmp_path: Path) -> None:
    files = list(cluster_files)
    load = Load(cluster.port, files, exact_profile(files, tmp_path), lanes=8).start()
    results = load.wait()
    failed = [r for r in results if not r.complete]
    assert not failed, failed[0].output[-2000:]
    per_node = check(cluster, cluster_files, load.acknowledged)
    assert sum(per_node.values()) == len(files)
    assert set(per_node) == {"node1", "node2", "node3"}, per_node  # every node got work
    assert cluster.haproxy is not None
    assert all(cluster.haproxy.sessions()[m.name] for m in cluster.members)
    with psycopg.connect(cluster.index_url) as db:  # PROXY v2: rows name the modality, not HAProxy's hop
        senders = db.execute("SELECT DISTINCT calling_ae, calling_address FROM instances").fetchall()
    assert senders == [("LOADSCU", "127.0.0.1")], senders
    for member in cluster.members:  # /metrics shows each node's index lag, now none
        deadline = time.monotonic() + 10
        while not re.search(r'^scpfleet_index_lag_records\{[^}]*node="%s"[^}]*\} 0\.0$' % member.name,
                            member.metrics(), re.M):
            assert time.monotonic() < deadline, member.metrics()
            time.sleep(0.2)
    for member in cluster.members:
        assert member.stop() == 0


@pytest.mark.slow
def test_kill_9_of_a_node_mid_load(cluster: LocalCluster, cluster_files: dict[Path, str], tmp_path: Path) -> None:
    files = list(cluster_files)
    batches = -(-len(files) // 25)
    # Spread over ~15 s, so that many associations begin after the kill.
    load = Load(cluster.port, files, exact_profile(files, tmp_path), lanes=8,
                pace_s=15.0 / max(1, batches / 8)).start()
    victim = cluster.node("node2")
    deadline = time.monotonic() + 120
    while len(load.acknowledged) < len(files) // 3:
        assert time.monotonic() < deadline, "the load did not get going"
        time.sleep(0.02)
    killed_at = time.monotonic()
    victim.kill()
    results = load.wait()
    # New associations went to the others: every one begun after the kill succeeded.
    later = [r for r in results if r.started > killed_at + 1.0]
    assert later, "no association began after the kill"
    for result in later:
        assert result.complete, result.output[-2000:]
    victim.start()  # same ports, same storage: recovery replays its journal into the shared index
    assert cluster.haproxy is not None
    cluster.haproxy.wait_state(victim.name, "UP")
    acknowledged = load.acknowledged
    per_node = check(cluster, cluster_files, acknowledged)
    held = set(victim.stored_files())
    assert {cluster_files[p] for p in acknowledged} & held, "the killed node had acknowledged nothing"
    assert per_node[victim.name] == len(held)
    for member in cluster.members:
        assert member.stop() == 0


@pytest.mark.slow
def test_postgresql_stopped_for_10_s_mid_load(cluster: LocalCluster, cluster_files: dict[Path, str], tmp_path: Path,
                                              postgres) -> None:
    files = list(cluster_files)
    batches = -(-len(files) // 25)
    # Spread the load over ~25 s so that it goes on while the database is down.
    load = Load(cluster.port, files, exact_profile(files, tmp_path), lanes=8,
                pace_s=25.0 / max(1, batches / 8)).start()
    while len(load.acknowledged) < len(files) // 5:
        time.sleep(0.02)
    postgres.stop()
    stopped_at = time.monotonic()
    try:
        time.sleep(10)
        during = len(load.acknowledged)
    finally:
        postgres.start()
    results = load.wait()
    failed = [r for r in results if not r.complete]
    assert not failed, failed[0].output[-2000:]  # no C-STORE failed, database or not
    assert during > len(files) // 5, "nothing was stored while the database was down"
    per_node = check(cluster, cluster_files, load.acknowledged)  # caught up, one row each
    assert sum(per_node.values()) == len(files)
    assert any("index commit of" in m.log() and "will retry" in m.log() for m in cluster.members)
    assert any("catching up from the journal" in m.log() for m in cluster.members)
    assert time.monotonic() - stopped_at < 300
    for member in cluster.members:
        assert member.stop() == 0


@pytest.mark.slow
def test_sigterm_of_a_node_under_load_drains(cluster: LocalCluster, cluster_files: dict[Path, str],
                                             tmp_path: Path) -> None:
    files = list(cluster_files)
    batches = -(-len(files) // 25)
    load = Load(cluster.port, files, exact_profile(files, tmp_path), lanes=8,
                pace_s=15.0 / max(1, batches / 8)).start()
    leaving = cluster.node("node3")
    while len(load.acknowledged) < len(files) // 4:
        time.sleep(0.02)
    leaving.terminate()
    assert cluster.haproxy is not None
    cluster.haproxy.wait_state(leaving.name, "DOWN", timeout=DRAIN_DELAY_S + 10)
    down_seen = time.monotonic()  # HAProxy took the node out at or before this
    assert leaving.wait(120) == 0
    results = load.wait()
    # No association failed, except those refused (A-ASSOCIATE-RJ) before HAProxy saw the
    # node draining; a refused one sent nothing.
    for result in results:
        assert result.complete or (result.rejected and not result.acknowledged), result.output[-2000:]
    acknowledged = load.acknowledged
    check(cluster, cluster_files, acknowledged)
    assert "draining: new associations refused" in leaving.log()
    late = [r for r in results if r.rejected and r.started > down_seen]
    assert not late, "refusals went on after HAProxy had taken the node out"
    for member in cluster.members:
        if member is not leaving:
            assert member.stop() == 0
