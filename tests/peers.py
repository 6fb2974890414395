"""Real DICOM peers run as subprocesses: DCMTK storescp/storescu/echoscu and pynetdicom.

Theory of operation: this module owns starting, waiting for and reaping the reference peers
the interoperability tests talk to. Every peer is a child process in its own session
(process group: bench.procs.ProcessGroup), with stdout/stderr going to files under the
test's log directory; every wait has a hard deadline; and every process is registered until
reaped, so a fixture finalizer (`reap_all`) or interpreter exit kills whatever a failing
test left behind. Where DCMTK's tools are and the storescu profile come from bench.dcmtk.
Results carry their logs (`PeerResult.describe`) for assertion messages.

It never mocks a peer, never talks to anything but 127.0.0.1, and knows nothing of scpfleet.

DCMTK 3.6.7 behaviour this relies on (checked against the installed tools and source):
- Nagle's algorithm is *on* by default in this build: DCMTK disables it only when the
  environment has TCP_NODELAY=1 (dcmnet DUL reads getenv("TCP_NODELAY")). Without it,
  small PDUs stall on delayed ACKs, so every DCMTK peer here gets TCP_NODELAY=1.
- storescu proposes only its *preferred* transfer syntax (-x=, i.e. Explicit VR LE) plus the
  uncompressed fallbacks, then converts each file to whatever was accepted: a deflated,
  big endian, implicit or JPEG file would not go out as stored. `run_storescu` therefore
  (by default) writes an association profile (-xf, bench.dcmtk.storescu_exact_profile)
  with one presentation context per (SOP class, transfer syntax) pair found in the files'
  meta, so storescu's exact-match context lookup sends every file in its own syntax,
  unconverted.
- storescp +B (--bit-preserving) writes the received data set bytes verbatim behind a new
  meta header, +xa accepts every transfer syntax it knows; -od needs an existing directory.
  storescp has no bind-address option: it listens on all interfaces, on a port chosen by
  `free_port` (it cannot bind port 0 and report it).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from bench.dcmtk import dcmtk_tool, storescu_exact_profile
from bench.procs import ProcessGroup, Registry

__all__ = [
    "HOST",
    "PeerError",
    "PeerResult",
    "free_port",
    "dcmtk_available",
    "require_dcmtk",
    "DcmtkStorescp",
    "run_storescu",
    "run_storescu_parallel",
    "storescu_exact_profile",
    "run_echoscu",
    "run_findscu",
    "run_getscu",
    "run_movescu",
    "PynetdicomStorescp",
    "run_pynetdicom_storescu",
    "run_pynetdicom_echoscu",
    "reap_all",
    "live_processes",
]

HOST = "127.0.0.1"
DCMTK_TOOLS = ("storescp", "storescu", "echoscu")
PEER_SCRIPT = Path(__file__).with_name("_pynetdicom_peer.py")
_TERM_GRACE_S = 5.0  # SIGTERM to SIGKILL: DCMTK and pynetdicom exit in milliseconds on TERM
_POLL_S = 0.02  # readiness polling step while a peer starts
_LOG_TAIL = 4000  # characters of each stream quoted in failure messages

_LIVE = Registry()
_SEQ = itertools.count(1)
_fallback_log_dir: Path | None = None


class PeerError(AssertionError):
    """A peer failed to start, timed out, or reported failure; the message holds its logs."""


class PeerResult(subprocess.CompletedProcess):
    """A finished peer run: `args`, `returncode`, `stdout`, `stderr` (text, read from the
    log files), the `log_paths`, and for pynetdicom runs the parsed JSON `statuses`."""

    def __init__(
        self,
        args: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        name: str,
        log_paths: tuple[Path, Path],
        statuses: list[dict] | None = None,
    ) -> None:
        super().__init__(list(args), returncode, stdout, stderr)
        self.name = name
        self.log_paths = log_paths
        self.statuses = statuses

    @property
    def ok(self) -> bool:
        """Exit status 0 and, where statuses were reported, every one 0x0000."""
        if self.returncode != 0:
            return False
        return self.statuses is None or all(s.get("status") == 0 for s in self.statuses)

    def describe(self) -> str:
        return _describe(self.name, self.args, self.returncode, self.stdout, self.stderr)

    def check_ok(self) -> PeerResult:
        """Return self if `ok`, else raise PeerError with the logs."""
        if not self.ok:
            raise PeerError(f"{self.name} failed\n{self.describe()}")
        return self


def _describe(name: str, argv: Sequence[str], rc: int | None, out: str, err: str) -> str:
    def tail(s: str) -> str:
        return s if len(s) <= _LOG_TAIL else "...\n" + s[-_LOG_TAIL:]

    return (
        f"--- {name}: {' '.join(map(str, argv))}\n--- exit status: {rc}\n"
        f"--- stdout:\n{tail(out)}\n--- stderr:\n{tail(err)}"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind port 0, read it, close). Only for peers
    that cannot bind port 0 themselves; another process may take it before they bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def dcmtk_available() -> bool:
    """True if DCMTK's storescp, storescu and echoscu are all on PATH."""
    return all(dcmtk_tool(tool) for tool in DCMTK_TOOLS)


def require_dcmtk() -> None:
    """Skip the calling test loudly if the DCMTK tools are missing; in CI, fail instead."""
    if dcmtk_available():
        return
    missing = [t for t in DCMTK_TOOLS if not dcmtk_tool(t)]
    msg = (
        f"DCMTK NOT INSTALLED ({', '.join(missing)} missing from PATH): interoperability "
        "against the reference peer was NOT tested. Install it: apt-get install dcmtk "
        "(scripts/test.sh does)."
    )
    if os.environ.get("CI") == "true" or os.environ.get("SCPFLEET_CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def live_processes() -> list[subprocess.Popen]:
    """Peer processes started here and not yet reaped."""
    return [group.popen for group in _LIVE.live()]


def reap_all(keep: Iterable[subprocess.Popen] = ()) -> None:
    """Kill and reap every registered peer not in `keep` (fixture finalizers, exit): SIGTERM
    to its process group, SIGKILL after a grace period, then SIGKILL whatever is left of
    the group (children of storescp --fork)."""
    spare = set(keep)
    _LIVE.stop_all(keep=[g for g in _LIVE if g.popen in spare], grace=_TERM_GRACE_S)


def _cleanup_at_exit() -> None:
    reap_all()
    if _fallback_log_dir is not None:
        shutil.rmtree(_fallback_log_dir, ignore_errors=True)


atexit.register(_cleanup_at_exit)


def _log_dir(log_dir: str | os.PathLike[str] | None) -> Path:
    global _fallback_log_dir
    if log_dir is None:
        if _fallback_log_dir is None:
            _fallback_log_dir = Path(tempfile.mkdtemp(prefix="scpfleet-peers-"))
        return _fallback_log_dir
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _env(tcp_nodelay: bool) -> dict[str, str]:
    env = dict(os.environ)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def _read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class _Proc:
    """One peer subprocess, its log files and its deadline handling."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: str | os.PathLike[str] | None,
        env: dict[str, str] | None = None,
    ) -> None:
        n = next(_SEQ)
        directory = _log_dir(log_dir)
        self.name = name
        self.argv = [str(a) for a in argv]
        self.out_path = directory / f"{name}-{n}.out"
        self.err_path = directory / f"{name}-{n}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.group = ProcessGroup(self.argv, stdout=out, stderr=err, env=env, registry=_LIVE)
        self.popen = self.group.popen

    def output(self) -> tuple[str, str]:
        return _read_log(self.out_path), _read_log(self.err_path)

    def describe(self) -> str:
        return _describe(self.name, self.argv, self.popen.poll(), *self.output())

    def kill(self) -> None:
        """SIGTERM the peer's group, SIGKILL it after a grace period, reap the leader, and
        SIGKILL whatever is left of the group."""
        self.group.stop(grace=_TERM_GRACE_S, group=True)

    def finish(self, deadline: float, timeout: float) -> PeerResult:
        """Wait until `deadline` (monotonic), kill on overrun, return the result."""
        try:
            rc = self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise PeerError(f"{self.name} timed out after {timeout} s\n{self.describe()}")
        self.kill()  # reaps the group (no-op for a peer that forked nothing)
        out, err = self.output()
        return PeerResult(
            self.argv, rc, out, err, name=self.name, log_paths=(self.out_path, self.err_path)
        )


def _require_tool(tool: str) -> str:
    path = dcmtk_tool(tool)
    if path is None:
        require_dcmtk()
        raise PeerError(f"{tool} not found on PATH")
    return path


# --------------------------------------------------------------------------------- storescu


def _storescu_proc(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    *,
    aec: str,
    aet: str,
    extra_args: Sequence[str],
    env_nodelay: bool,
    exact_ts: bool,
    log_dir: str | os.PathLike[str] | None,
) -> _Proc:
    if not files:
        raise ValueError("no files to send")
    argv = [_require_tool("storescu"), "-aet", aet, "-aec", aec]
    if exact_ts:
        cfg = _log_dir(log_dir) / f"storescu-profile-{next(_SEQ)}.cfg"
        argv += ["-xf", str(cfg), storescu_exact_profile(files, cfg)]
    argv += [*extra_args, host, str(port), *map(str, files)]
    return _Proc("storescu", argv, log_dir=log_dir, env=_env(env_nodelay))


def run_storescu(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    *,
    aec: str = "ANY-SCP",
    aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 60,
    env_nodelay: bool = True,
    exact_ts: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """Send `files` with DCMTK storescu over one association and wait for it.

    exact_ts: propose exactly each file's (SOP class, transfer syntax) so every file goes out
      as stored (see module doc); False leaves storescu's own proposal, in which case pass
      e.g. -xd/-xy/-xb in `extra_args`. storescu halts at the first failed store unless
      "--no-halt" is in `extra_args`. Raises PeerError on timeout; check `.ok`/`.check_ok()`.
    """
    proc = _storescu_proc(
        host, port, files, aec=aec, aet=aet, extra_args=extra_args,
        env_nodelay=env_nodelay, exact_ts=exact_ts, log_dir=log_dir,
    )  # fmt: skip
    return proc.finish(time.monotonic() + timeout, timeout)


def run_storescu_parallel(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    n: int,
    *,
    aec: str = "ANY-SCP",
    aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120,
    env_nodelay: bool = True,
    exact_ts: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
) -> list[PeerResult]:
    """Run up to `n` storescu processes at once (file i goes to process i % n), each as
    `run_storescu`; wait for all against one deadline; return results in process order."""
    shares = [share for i in range(n) if (share := list(files[i::n]))]
    procs: list[_Proc] = []
    try:
        for share in shares:
            procs.append(
                _storescu_proc(
                    host, port, share, aec=aec, aet=aet, extra_args=extra_args,
                    env_nodelay=env_nodelay, exact_ts=exact_ts, log_dir=log_dir,
                )  # fmt: skip
            )
        deadline = time.monotonic() + timeout
        return [p.finish(deadline, timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def run_echoscu(
    host: str,
    port: int,
    *,
    aec: str = "ANY-SCP",
    aet: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 30,
    env_nodelay: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """One C-ECHO with DCMTK echoscu (PS3.7 9.1.5); returncode 0 means success."""
    argv = [_require_tool("echoscu"), "-aet", aet, "-aec", aec, *extra_args, host, str(port)]
    proc = _Proc("echoscu", argv, log_dir=log_dir, env=_env(env_nodelay))
    return proc.finish(time.monotonic() + timeout, timeout)


def _qr_scu(
    tool: str,
    host: str,
    port: int,
    keys: Sequence[str],
    *,
    model: str,
    aec: str,
    aet: str,
    extra_args: Sequence[str],
    timeout: float,
    log_dir: str | os.PathLike[str] | None,
) -> PeerResult:
    flag = {"patient": "-P", "study": "-S"}[model]
    argv = [_require_tool(tool), "-aet", aet, "-aec", aec, flag]
    for key in keys:
        argv += ["-k", key]
    argv += [*extra_args, host, str(port)]
    proc = _Proc(tool, argv, log_dir=log_dir, env=_env(True))
    return proc.finish(time.monotonic() + timeout, timeout)


def run_findscu(
    host: str,
    port: int,
    keys: Sequence[str],
    *,
    model: str = "study",
    aec: str = "ANY-SCP",
    aet: str = "FINDSCU",
    out_dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """One C-FIND with DCMTK findscu (``model`` "patient" or "study" root; ``keys`` as
    for ``-k``). With ``out_dir`` each response identifier is written there as
    rsp0001.dcm ... (-X). findscu's exit status is 0 even for a failure status: read
    its log (``Received Final Find Response``)."""
    extra = list(extra_args)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        extra += ["-X", "-od", str(out_dir)]
    return _qr_scu("findscu", host, port, keys, model=model, aec=aec, aet=aet,
                   extra_args=["-v", *extra], timeout=timeout, log_dir=log_dir)


def run_getscu(
    host: str,
    port: int,
    keys: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str = "study",
    aec: str = "ANY-SCP",
    aet: str = "GETSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """One C-GET with DCMTK getscu; the instances are written bit-preserving (+B) to
    ``out_dir`` (created)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return _qr_scu("getscu", host, port, keys, model=model, aec=aec, aet=aet,
                   extra_args=["-v", "+B", "-od", str(out_dir), *extra_args],
                   timeout=timeout, log_dir=log_dir)


def run_movescu(
    host: str,
    port: int,
    keys: Sequence[str],
    destination: str,
    *,
    model: str = "study",
    aec: str = "ANY-SCP",
    aet: str = "MOVESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """One C-MOVE with DCMTK movescu to ``destination`` (an AE the SCP knows)."""
    return _qr_scu("movescu", host, port, keys, model=model, aec=aec, aet=aet,
                   extra_args=["-v", "-aem", destination, *extra_args],
                   timeout=timeout, log_dir=log_dir)


# --------------------------------------------------------------------------------- SCPs


class _ScpBase:
    """Shared shape of a storage SCP peer: start/stop, context manager, received files."""

    name = "scp"
    host = HOST

    def __init__(self, out_dir: str | os.PathLike[str], log_dir, startup_timeout: float):
        self.out_dir = Path(out_dir)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: _Proc | None = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:
        """Terminate the SCP and everything it forked; idempotent."""
        if self._proc is not None:
            self._proc.kill()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.popen.poll()

    def logs(self) -> str:
        """Command line, exit status and log tails, for assertion messages."""
        return "(not started)" if self._proc is None else self._proc.describe()

    def received_files(self) -> list[Path]:
        """Complete received files in `out_dir` (no hidden or temporary entries), sorted."""
        if not self.out_dir.is_dir():
            return []
        return sorted(
            p for p in self.out_dir.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def wait_for_files(self, count: int, timeout: float = 10.0) -> list[Path]:
        """Wait until at least `count` files were received; PeerError (with logs) if not.
        storescp +B writes under the final name while receiving, so count after the SCU
        has finished (every C-STORE-RSP is sent only once its file is written)."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.received_files()
            if len(files) >= count:
                return files
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{self.name}: {len(files)} of {count} files after {timeout} s\n{self.logs()}"
                )
            time.sleep(_POLL_S)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class DcmtkStorescp(_ScpBase):
    """DCMTK storescp on 127.0.0.1:`port` (a `free_port`), writing to `out_dir`.

    Defaults: +B bit-preserving storage (data set bytes exactly as received), +xa accept every
    transfer syntax, -dhl no reverse DNS, TCP_NODELAY=1; `fork` adds --fork (one child per
    association; `stop` kills the whole process group), `promiscuous` adds -pm (accept
    unknown SOP classes), `max_pdu` sets -pdu. Files are named <modality>.<SOPInstanceUID>.
    Use as a context manager or start()/stop(); `port` is set once it accepts connections.
    """

    name = "storescp"

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        log_dir: str | os.PathLike[str] | None = None,
        aetitle: str = "STORESCP",
        fork: bool = False,
        bit_preserving: bool = True,
        accept_all: bool = True,
        promiscuous: bool = False,
        max_pdu: int | None = None,
        extra_args: Sequence[str] = (),
        tcp_nodelay: bool = True,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(out_dir, log_dir, startup_timeout)
        self.aetitle = aetitle
        self.options: list[str] = ["-aet", aetitle, "-od", str(self.out_dir), "-dhl"]
        if fork:
            self.options.append("--fork")
        if bit_preserving:
            self.options.append("+B")
        if accept_all:
            self.options.append("+xa")
        if promiscuous:
            self.options.append("-pm")
        if max_pdu is not None:
            self.options += ["-pdu", str(max_pdu)]
        self.options += list(extra_args)
        self.tcp_nodelay = tcp_nodelay

    def start(self) -> DcmtkStorescp:
        """Start storescp and wait until its port accepts connections (a bare connect and
        close, which storescp ignores silently). Retries on a lost port race."""
        if self.running:
            return self
        tool = _require_tool("storescp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3  # a new free_port() per attempt: another process may win the race
        for _ in range(attempts):
            port = free_port()
            proc = _Proc(
                "storescp", [tool, *self.options, str(port)],
                log_dir=self.log_dir, env=_env(self.tcp_nodelay),
            )  # fmt: skip
            self._proc = proc
            deadline = time.monotonic() + self.startup_timeout
            while proc.popen.poll() is None and time.monotonic() < deadline:
                if _accepts_connections(port):
                    self.port = port
                    return self
                time.sleep(_POLL_S)
            proc.kill()
            _, err = proc.output()
            if "address already in use" not in err.lower():
                raise PeerError(f"storescp did not start listening\n{proc.describe()}")
        raise PeerError(f"storescp lost the port race {attempts} times\n{self.logs()}")


class PynetdicomStorescp(_ScpBase):
    """pynetdicom 3 storage SCP (all storage SOP classes x all transfer syntaxes, plus
    Verification) in a subprocess bound to 127.0.0.1 port 0; `port` is read from its ready
    file. Stores bit-preserving as `out_dir`/<SOPInstanceUID>.dcm, each renamed into place
    when complete. Its stdout log has one JSON line per store."""

    name = "pynetdicom-scp"

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        log_dir: str | os.PathLike[str] | None = None,
        aetitle: str = "PYNETDICOM",
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(out_dir, log_dir, startup_timeout)
        self.aetitle = aetitle

    def start(self) -> PynetdicomStorescp:
        if self.running:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ready = _log_dir(self.log_dir) / f"pynetdicom-scp-{next(_SEQ)}.ready"
        # Numbering restarts in each process: never read another run's leftover file.
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable, str(PEER_SCRIPT), "scp", "--out", str(self.out_dir),
            "--ready-file", str(ready), "--aet", self.aetitle,
        ]  # fmt: skip
        proc = _Proc(self.name, argv, log_dir=self.log_dir)
        self._proc = proc
        deadline = time.monotonic() + self.startup_timeout
        while proc.popen.poll() is None and time.monotonic() < deadline:
            if ready.exists():
                self.port = int(json.loads(ready.read_text())["port"])
                return self
            time.sleep(_POLL_S)
        proc.kill()
        raise PeerError(f"pynetdicom SCP did not start\n{proc.describe()}")


# --------------------------------------------------------------------------------- pynetdicom SCU


def _pynetdicom_result(proc: _Proc, deadline: float, timeout: float, key: str) -> PeerResult:
    result = proc.finish(deadline, timeout)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        result.statuses = [{"status": None, "error": "no JSON report"}]
        return result
    result.statuses = report[key] if key == "results" else [report]
    return result


def run_pynetdicom_storescu(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    *,
    aec: str = "ANY-SCP",
    aet: str = "PYNETDICOM_SCU",
    timeout: float = 60,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """Send `files` with a pynetdicom SCU subprocess, each unconverted in its own transfer
    syntax (one exact context per (SOP class, syntax) pair). `statuses` is one dict per file:
    {"file", "status" (int, or None if not sent), "error"}."""
    directory = _log_dir(log_dir)
    listing = directory / f"pynetdicom-scu-files-{next(_SEQ)}.json"
    listing.write_text(json.dumps([str(f) for f in files]))
    argv = [
        sys.executable, str(PEER_SCRIPT), "store", "--host", host, "--port", str(port),
        "--aec", aec, "--aet", aet, "--files-json", str(listing),
    ]  # fmt: skip
    proc = _Proc("pynetdicom-storescu", argv, log_dir=log_dir)
    return _pynetdicom_result(proc, time.monotonic() + timeout, timeout, "results")


def run_pynetdicom_echoscu(
    host: str,
    port: int,
    *,
    aec: str = "ANY-SCP",
    aet: str = "PYNETDICOM_SCU",
    timeout: float = 30,
    log_dir: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """One C-ECHO from a pynetdicom SCU subprocess; `statuses` == [{"status": int|None}]."""
    argv = [
        sys.executable, str(PEER_SCRIPT), "echo", "--host", host, "--port", str(port),
        "--aec", aec, "--aet", aet,
    ]  # fmt: skip
    proc = _Proc("pynetdicom-echoscu", argv, log_dir=log_dir)
    return _pynetdicom_result(proc, time.monotonic() + timeout, timeout, "status")
