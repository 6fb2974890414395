"""bench/procs.py: a process group is always stopped whole.

Each case starts a small shell that forks a background ``sleep`` (a child that stays in
the group after the leader is gone, like storescp --fork's children) and checks that
nothing of the group survives the stop, whatever the leader does with SIGTERM.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from bench.procs import ProcessGroup, Registry, group_alive

#: A leader with a child in its group; the child outlives a leader that exits.
FORKS_A_CHILD = ["sh", "-c", "sleep 60 & echo started; wait"]
#: A leader that ignores SIGTERM.
IGNORES_TERM = ["sh", "-c", "trap '' TERM; echo started; sleep 60 & wait; sleep 60"]


def _started(group: ProcessGroup, text: str = "started") -> None:
    deadline = time.monotonic() + 10
    while text not in group.log_tail() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_stop_kills_the_leader_and_its_children(tmp_path: Path) -> None:
    registry = Registry()
    group = ProcessGroup.logged(FORKS_A_CHILD, tmp_path, "forks", registry=registry)
    _started(group)
    assert group.alive() and registry.live() == [group]
    group.stop(grace=5)
    assert group.returncode is not None
    assert not group_alive(group.pid)
    assert registry.live() == [] and list(registry) == []


def test_a_leader_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    group = ProcessGroup.logged(IGNORES_TERM, tmp_path, "ignores-term")
    _started(group)  # the trap is set
    start = time.monotonic()
    assert group.stop(signal.SIGTERM, grace=0.5, group=True) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - start < 10
    assert not group.alive()


def test_children_left_by_an_exited_leader_are_killed(tmp_path: Path) -> None:
    group = ProcessGroup.logged(["sh", "-c", "sleep 60 & echo started"], tmp_path, "orphan")
    assert group.wait(10) == 0
    assert group.alive()  # the background sleep is still in the group
    assert not group.wait_gone(0.2)  # it does not end by itself: killed at the deadline
    deadline = time.monotonic() + 5
    while group.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not group.alive()
    group.stop()


def test_registry_stops_all_but_the_kept(tmp_path: Path) -> None:
    registry = Registry()
    a = ProcessGroup(["sleep", "60"], registry=registry)
    b = ProcessGroup(["sleep", "60"], registry=registry)
    try:
        registry.stop_all(keep=[b], grace=1)
        assert a.poll() is not None and b.poll() is None
        assert registry.live() == [b]
    finally:
        b.kill()
    assert registry.live() == [] and not b.alive()


def test_log_tail_quotes_the_output(tmp_path: Path) -> None:
    group = ProcessGroup.logged(["sh", "-c", "echo out; echo err >&2; exit 3"], tmp_path, "x")
    assert group.wait(10) == 3
    assert group.log_tail() == "err\nout"
    assert group.stop() == 3
