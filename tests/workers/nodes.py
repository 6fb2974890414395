"""Test helpers: a real ``scpfleet serve`` node in a subprocess, and an engine requestor.

Theory of operation: :class:`Node` starts ``python -m workers.cli serve`` on 127.0.0.1
port 0 in a new session (its own process group, which its children join), waits for
the ready file the node writes once serving, and reads it again whenever the tests
need the current process ids. ``stop`` sends SIGTERM and waits; ``kill_all`` sends
SIGKILL to the whole group; whatever happens, :func:`reap` (called by the fixture)
kills the group so no process outlives its test. :func:`store_files` sends Part 10
files over several concurrent associations with the engine's asyncio requestor and
returns every C-STORE status, so a test knows exactly what was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom

from bench.procs import ProcessGroup

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
_READY_TIMEOUT_S = 30.0


def scpfleet(*args: str, timeout: float = 30, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``scpfleet ARGS`` (not serve) and return the completed process."""
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=_env())


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) | dict(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["TCP_NODELAY"] = "1"
    return env


class Node:
    """One running node; see the module doc."""

    def __init__(self, storage: Path, log_path: Path, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.storage = storage
        self.env = dict(env or {})
        self.log_path = log_path
        self.ready_path = log_path.with_suffix(".ready.json")
        self.args = list(args)
        self.group: ProcessGroup | None = None
        self.popen: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port: int | None = None

    def start(self, timeout: float = _READY_TIMEOUT_S) -> Node:
        if self.ready_path.exists():
            self.ready_path.unlink()
        argv = [sys.executable, "-m", "workers.cli", "serve", "--host", HOST, "--port", "0",
                "--storage", str(self.storage), "--ready-file", str(self.ready_path), *self.args]
        with open(self.log_path, "ab") as log:
            self.group = ProcessGroup(argv, stdout=log, stderr=log, cwd=REPO, env=_env(self.env))
        self.popen = self.group.popen
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.popen.poll() is not None:
                raise AssertionError(f"scpfleet serve exited with {self.popen.returncode}\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill_all()
                raise AssertionError(f"scpfleet serve not ready after {timeout} s\n{self.log()}")
            time.sleep(0.02)
        state = self.state()
        self.port = state["port"]
        self.metrics_port = state["metrics_port"]
        return self

    def state(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                return json.loads(self.ready_path.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.02)
        raise AssertionError(f"no ready file\n{self.log()}")

    def worker_pids(self) -> dict[int, int]:
        return {int(k): v for k, v in self.state()["workers"].items()}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if len(text) < 20000 else "...\n" + text[-20000:]

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the supervisor; its exit status."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"scpfleet serve did not stop within {timeout} s\n{self.log()}")
        finally:
            self._wait_group_gone()

    def kill_all(self) -> None:
        """SIGKILL every process of the node (its process group)."""
        if self.group is None:
            return
        self.group.kill()
        self._wait_group_gone()

    def _wait_group_gone(self, timeout: float = 15.0) -> None:
        """Children exit after the supervisor; wait until the group is empty."""
        if self.group is not None:
            self.group.wait_gone(timeout)

    def reap(self) -> None:
        if self.group is not None:
            self.group.kill()

    # -- what it stored ---------------------------------------------------------------------

    def _index(self, *columns: str) -> dict[str, tuple[Any, ...]]:
        """sop_instance_uid -> the values of ``columns`` from the SQLite index (read only;
        empty before the index exists)."""
        path = self.storage / "index.sqlite"
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(f"SELECT sop_instance_uid, {', '.join(columns)} FROM instances").fetchall()
        finally:
            db.close()
        return {uid: tuple(values) for uid, *values in rows}

    def index_rows(self) -> dict[str, tuple[str, int, str]]:
        """sop_instance_uid -> (path, size, digest) from the SQLite index."""
        return self._index("path", "size", "digest")  # type: ignore[return-value]

    def index_digests(self) -> dict[str, tuple[str, str]]:
        """sop_instance_uid -> (digest_algorithm, digest) from the SQLite index."""
        return self._index("digest_algorithm", "digest")  # type: ignore[return-value]

    def index_senders(self) -> dict[str, tuple[str, str]]:
        """sop_instance_uid -> (calling_ae, calling_address) from the SQLite index."""
        return self._index("calling_ae", "calling_address")  # type: ignore[return-value]

    def stored_files(self) -> dict[str, Path]:
        """sop_instance_uid -> path of every visible instance file (never under .tmp)."""
        out = {}
        for study in self.storage.iterdir():
            if not study.is_dir() or study.name.startswith("."):
                continue
            for series in study.iterdir():
                for f in series.iterdir():
                    assert f.suffix == ".dcm", f"unexpected file {f}"
                    out[f.stem] = f
        return out

    def association_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if " assoc peer=" in line]


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a live process, KiB."""
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


# ---------------------------------------------------------------------------------------
# Our own requestor


def sop_uid(path: Path) -> str:
    return str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPInstanceUID)


def _contexts(files: Sequence[Path]) -> list[Any]:
    from engine.presentation import build_context

    pairs: dict[tuple[str, str], None] = {}
    for f in files:
        meta = pydicom.filereader.read_file_meta_info(f)
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    return [build_context(sop, [ts]) for sop, ts in pairs]


async def associate(port: int, contexts: Sequence[Any], *, aet: bytes = b"TESTSCU", aec: bytes = b"SCPFLEET",
                    ssl_context: Any = None) -> Any:
    from engine._config import IMPLEMENTATION_CLASS_UID
    from engine.aio import RequestorConfig, associate as engine_associate

    config = RequestorConfig(calling_ae_title=aet, called_ae_title=aec, contexts=list(contexts),
                             maximum_pdu_size=262144, implementation_class_uid=str(IMPLEMENTATION_CLASS_UID),
                             dimse_timeout=120, acse_timeout=30, network_timeout=120)
    return await engine_associate(HOST, port, config, ssl_context=ssl_context)


async def store_files(port: int, files: Sequence[Path], associations: int = 1,
                      on_status: Callable[[Path, int | None], None] | None = None) -> list[tuple[Path, int | None, int]]:
    """Send ``files`` (file i over association i % n); ``[(file, status or None, local port)]``.

    None means no response came (the association ended); the association then stops.
    """
    contexts = _contexts(files)
    results: list[tuple[Path, int | None, int]] = []

    async def one(share: Sequence[Path]) -> None:
        assoc = await associate(port, contexts)
        local_port = assoc.requestor.port
        if not assoc.is_established:
            results.extend((f, None, local_port) for f in share)
            return
        for index, f in enumerate(share):
            try:
                rsp = await assoc.send_c_store(f)
            except (RuntimeError, OSError):
                rsp = None
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            results.append((f, status, local_port))
            if on_status is not None:
                on_status(f, status)
            if status is None:
                results.extend((g, None, local_port) for g in share[index + 1:])
                return
        await assoc.release()

    await asyncio.gather(*(one(files[i::associations]) for i in range(associations) if files[i::associations]))
    return results


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh uvloop loop (the engine's own)."""
    from engine.aio import new_event_loop

    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
