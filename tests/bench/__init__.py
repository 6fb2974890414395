"""Helpers for the tests of ``scpfleet echo|load|send`` (bench/).

Theory of operation: the commands under test run as subprocesses (``python -m bench.cli``),
exactly as a user runs them; the SCP they talk to is either DCMTK storescp
(tests.peers) or :class:`EngineServer`, our own engine's
:class:`engine.aio.AssociationServer` on a private loop thread in the test process, on an
ephemeral 127.0.0.1 port, with an ``EVT_C_STORE`` handler that records what arrived and
answers the status a test chose. Everything started here is stopped by ``__exit__``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine import aio, evt, sop_class
from engine._acse import AcceptorPolicy
from engine._loop import LoopThread
from engine.presentation import build_context

__all__ = ["REPO", "EngineServer", "run_cli", "one_line_error", "load_json"]

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: Transfer syntaxes the engine server accepts for every storage SOP class.
SERVER_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
]
#: Seconds a CLI run may take before the test fails (a hang must not stall the suite).
CLI_TIMEOUT_S = 60


def run_cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m bench.cli ARGS`` from the repository root; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Assert a usage error: exit status 2, one stderr line, no traceback; return it."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in lines[0]
    return lines[0]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


#: ``status`` answers for EngineServer: abort the association instead of answering; or
#: answer nothing for SILENT_S seconds (longer than the sender's timeout in the tests).
ABORT = -1
SILENT = -2
SILENT_S = 3.0


class EngineServer:
    """Our engine as a Storage SCP for tests, with a chosen answer per C-STORE.

    status: an int for every C-STORE, or ``status(n, sop_instance_uid) -> int`` where n
      counts this instance's arrivals from 1 (to fail a first attempt, say); ABORT or
      SILENT instead of a status abort the association or answer nothing.
    admission: optional ``() -> bool``, replacing the association count limit.
    """

    def __init__(
        self,
        *,
        status: int | Callable[[int, str], int] = 0x0000,
        ae_title: str = "ANY-SCP",
        require_called_aet: bool = False,
        maximum_associations: int | None = None,
        admission: Callable[[], bool] | None = None,
        syntaxes: Sequence[str] = SERVER_SYNTAXES,
        keep_data: bool = False,
    ) -> None:
        self.status = status
        self.keep_data = keep_data
        self.received: list[str] = []
        self.data: dict[str, bytes] = {}
        self.attempts: dict[str, int] = {}
        self.refused = 0
        self._lock = threading.Lock()
        contexts = [build_context(uid, list(syntaxes)) for uid in sop_class.STORAGE_SOP_CLASSES]
        contexts.append(build_context(sop_class.VerificationSOPClass))
        self.policy = AcceptorPolicy(
            ae_title=ae_title.encode().ljust(16),
            supported_contexts=contexts,
            maximum_pdu_size=0,
            require_called_aet=require_called_aet,
        )
        self.maximum_associations = maximum_associations
        self.admission = admission
        self.runner: LoopThread | None = None
        self.server: aio.AssociationServer | None = None
        self.port = 0

    def _on_store(self, event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        with self._lock:
            n = self.attempts[uid] = self.attempts.get(uid, 0) + 1
            answer = self.status(n, uid) if callable(self.status) else self.status
            if answer == ABORT:
                event.assoc.abort()
                return 0x0000  # never sent: the association is gone
            if answer == SILENT:
                # The server's loop does nothing meanwhile: no response, no reading.
                time.sleep(SILENT_S)
                return 0x0000
            if answer == 0x0000 or answer >> 12 == 0xB:
                self.received.append(uid)
                if self.keep_data:
                    self.data[uid] = event.encoded_dataset()
            else:
                self.refused += 1
        return answer

    def __enter__(self) -> "EngineServer":
        self.runner = LoopThread(name="test-engine-scp")
        config = aio.ServerConfig(
            policy=self.policy,
            handlers=evt.normalize_handlers([(evt.EVT_C_STORE, self._on_store)]),
            acse_timeout=10,
            dimse_timeout=10,
            network_timeout=30,
            maximum_associations=self.maximum_associations,
            admission=self.admission,
        )

        async def start() -> aio.AssociationServer:
            server = aio.AssociationServer(config, loop=self.runner.loop)
            await server.start(HOST, 0)
            return server

        self.server = self.runner.run(start(), timeout=10)
        self.port = self.server.address[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None and self.server is not None:
            self.runner.run(self.server.close(grace=1.0), timeout=10)
        if self.runner is not None:
            self.runner.stop()
