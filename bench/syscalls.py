"""System calls of a running server's process tree, counted by ``strace -f -c``.

Theory of operation: :class:`SyscallCount` attaches ``strace -f -c -q`` to every process
of a running server (``-p`` each, so already-running workers are traced too; ``-f``
follows what they fork and every thread), waits until each of them shows a tracer in
/proc/PID/status, and on :meth:`SyscallCount.finish` interrupts strace, which detaches
and writes its summary table; :func:`parse_summary` turns that into calls per syscall
name. Counting a load of N instances and one of a few instances over the same number
of associations, :func:`per_instance` takes the difference per extra instance: start-up,
association set-up and release cancel out.

strace slows the traced processes: never read CPU time while it is attached.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.procs import ProcessGroup, Registry

__all__ = ["strace_tool", "SyscallCount", "parse_summary", "per_instance"]

#: Seconds strace may take to attach to every process (a busy server has threads).
ATTACH_TIMEOUT_S = 15.0
#: Seconds strace may take to detach and write its table after SIGINT.
DETACH_TIMEOUT_S = 30.0
_POLL_S = 0.02


def strace_tool() -> str | None:
    return shutil.which("strace")


def parse_summary(text: str) -> dict[str, int]:
    """Calls per syscall name from ``strace -c``'s table (the total row left out)::

        % time     seconds  usecs/call     calls    errors syscall
        ------ ----------- ----------- --------- --------- ----------------
         42.00    0.000420          10        42           write
    """
    calls: dict[str, int] = {}
    started = False
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "%":
            started = True
            continue
        if not started or fields[0].startswith("-"):
            continue
        name, numbers = fields[-1], fields[:-1]
        if name == "total" or len(numbers) < 4:
            continue
        try:
            calls[name] = calls.get(name, 0) + int(numbers[3])
        except ValueError:
            continue
    return calls


def per_instance(big: Mapping[str, int], small: Mapping[str, int], n_big: int,
                 n_small: int) -> dict[str, float]:
    """Calls per instance by name: (big - small) / (n_big - n_small), names whose
    difference is not positive left out."""
    span = n_big - n_small
    if span <= 0:
        raise ValueError("the big run must send more instances than the small one")
    out = {}
    for name in sorted(set(big) | set(small)):
        extra = (big.get(name, 0) - small.get(name, 0)) / span
        if extra > 0:
            out[name] = round(extra, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _traced(pid: int) -> bool:
    """Whether every thread of ``pid`` has a tracer (a thread that is gone counts)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("TracerPid:") and line.split()[1] == "0":
                return False
    return True


class SyscallCount:
    """``strace -f -c`` attached to ``pids`` until :meth:`finish`; see the module doc."""

    def __init__(self, pids: Sequence[int], folder: Path, name: str,
                 registry: Registry | None = None) -> None:
        tool = strace_tool()
        if tool is None:
            raise OSError("strace is not installed (apt-get install strace)")
        if not pids:
            raise OSError("no process to trace")
        self.pids = list(pids)
        self.table = folder / f"{name}.strace"
        argv = [tool, "-f", "-c", "-q", "-o", self.table]
        for pid in self.pids:
            argv += ["-p", pid]
        self.proc = ProcessGroup.logged(argv, folder, name, registry=registry)
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while not all(_traced(pid) for pid in self.pids):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.stop(grace=2.0)
                raise OSError(f"strace did not attach: {self.proc.log_tail(300)}")
            time.sleep(_POLL_S)

    def finish(self) -> dict[str, int]:
        """Detach (SIGINT) and return the calls per syscall name."""
        self.proc.stop(signal.SIGINT, grace=DETACH_TIMEOUT_S)
        try:
            return parse_summary(self.table.read_text())
        except OSError:
            raise OSError(f"strace wrote no table: {self.proc.log_tail(300)}") from None
