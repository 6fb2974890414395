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
