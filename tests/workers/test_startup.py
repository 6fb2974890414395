"""The storage root's lock and recovery before a node starts (workers/startup.py),
without spawning anything.

Theory of operation: a root is left as a crashed run leaves it -- a temporary file, a
journal segment not yet indexed, a file renamed but never journalled, a lock file whose
segment is gone, or an index file that is not a database -- and
:class:`RootStartup` must bring root and index back in line; a root whose lock another
process holds must give up in one line.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from storage import FileCheck, JournalWriter, SqliteCatalog
from tests.workers.test_recovery import publish, uid
from workers.config import load_config
from workers.startup import RootStartup, StartupError


def startup(root: Path, **kwargs: float) -> RootStartup:
    config = load_config(None, {"storage": str(root)})
    return RootStartup(config, FileCheck(str(root)), **kwargs)


def test_a_crashed_root_is_brought_back_in_line(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    journal = JournalWriter(root, "w0-1-1")
    journalled = publish(root, 1, journal=journal)
    journal.close()
    unjournalled = publish(root, 2)  # renamed, then the worker died
    (root / ".tmp" / "leftover.part").write_bytes(b"half an instance")
    (root / ".journal" / "w9-9-9.lock").write_bytes(b"")  # its segment is long gone
    assert startup(root).recover() is None
    assert list((root / ".tmp").iterdir()) == []
    assert not (root / ".journal" / "w9-9-9.lock").exists()
    assert not (root / ".journal" / "w0-1-1.log").exists()  # replayed and retired
    with SqliteCatalog(root / "index.sqlite") as catalog:
        assert catalog.get(uid(1)) == journalled
        assert catalog.get(uid(2)).generation == unjournalled.generation


def test_an_index_that_is_no_database_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    kept = publish(root, 1)
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    startup(root).recover()
    assert len(list(root.glob("index.sqlite.corrupt-*"))) == 1
    with SqliteCatalog(root / "index.sqlite") as catalog:
        assert catalog.get(uid(1)).path == kept.path  # rebuilt from the file on disk


def test_the_lock_is_given_up_in_one_line_when_held(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    first = startup(root)
    fd = first.lock()
    try:
        started = time.monotonic()
        with pytest.raises(StartupError, match="in use by another scpfleet node") as info:
            startup(root, lock_wait_s=0.3).lock()
        assert time.monotonic() - started >= 0.3
        assert "\n" not in str(info.value)
    finally:
        os.close(fd)
    second = startup(root).lock()  # released: the next node takes it at once
    try:
        with pytest.raises(BlockingIOError):
            probe = os.open(root / ".lock", os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
    finally:
        os.close(second)


def test_recovery_failure_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    (root / ".journal").write_bytes(b"a file where the journal directory belongs")
    with pytest.raises(StartupError) as info:
        startup(root).recover()
    assert "recovery failed" in str(info.value) and "\n" not in str(info.value)
