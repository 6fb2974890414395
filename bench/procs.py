"""Child processes that lead their own process group and are always killed as a group.

Theory of operation: :class:`ProcessGroup` starts a command in a new session
(``start_new_session``), so the child leads a process group that its own children join
(``storescp --fork``'s per-association children, the node's workers, a load's sender
processes). Stopping signals the leader (or the whole group), waits a grace period,
then SIGKILLs whatever is left of the group, and reaps the leader: no descendant that
stayed in the group outlives its stop. A :class:`Registry` remembers the groups one
owner started, so a ``finally`` or a fixture finalizer can stop them all.
:meth:`ProcessGroup.logged` sends the output to two files and quotes their tails.

It never uses a shell, never signals a process it did not start (only the group whose
leader it spawned), and keeps no global state: each owner holds its own registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ProcessGroup", "Registry", "group_alive"]

#: SIGTERM to SIGKILL when a caller gives no grace: every program started here (DCMTK,
#: pynetdicom, Orthanc, the node with a short drain) exits well within it.
DEFAULT_GRACE_S = 10.0
#: How long reaping a SIGKILLed leader may take (a process in uninterruptible sleep).
_REAP_S = 10.0
_POLL_S = 0.02

Stream = int | IO[Any] | None


def group_alive(pgid: int) -> bool:
    """True while process group ``pgid`` has a member that is not a zombie (zombies still
    count for ``killpg``, so /proc is read to look for a live one)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Registry:
    """The groups one owner started and has not stopped yet."""

    def __init__(self) -> None:
        self._groups: set[ProcessGroup] = set()

    def add(self, group: ProcessGroup) -> None:
        self._groups.add(group)

    def discard(self, group: ProcessGroup) -> None:
        self._groups.discard(group)

    def live(self) -> list[ProcessGroup]:
        """Registered groups whose leader is still running."""
        return [g for g in self._groups if g.poll() is None]

    def __iter__(self):
        return iter(list(self._groups))

    def stop_all(self, keep: Iterable[ProcessGroup] = (), grace: float = 2.0) -> None:
        """Stop every registered group not in ``keep`` (leader first, then the group)."""
        spare = set(keep)
        for group in list(self._groups):
            if group not in spare:
                group.stop(grace=grace)


class ProcessGroup:
    """One child process leading its own process group.

    ``argv`` items are turned into strings; ``stdin`` defaults to /dev/null; ``stdout``
    and ``stderr`` take what :class:`subprocess.Popen` takes (an open file, DEVNULL,
    STDOUT). ``registry``, if given, holds the group until it is stopped or killed.
    """

    #: Files holding the output (stderr first), when started by :meth:`logged`.
    log_paths: tuple[Path, ...] = ()

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str] | int],
        *,
        stdout: Stream = subprocess.DEVNULL,
        stderr: Stream = subprocess.DEVNULL,
        stdin: Stream = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.popen = subprocess.Popen(
            self.argv, stdin=stdin, stdout=stdout, stderr=stderr,
            env=None if env is None else dict(env), cwd=None if cwd is None else Path(cwd),
            start_new_session=True,
        )  # fmt: skip
        self._registry = registry
        if registry is not None:
            registry.add(self)

    @classmethod
    def logged(cls, argv: Sequence[str | os.PathLike[str] | int], folder: Path, name: str,
               **options: Any) -> ProcessGroup:
        """Start ``argv`` with stdout and stderr in ``folder/name.out`` and ``.err``."""
        folder.mkdir(parents=True, exist_ok=True)
        out_path, err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            group = cls(argv, stdout=out, stderr=err, **options)
        group.log_paths = (err_path, out_path)
        return group

    def log_tail(self, chars: int = 600) -> str:
        """The last ``chars`` of the output files, for error messages."""
        text = ""
        for path in self.log_paths:
            try:
                text += path.read_text(errors="replace")[-chars:]
            except OSError:
                pass
        return text.strip()[-chars:]

    @property
    def pid(self) -> int:
        """The leader's process id, which is also the group id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """The leader's exit status, or None if it still runs after ``timeout`` s."""
        try:
            return self.popen.wait(None if timeout is None else max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the leader, or to every member with ``group``; a group that is
        gone already is not an error."""
        try:
            if group:
                os.killpg(self.popen.pid, sig)
            elif self.popen.poll() is None:
                self.popen.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, grace: float = DEFAULT_GRACE_S, *,
             group: bool = False) -> int | None:
        """Send ``sig`` (to the leader, or to the group with ``group``), give the leader
        ``grace`` seconds to exit, SIGKILL the group if it does not, reap the leader, and
        SIGKILL whatever is left of the group in any case, waiting until none of it runs.
        The leader's exit status."""
        if self.popen.poll() is None:
            self.send_signal(sig, group=group)
            if self.wait(grace) is None:
                self.send_signal(signal.SIGKILL, group=True)
                self.wait(_REAP_S)
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the whole group now, reap the leader and wait (boundedly) until no
        member runs: a signal is delivered, not acted on, by the time kill() returns."""
        self.send_signal(signal.SIGKILL, group=True)
        self.wait(_REAP_S)
        deadline = time.monotonic() + _REAP_S
        while group_alive(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        self._forget()
        return self.popen.poll()

    def alive(self) -> bool:
        """Whether any member of the group (the leader or a child) is still running."""
        return group_alive(self.popen.pid)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until no member of the group runs; past ``timeout`` SIGKILL the group.
        True if the group ended by itself."""
        deadline = time.monotonic() + timeout
        while group_alive(self.popen.pid):
            if time.monotonic() > deadline:
                self.send_signal(signal.SIGKILL, group=True)
                time.sleep(0.1)
                return False
            time.sleep(_POLL_S)
        return True

    def _forget(self) -> None:
        if self._registry is not None:
            self._registry.discard(self)
