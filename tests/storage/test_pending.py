"""PendingRequests: durable until done, held by one process at a time, duplicates refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import PendingError, PendingRequests

DIRECTORY = ".commitment"


def test_add_claim_done(tmp_path: Path) -> None:
    log = PendingRequests(tmp_path, DIRECTORY)
    assert log.keys() == [] and log.claim() == []
    entry = log.add("1.2.3", b"payload")
    assert entry is not None and entry.held
    assert (tmp_path / DIRECTORY / "1.2.3").read_bytes() == b"payload"
    assert log.keys() == ["1.2.3"]
    assert log.claim() == []  # held by its writer
    entry.release()
    (claimed,) = log.claim()
    assert (claimed.key, claimed.payload) == ("1.2.3", b"payload")
    assert log.claim() == []  # held by the claimer now
    claimed.done()
    assert log.keys() == [] and not claimed.held
    claimed.done()  # twice is harmless


def test_a_duplicate_key_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    log = PendingRequests(tmp_path, DIRECTORY)
    first = log.add("1.2.3", b"one")
    assert log.add("1.2.3", b"two") is None
    assert sorted(os.listdir(tmp_path / DIRECTORY)) == ["1.2.3"]
    assert first is not None
    first.done()
    again = log.add("1.2.3", b"three")  # answered: the key may be used again
    assert again is not None and again.payload == b"three"
    again.release()


def test_set_aside_is_never_claimed_again(tmp_path: Path) -> None:
    log = PendingRequests(tmp_path, DIRECTORY)
    entry = log.add("9.9", b"garbage")
    assert entry is not None
    entry.set_aside()
    assert log.claim() == [] and log.keys() == []
    assert (tmp_path / DIRECTORY / "9.9.failed").read_bytes() == b"garbage"


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "../x", "x" * 200, "1.2.tmp", "1.2.failed", "a b"])
def test_keys_that_are_not_file_names_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        PendingRequests(tmp_path, DIRECTORY).add(key, b"")


def test_a_lock_held_by_another_process_keeps_the_entry_from_us_until_it_dies(tmp_path: Path) -> None:
    log = PendingRequests(tmp_path, DIRECTORY)
    entry = log.add("1.2.3", b"x")
    assert entry is not None
    entry.release()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from storage import PendingRequests\n"
         f"e = PendingRequests({str(tmp_path)!r}, {DIRECTORY!r}).claim()\n"
         "print(len(e), flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        assert log.claim() == []
    finally:
        holder.kill()
        holder.wait()
    (claimed,) = log.claim()  # the holder died: its lock went with it
    claimed.done()


def test_abandoned_temporary_files_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    log = PendingRequests(tmp_path, DIRECTORY)
    (tmp_path / DIRECTORY).mkdir()
    old = tmp_path / DIRECTORY / ".1.2.3.abcd.tmp"
    fresh = tmp_path / DIRECTORY / ".1.2.4.abcd.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert log.claim() == []
    assert not old.exists() and fresh.exists()


def test_write_failures_are_pending_errors(tmp_path: Path) -> None:
    (tmp_path / DIRECTORY).write_text("not a directory")
    with pytest.raises(PendingError):
        PendingRequests(tmp_path, DIRECTORY).add("1.2", b"x")
