"""The storage root before any child starts: its lock, and bringing it back in line.

Theory of operation: a node owns its storage root through ``<root>/.lock``
(:meth:`RootStartup.lock`, held by the supervisor and inherited by every child, so it
is held while any process of the node lives; a second node waits for the previous one's
processes to go, then gives up in one line). :meth:`RootStartup.recover` then makes the
root and its index agree before anything new is stored: temporary files of a crashed run
are removed, an index file the catalog cannot even open is set aside (and rebuilt from
the journals and the files), every journal segment is replayed and the finished ones
retired, files a crash renamed but never journalled are indexed, and lock files whose
segment is gone are removed. Replay and recovery decide every record against the files
(``storage/_integrity.py``). With an index shared by a cluster, an unreachable database
does not keep the node from starting: recovery is tried a few times and otherwise left
to the indexers and the next flush.

It never binds sockets or starts processes; the supervisor calls it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import Any

from storage import (
    CatalogCorrupt,
    CatalogError,
    CatalogUnavailable,
    FileCheck,
    journal_dir,
    open_catalog,
    redact_url,
    replay,
    retire,
    sweep_temp,
)

from .config import NodeConfig
from .recovery import reconcile, unclean_since

__all__ = ["RootStartup", "StartupError"]

log = logging.getLogger("scpfleet.supervisor")

# How long a new node waits for the previous one's processes to release the storage
# root (a stopping node drains for drain-timeout).
_LOCK_WAIT_S = 30.0
# A shared index that cannot be reached at start is tried this many times, this long
# apart, before the node starts without it (its indexers catch up from the journals).
_INDEX_START_TRIES = 3
_INDEX_START_PAUSE_S = 2.0


class StartupError(Exception):
    """The node cannot start; the message is one line."""


class RootStartup:
    """The lock and the recovery of one node's storage root (see the module doc)."""

    def __init__(self, config: NodeConfig, files: FileCheck, *, lock_wait_s: float = _LOCK_WAIT_S,
                 index_pause_s: float = _INDEX_START_PAUSE_S) -> None:
        self.config = config
        self.root = config.storage
        self.files = files
        self.lock_wait_s = lock_wait_s
        self.index_pause_s = index_pause_s

    def open_index(self) -> Any:
        return open_catalog(self.config.index_path, node=self.config.node)

    # -- the lock ---------------------------------------------------------------------

    def lock(self) -> int:
        """Take ``<root>/.lock`` (creating the root), waiting up to the lock wait for a
        previous node's processes; the descriptor holds it. Raises StartupError."""
        try:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StartupError(f"storage {self.root}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.lock_wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StartupError(f"storage {self.root} is in use by another scpfleet node") from None
                if not told:
                    log.info("waiting for the processes of a previous node using %s to exit", self.root)
                    told = True
                time.sleep(0.1)

    # -- recovery ---------------------------------------------------------------------

    def recover(self) -> float | None:
        """Bring the root and its index in line (module doc). Returns the bound of the
        renames still to reconcile when the index could not be reached (a shared index
        that stayed down), else None. Raises StartupError."""
        try:
            swept = sweep_temp(self.root)
            since = unclean_since(self.root)
            if self.set_aside_corrupt_index():
                since = 0.0  # rebuild: index every instance file on disk
            replayed, retired, reconciled, pending = self.recover_index(since)
            self.remove_stale_locks()
        except (OSError, ValueError) as exc:
            raise StartupError(f"storage {self.root}: recovery failed: {exc}") from None
        except Exception as exc:  # CatalogError and the journal's errors
            raise StartupError(
                f"index {redact_url(self.config.index_path)}: recovery failed: {exc}") from None
        if swept or replayed or retired or reconciled:
            log.info("recovered %s: %d temporary file(s) removed, %d record(s) replayed into the index, "
                     "%d journal segment(s) retired, %d unjournalled file(s) indexed",
                     self.root, swept, replayed, retired, reconciled)
        return pending

    def recover_index(self, since: float | None) -> tuple[int, int, int, float | None]:
        """Replay the journals into the index, retire the finished segments, reconcile
        after an unclean stop: (records replayed, segments retired, files indexed, the
        bound still to reconcile). A shared index that stays unreachable over
        :data:`_INDEX_START_TRIES` tries is left to the indexers; other catalog errors
        raise."""
        tries = _INDEX_START_TRIES if self.config.index_shared else 1
        where = redact_url(self.config.index_path)
        for attempt in range(1, tries + 1):
            try:
                with self.open_index() as index:
                    replayed = replay(self.root, index, files=self.files)
                    retired = retire(self.root, index, ())
                    reconciled = (reconcile(self.root, index, since, files=self.files,
                                            digest_algorithm=self.config.digest)
                                  if since is not None else 0)
                return replayed, len(retired), reconciled, None
            except CatalogUnavailable as exc:
                if tries == 1:
                    raise
                if attempt < tries:
                    log.warning("index %s unreachable (%s); trying again in %.0f s (%d of %d)",
                                where, exc, self.index_pause_s, attempt, tries)
                    time.sleep(self.index_pause_s)
                else:
                    log.warning("index %s unreachable (%s): serving without it; the indexers carry the "
                                "journals into it once it is back", where, exc)
        return 0, 0, 0, since  # reconciled at the stop (or the next start)

    def set_aside_corrupt_index(self) -> bool:
        """Move an index file the catalog does not open as one (garbage, a destroyed
        header: :class:`storage.CatalogCorrupt`) to ``<index>.corrupt-<timestamp>`` so
        recovery rebuilds it from the journals and the files on disk; True when it did.
        Other errors (locked, unreadable, damage deeper in a valid file) are left to
        fail recovery with their own one-line message."""
        path = self.config.index_path
        if self.config.index_shared or not os.path.exists(path):
            return False
        try:
            open_catalog(path).close()
            return False
        except CatalogCorrupt as exc:
            reason = exc
        except CatalogError:
            return False
        aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):
            try:
                os.replace(path + suffix, aside + suffix)
            except FileNotFoundError:
                pass
        log.warning("index %s is corrupt (%s): moved to %s; rebuilding it from the journals and the "
                    "files in %s", path, reason, aside, self.root)
        return True

    def remove_stale_locks(self) -> None:
        """Remove segment lock files whose segment is gone (retired by a run that died
        before removing the lock)."""
        directory = journal_dir(self.root)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        logs = {n[:-4] for n in names if n.endswith(".log")}
        for name in names:
            if name.endswith(".lock") and name[:-5] not in logs:
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
