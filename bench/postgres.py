"""A throw-away PostgreSQL server on 127.0.0.1, for the tests and the benchmarks.

Theory of operation: :class:`TemporaryPostgres` runs Debian's PostgreSQL binaries
(``/usr/lib/postgresql/<version>/bin``, or ``initdb`` and ``postgres`` on the PATH) on a
data directory of its own under a fresh temporary folder: ``initdb`` once, then
``postgres`` in its own process group (:mod:`bench.procs`) listening on 127.0.0.1 at an
ephemeral port and on a Unix socket in that folder, with trust authentication for the
one database user it creates. PostgreSQL refuses to run as root; as root the folder is
given to an unprivileged account (``nobody``, or the one named) and the programs run as
it through ``setpriv``, which execs them (so a signal reaches ``postgres`` itself). :meth:`stop` shuts it down fast and keeps the data;
:meth:`start` runs it again on the same port; :meth:`destroy` stops it and removes the
folder. Nothing here is a system service: no unit, no init script, no ``pg_ctlcluster``.

A server that cannot start raises :class:`PostgresError` with the reason (its log's
tail): callers fail with it, never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.procs import ProcessGroup

__all__ = ["PostgresError", "TemporaryPostgres", "postgres_bin", "free_port"]

#: Seconds for ``initdb`` (a few on a busy 2-CPU box) and for the server to accept.
_INITDB_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
_POLL_S = 0.05
#: Preferred major versions, newest first, when several are installed.
_VERSIONS = ("17", "16", "15", "14", "13")


class PostgresError(Exception):
    """The temporary server could not be set up or started; the message says why."""


def postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (Debian's layout first)."""
    for version in _VERSIONS:
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            return path
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.isfile(os.path.join(path, "postgres")):
            return Path(path)
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise PostgresError("PostgreSQL is not installed (apt-get install postgresql-15)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _locale() -> str:
    """A UTF-8 locale with linguistic collation when there is one (the catalog must not
    depend on the database's collation), else C.UTF-8."""
    try:
        names = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        names = []
    for wanted in ("en_US.utf8", "en_US.UTF-8", "C.utf8", "C.UTF-8"):
        if wanted in names:
            return wanted
    return "C"


class TemporaryPostgres:
    """One PostgreSQL server for the life of a test session or a benchmark (module doc).

    ``fsync`` False (the default) trades durability for speed: right for tests, whose
    data dies with the folder. ``run_as``: the account to run as when started by root.
    """

    def __init__(self, *, user: str = "scpfleet", database: str = "scpfleet", fsync: bool = False,
                 run_as: str = "nobody", port: int = 0, folder: str | os.PathLike[str] | None = None) -> None:
        self.bin = postgres_bin()
        self.user = user
        self.database = database
        self.fsync = fsync
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="scpfleet-pg-"))
        self.data = self.folder / "data"
        self.socket_dir = self.folder / "run"
        self.log_path = self.folder / "postgres.log"
        self.group: ProcessGroup | None = None
        self._account = None
        if os.geteuid() == 0:
            try:
                self._account = pwd.getpwnam(run_as)
            except KeyError:
                raise PostgresError(f"no account {run_as!r} to run PostgreSQL as (it refuses root)") from None

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the default database."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    # -- running ---------------------------------------------------------------------------

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._account is None:
            return argv
        account = self._account
        return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                "--reset-env", *argv]

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own(self.folder)
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        argv = self._as_owner([
            str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
            "-E", "UTF8", f"--locale={_locale()}", "--no-sync",
        ])
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_INITDB_TIMEOUT_S,
                                  cwd=self.folder, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresError(f"initdb failed: {exc}") from None
        if done.returncode != 0:
            raise PostgresError(f"initdb failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")

    def start(self) -> TemporaryPostgres:
        """Start the server (initialising the folder the first time); wait until it takes
        connections. Raises :class:`PostgresError`."""
        if self.group is not None and self.group.poll() is None:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
            created = True
        else:
            created = False
        argv = self._as_owner([
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.socket_dir), "-c", f"listen_addresses={self.host}",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", f"synchronous_commit={'on' if self.fsync else 'off'}",
            "-c", f"full_page_writes={'on' if self.fsync else 'off'}",
            "-c", "max_connections=200", "-c", "shared_buffers=64MB",
        ])
        log = open(self.log_path, "ab")
        try:
            self.group = ProcessGroup(argv, stdout=log, stderr=log, cwd=self.folder)
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._accepting():
            if self.group.poll() is not None:
                raise PostgresError(f"postgres exited with {self.group.poll()}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.group.kill()
                raise PostgresError(f"postgres not accepting connections after {_START_TIMEOUT_S:.0f} s: "
                                    f"{self.log_tail()}")
            time.sleep(_POLL_S)
        if created:
            self._create_database(self.database)
        return self

    def _accepting(self) -> bool:
        ready = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                                "-U", self.user, "-d", "postgres"], capture_output=True, timeout=10)
        return ready.returncode == 0

    def _create_database(self, name: str) -> None:
        done = subprocess.run([str(self.bin / "createdb"), "-h", self.host, "-p", str(self.port),
                               "-U", self.user, name], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PostgresError(f"createdb {name} failed: {done.stderr.strip()[-400:]}")

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._create_database(name)
        return self.url_of(name)

    def log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.group is not None and self.group.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, nothing is lost that was committed)."""
        if self.group is None:
            return
        self.group.stop(signal.SIGINT, grace=_STOP_TIMEOUT_S)
        self.group = None

    def destroy(self) -> None:
        """Stop and delete everything, whatever state it is in."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
