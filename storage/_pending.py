"""Durable requests awaiting an answer: one small file each, under the storage root.

Theory of operation: a service that acknowledges a request now and answers it later
(Storage Commitment: the N-ACTION-RSP now, the N-EVENT-REPORT once the instances are
checked) must not lose it in a crash in between. :class:`PendingRequests` keeps each
such request as one file ``<root>/<directory>/<key>`` holding the caller's opaque
payload, written and synced (file, then directory) before :meth:`PendingRequests.add`
returns, so the caller acknowledges only what is on disk; :meth:`PendingEntry.done`
removes it once answered.

Every entry is ``flock``-ed while someone holds it: from its creation by ``add`` until
``done`` or ``release``, or by whoever :meth:`PendingRequests.claim`-ed it. A process
that dies releases its locks, so "the lock can be taken" means "nobody is answering
this request": several processes sharing one root can each sweep the directory
(``claim``) without answering anything twice. A file is first written under a hidden
temporary name and then linked to its key, which fails when the key exists (a
duplicate: ``add`` returns None); temporary files left by a crash were never
acknowledged and are removed by ``claim``.

This module knows nothing of what the payload means. Every method blocks on the file
system (fsync): call it from a worker thread when on an event loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import time

from ._part10 import StorageError

__all__ = ["PendingRequests", "PendingEntry", "PendingError"]

# A key names a file: letters, digits, dot, dash and underscore, not hidden; 128
# characters hold any UID (64) with room for a suffix.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TEMP_SUFFIX = ".tmp"
_SET_ASIDE_SUFFIX = ".failed"
# A temporary file this old whose lock is free belongs to a writer that died (a writer
# locks it microseconds after creating it).
_ABANDONED_AFTER_S = 60.0
# An entry is a few KiB (one reference per instance, ~130 bytes); this bounds what a
# damaged or foreign file in the directory makes us read.
_MAX_PAYLOAD = 64 << 20


class PendingError(StorageError):
    """A pending request could not be written, read or removed."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingEntry:
    """One pending request, locked by its holder: its ``key`` and ``payload``."""

    __slots__ = ("owner", "key", "payload", "_fd")

    def __init__(self, owner: PendingRequests, key: str, payload: bytes, fd: int) -> None:
        self.owner = owner
        self.key = key
        self.payload = payload
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def done(self) -> None:
        """The request is answered: remove it (durably) and let go of it."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.owner.path_of(self.key))
            _fsync_dir(self.owner.directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PendingError(f"cannot remove pending request {self.key}: {exc}") from exc
        finally:
            self.release()

    def set_aside(self) -> None:
        """Keep the request's file for a person to look at (``<key>.failed``), never to
        be claimed again: for a payload that cannot be understood."""
        if self._fd < 0:
            return
        try:
            os.rename(self.owner.path_of(self.key), self.owner.path_of(self.key) + _SET_ASIDE_SUFFIX)
            _fsync_dir(self.owner.directory)
        except OSError as exc:
            raise PendingError(f"cannot set aside pending request {self.key}: {exc}") from exc
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the request without answering it: another sweep may claim it."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # closing the descriptor drops its lock

    def __repr__(self) -> str:
        return f"<PendingEntry {self.key} {len(self.payload)} bytes{' held' if self.held else ''}>"


class PendingRequests:
    """The pending requests under ``<root>/<directory>`` (created when first needed)."""

    def __init__(self, root: str | os.PathLike[str], directory: str, *, file_mode: int = 0o640,
                 dir_mode: int = 0o750) -> None:
        if not _KEY.fullmatch(directory.lstrip(".")) or "/" in directory:
            raise ValueError(f"not a directory name: {directory!r}")
        self.directory = os.path.join(os.fspath(root), directory)
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def path_of(self, key: str) -> str:
        if not _KEY.fullmatch(key) or key.endswith((_TEMP_SUFFIX, _SET_ASIDE_SUFFIX)):
            raise ValueError(f"not a pending request key: {key!r}")
        return os.path.join(self.directory, key)

    def add(self, key: str, payload: bytes) -> PendingEntry | None:
        """Write ``payload`` durably as request ``key``, held by the caller; None when a
        request with that key is already pending (nothing is written)."""
        final = self.path_of(key)
        if len(payload) > _MAX_PAYLOAD:
            raise PendingError(f"pending request {key} is {len(payload)} bytes, over {_MAX_PAYLOAD}")
        temp = os.path.join(self.directory, f".{key}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        fd = -1
        try:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
            except FileNotFoundError:
                os.makedirs(self.directory, self.dir_mode, exist_ok=True)
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            try:
                os.link(temp, final)
            except FileExistsError:
                os.unlink(temp)
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # No hard links here: the existence check and the rename are two steps.
                if os.path.lexists(final):
                    os.unlink(temp)
                    os.close(fd)
                    return None
                os.rename(temp, final)
            else:
                os.unlink(temp)
            _fsync_dir(self.directory)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
                try:
                    os.unlink(temp)
                except OSError:
                    pass
            raise PendingError(f"cannot write pending request {key}: {exc}") from exc
        return PendingEntry(self, key, bytes(payload), fd)

    def keys(self) -> list[str]:
        """Every pending request's key, held or not, sorted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _KEY.fullmatch(n) and not n.endswith((_TEMP_SUFFIX, _SET_ASIDE_SUFFIX)))

    def claim(self) -> list[PendingEntry]:
        """Every pending request nobody holds, now held by the caller (who must
        ``done``, ``set_aside`` or ``release`` each). Removes temporary files of
        writers that died before acknowledging anything."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        entries = []
        for name in sorted(names):
            path = os.path.join(self.directory, name)
            if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                self._remove_abandoned(path)
                continue
            if not _KEY.fullmatch(name) or name.endswith(_SET_ASIDE_SUFFIX):
                continue
            entry = self._claim(name, path)
            if entry is not None:
                entries.append(entry)
        return entries

    def _claim(self, key: str, path: str) -> PendingEntry | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PendingError(f"cannot open pending request {key}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None  # someone is answering it
            st = os.fstat(fd)
            if st.st_nlink == 0:  # answered and removed between our open and our lock
                os.close(fd)
                return None
            if st.st_size > _MAX_PAYLOAD:
                os.close(fd)
                raise PendingError(f"pending request {key} is {st.st_size} bytes, over {_MAX_PAYLOAD}")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError as exc:
            os.close(fd)
            raise PendingError(f"cannot read pending request {key}: {exc}") from exc
        return PendingEntry(self, key, b"".join(chunks), fd)

    @staticmethod
    def _remove_abandoned(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if time.time() - os.fstat(fd).st_mtime < _ABANDONED_AFTER_S:
                os.close(fd)
                return  # perhaps created a moment ago, its writer about to lock it
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # still being written
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
