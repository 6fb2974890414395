"""bench/cputime.py: CPU of a whole process tree, exited children included.

A parent burns CPU, forks a child that burns CPU and exits (reaped), then waits; both
meters must see the parent's and the child's time. The cgroup meter needs root and a
cgroup v2 hierarchy; the /proc meter runs anywhere.
"""

from __future__ import annotations

import os
import time

import pytest

from bench import cputime
from bench.procs import ProcessGroup

#: Parent: ~0.15 s of CPU, a child of ~0.15 s that exits, then idle until killed.
BURNER = """
import os, time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
burn(0.15)
pid = os.fork()
if pid == 0:
    burn(0.15)
    os._exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
time.sleep(60)
"""


def _measure(meter: cputime.Meter, tmp_path) -> tuple[cputime.CpuSample, list[int]]:
    import sys

    group = ProcessGroup.logged([*meter.prefix, sys.executable, "-c", BURNER], tmp_path, "burn")
    try:
        meter.attach(group.pid)
        deadline = time.monotonic() + 20
        while "done" not in group.log_tail() and time.monotonic() < deadline:
            time.sleep(0.02)
        return meter.read(), meter.pids()
    finally:
        group.stop(grace=1)
        meter.close()


def test_proc_meter_counts_an_exited_child(tmp_path) -> None:
    sample, pids = _measure(cputime.ProcMeter(), tmp_path)
    assert sample.total_us >= 250_000  # 0.3 s, less the 10 ms ticks' rounding
    assert len(pids) == 1  # the child is gone


@pytest.mark.skipif(cputime.cgroup_parent() is None, reason="no writable cgroup v2 (not root?)")
def test_cgroup_meter_counts_an_exited_child(tmp_path) -> None:
    meter = cputime.open_meter(f"scpfleet-test-{os.getpid()}", method="cgroup")
    path = meter.path
    sample, pids = _measure(meter, tmp_path)
    assert sample.total_us >= 290_000 and sample.user_us > 0
    assert len(pids) == 1
    assert not path.exists()  # close() removed the cgroup


def test_samples_subtract() -> None:
    diff = cputime.CpuSample(5.0, 7.0) - cputime.CpuSample(1.0, 2.0)
    assert (diff.user_us, diff.system_us, diff.total_us) == (4.0, 5.0, 9.0)


def test_process_times_see_a_process_and_its_threads(tmp_path) -> None:
    """Two threads besides the main one burn ~0.2 s each; one then waits, the other
    ends. The ticks of /proc/PID/stat count both; the exact run time counts the live
    one only (an ended thread's schedstat is gone: the documented `rest`). A pid that
    does not exist is left out."""
    import sys

    code = ("import threading, time\n"
            "def burn(wait):\n"
            "    end = time.thread_time() + 0.2\n"
            "    while time.thread_time() < end: pass\n"
            "    wait and threading.Event().wait()\n"
            "alive = threading.Thread(target=burn, args=(True,), daemon=True); alive.start()\n"
            "ended = threading.Thread(target=burn, args=(False,)); ended.start(); ended.join()\n"
            "time.sleep(0.3); print('done', flush=True); time.sleep(60)\n")
    group = ProcessGroup.logged([sys.executable, "-c", code], tmp_path, "threads")
    try:
        deadline = time.monotonic() + 20
        while "done" not in group.log_tail() and time.monotonic() < deadline:
            time.sleep(0.02)
        found = cputime.process_times([group.pid, 2 ** 22 + 1])
    finally:
        group.stop(grace=1)
    assert set(found) == {group.pid}
    me = found[group.pid]
    assert me.name.startswith("python")
    assert 190_000 <= me.run_us < 390_000  # the live burner, not the ended one
    assert me.cpu.total_us >= 360_000  # both burners, less the ticks' rounding


def test_by_name_sums_kinds_and_counts_newcomers_from_zero() -> None:
    def t(name: str, user: float, run: float) -> cputime.ProcessTime:
        return cputime.ProcessTime(name, cputime.CpuSample(user, user / 2), run)

    before = {1: t("sup", 10, 15), 2: t("w", 100, 150), 3: t("w", 200, 300), 4: t("gone", 5, 5),
              5: t("old", 50, 50)}
    after = {1: t("sup", 10, 16), 2: t("w", 130, 190), 3: t("w", 220, 330), 6: t("new", 7, 9),
             5: t("reused", 60, 70)}
    sums = cputime.by_name(before, after)
    assert set(sums) == {"sup", "w", "new", "reused"}
    count, w = sums["w"]
    assert count == 2 and w.run_us == 70 and w.cpu.user_us == 50 and w.cpu.system_us == 25
    assert sums["sup"][1].run_us == 1 and sums["sup"][1].cpu.total_us == 0
    assert sums["new"][1].run_us == 9  # born in the window: all of its time
    assert sums["reused"][1].run_us == 70  # another process under an old pid
