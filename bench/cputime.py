"""CPU time of a server's whole process tree, exited processes included.

Theory of operation: a :class:`Meter` is opened before the server starts and read before
and after a load; the difference is the CPU the server's processes spent, user and
system apart, in microseconds. Two methods, the first that works is used:

- ``cgroup`` (:class:`CgroupMeter`): a fresh child cgroup of a writable cgroup v2
  hierarchy (root can create one; /sys/fs/cgroup, or a hybrid system's
  /sys/fs/cgroup/unified). The server's command runs behind :attr:`Meter.prefix`, a
  ``sh`` that moves itself into the cgroup and then ``exec``\\ s the server, so every
  process it ever forks is born inside. ``cpu.stat`` (user_usec, system_usec) counts
  them all, those that already exited too, in microseconds.
- ``proc`` (:class:`ProcMeter`): where no cgroup can be made, the server's process
  group is summed from /proc/PID/stat: utime + stime of each member plus cutime +
  cstime (what members reaped from their exited children). Clock ticks (1/100 s on
  Linux) make it coarse: use more instances. A process that leaves the group or whose
  parent never reaps it is missed; none of the servers measured here does that.

Either way the kernel knows the total exactly (scheduler run time in the cgroup case)
but splits it into user and system by sampling, at each tick, which one a task is in:
the split is rough over a few hundred milliseconds and meaningless over a few ticks.

:func:`process_times` and :func:`by_name` split a window's CPU over the tree's live
processes by name (a node's workers, indexer, ...): exact run time from each thread's
schedstat, the user/system split from /proc/PID/stat's ticks.

:func:`settle` waits until a tree stops using CPU (a server finishing its start, or the
work that follows the last response, such as indexing). Nothing here starts a process:
the caller starts the server with the prefix and :meth:`Meter.attach`\\ es its pid; the
caller also stops it (its process group) before :meth:`Meter.close`, which kills
whatever is still in the cgroup and removes it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSample", "Meter", "CgroupMeter", "ProcMeter", "open_meter", "settle",
           "cgroup_parent", "ProcessTime", "process_times", "by_name"]

#: Below this much CPU over one settle window a tree counts as idle: 1% of one CPU.
IDLE_US_PER_S = 10_000
#: The window :func:`settle` compares over; long enough to see a timer-driven flush.
SETTLE_WINDOW_S = 0.25
_TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")
_POLL_S = 0.02


@dataclass(frozen=True)
class CpuSample:
    user_us: float
    system_us: float

    @property
    def total_us(self) -> float:
        return self.user_us + self.system_us

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user_us - other.user_us, self.system_us - other.system_us)

    def __add__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user_us + other.user_us, self.system_us + other.system_us)


class Meter:
    """The CPU of one server's process tree; see the module doc."""

    #: ``cgroup`` or ``proc``.
    method = ""
    #: What the method counts, in words, for the results.
    description = ""
    #: A command the server's command line is appended to (it ``exec``\\ s the rest).
    prefix: tuple[str, ...] = ()

    def attach(self, pid: int) -> None:
        """The server started, with this pid (its process group's id)."""

    def read(self) -> CpuSample:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes of the tree now (thread group leaders)."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill what is left of the tree and release the meter; idempotent."""


def _cgroup2_mounts() -> list[Path]:
    mounts = []
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                mounts.append(Path(fields[1]))
    except OSError:
        pass
    mounts.sort(key=lambda p: p != Path("/sys/fs/cgroup"))
    return mounts


def cgroup_parent() -> Path | None:
    """A cgroup v2 folder this process may create children in: its own cgroup, else the
    hierarchy's root; None where there is none (no cgroup v2, or not allowed)."""
    own = None
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    except OSError:
        pass
    for mount in _cgroup2_mounts():
        for folder in ([mount / own] if own else []) + [mount]:
            if (folder / "cgroup.procs").is_file() and os.access(folder, os.W_OK):
                return folder
    return None


class CgroupMeter(Meter):
    method = "cgroup"
    description = ("cgroup v2 cpu.stat (user_usec, system_usec) of a cgroup holding the "
                   "server's whole process tree from its first instruction, exited "
                   "processes included")

    def __init__(self, parent: Path, name: str) -> None:
        self.path = parent / name
        self.path.mkdir()
        try:
            self.read()
        except (OSError, KeyError, ValueError):
            self.path.rmdir()
            raise OSError(f"{self.path} has no usable cpu.stat")
        # sh moves itself into the cgroup ("0": the writing process), then becomes the
        # server: nothing of the server runs outside it.
        self.prefix = ("/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"',
                       str(self.path / "cgroup.procs"))
        self._closed = False

    def read(self) -> CpuSample:
        stat = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            stat[key] = int(value)
        return CpuSample(float(stat["user_usec"]), float(stat["system_usec"]))

    def pids(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(pid) for pid in text.split()]

    def close(self) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                left = self.pids()
            except OSError:
                break
            if not left:
                break
            if time.monotonic() > deadline:
                break
            kill = self.path / "cgroup.kill"
            try:
                if kill.is_file():
                    kill.write_text("1")
                else:
                    for pid in left:
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(_POLL_S)
        for _ in range(50):  # the last exits are noticed asynchronously
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(_POLL_S)
        self._closed = True


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """A process's name and the fields of /proc/PID/stat after it (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fp:
            text = fp.read()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    if not head:
        return None
    return head.partition("(")[2], tail.split()


def _stat_fields(pid: str) -> list[str] | None:
    found = _stat(pid)
    return found[1] if found is not None else None


class ProcMeter(Meter):
    method = "proc"
    description = ("/proc/PID/stat utime+stime+cutime+cstime summed over the server's "
                   "process group (clock ticks of 1/%d s; exited processes count once "
                   "a member of the group has reaped them)" % os.sysconf("SC_CLK_TCK"))

    def __init__(self) -> None:
        self.pgid: int | None = None

    def attach(self, pid: int) -> None:
        self.pgid = pid

    def _members(self) -> list[tuple[int, list[str]]]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
                # fields[0] is the state, [2] the process group; see proc(5).
                if int(fields[2]) == self.pgid:
                    found.append((int(entry), fields))
        return found

    def read(self) -> CpuSample:
        user = system = 0
        for _, fields in self._members():
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), here 11-14.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
        return CpuSample(user * _TICK_US, system * _TICK_US)

    def pids(self) -> list[int]:
        return [pid for pid, fields in self._members() if fields[0] != "Z"]


@dataclass(frozen=True)
class ProcessTime:
    """One process's CPU so far: its name (``comm``, what ``PR_SET_NAME`` set), user and
    system time from /proc/PID/stat (clock ticks, threads included: as rough as
    :class:`ProcMeter`), and ``run_us``, the scheduler's exact time on a CPU summed
    over its live threads (/proc/PID/task/*/schedstat; a thread that exited is missing)."""

    name: str
    cpu: CpuSample
    run_us: float


def process_times(pids: list[int]) -> dict[int, ProcessTime]:
    """:class:`ProcessTime` of each live process of ``pids``; processes gone are left out."""
    found = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is None or len(stat[1]) < 13 or stat[1][0] == "Z":
            continue
        name, fields = stat
        run_ns = 0
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone since
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fp:
                    run_ns += int(fp.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended
        cpu = CpuSample(int(fields[11]) * _TICK_US, int(fields[12]) * _TICK_US)
        found[pid] = ProcessTime(name, cpu, run_ns / 1000)
    return found


def by_name(before: dict[int, ProcessTime],
            after: dict[int, ProcessTime]) -> dict[str, tuple[int, ProcessTime]]:
    """What each kind of process spent between two :func:`process_times` snapshots,
    summed by name: name -> (processes, their time). A process born in between counts
    from zero; one that exited in between is missing (it is only in the meter's total).
    """
    sums: dict[str, tuple[int, ProcessTime]] = {}
    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.name == now.name:
            cpu, run_us = now.cpu - then.cpu, now.run_us - then.run_us
        else:
            cpu, run_us = now.cpu, now.run_us
        count, total = sums.get(now.name, (0, ProcessTime(now.name, CpuSample(0.0, 0.0), 0.0)))
        sums[now.name] = (count + 1, ProcessTime(now.name, total.cpu + cpu, total.run_us + run_us))
    return sums


def open_meter(name: str, *, method: str = "auto") -> Meter:
    """A meter for one server run: a cgroup named ``name`` where one can be made
    (``method`` "auto" or "cgroup"), else the /proc fallback ("auto" or "proc")."""
    if method in ("auto", "cgroup"):
        parent = cgroup_parent()
        if parent is not None:
            try:
                return CgroupMeter(parent, name)
            except OSError:
                if method == "cgroup":
                    raise
        elif method == "cgroup":
            raise OSError("no writable cgroup v2 hierarchy (run as root on cgroup v2)")
    return ProcMeter()


def settle(meter: Meter, limit: float = 5.0) -> tuple[bool, float]:
    """Wait until the tree uses under :data:`IDLE_US_PER_S` over one
    :data:`SETTLE_WINDOW_S` window, at most ``limit`` seconds. (settled, CPU ms per
    second over the last window)."""
    deadline = time.monotonic() + limit
    last, t_last = meter.read().total_us, time.monotonic()
    while True:
        time.sleep(SETTLE_WINDOW_S)
        now, t_now = meter.read().total_us, time.monotonic()
        rate = (now - last) / max(t_now - t_last, 1e-6)  # us per s
        if rate < IDLE_US_PER_S:
            return True, rate / 1000
        if t_now > deadline:
            return False, rate / 1000
        last, t_last = now, t_now
