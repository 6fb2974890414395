"""What the node trusts and what it refuses: TLS with client certificates, AE title
allow-lists, the peer address allow-list, names on disk, no shell.

Theory of operation: TLS follows PS3.15 Annex B (BCP 195: TLS 1.2 or later). A test CA,
a server certificate (localhost, 127.0.0.1), a client certificate it signed and a
client certificate from a rogue CA are made with the openssl command line in a
temporary directory (the tests skip only when openssl is missing); the target requires
client certificates signed by the test CA (CERT_REQUIRED), as ``scpfleet serve
--tls-cert/--tls-key/--tls-ca`` does. Each TLS case runs against the engine target
and, when its serve command is available, the real node. The other checks are about
the code: storage names come only from validated UIDs, and no module that handles peer
data can start a process or a shell (checked on the syntax tree, not by grep).
"""

from __future__ import annotations

import ast
import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import aio
from engine._dimse import is_valid_uid as dimse_is_valid_uid
from engine.presentation import validate_uid
from storage import is_valid_uid
from tests.fuzz import wire
from tests.hardening.conftest import (
    ALLOWED_CALLING,
    AE_TITLE,
    HOST,
    MARGIN_S,
    REPO_ROOT,
    SOCKET_TIMEOUT_S,
    EngineTarget,
    Target,
    default_rq,
    node_help,
)

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


# ----------------------------------------------------------------------------- certificates


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(directory, "req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=scpfleet test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _leaf(directory: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    _openssl(directory, "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca, server (localhost/127.0.0.1), client (signed by ca), rogue-ca, rogue-client."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    directory = tmp_path_factory.mktemp("pki")
    _ca(directory, "ca")
    _ca(directory, "rogue-ca")
    _leaf(directory, "server", "ca", "/CN=localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
          "keyUsage=critical,digitalSignature\n")
    client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    _leaf(directory, "client", "ca", "/CN=ALLOWED", client_ext)
    _leaf(directory, "rogue-client", "rogue-ca", "/CN=ALLOWED", client_ext)
    return directory


def client_context(pki: Path, cert: str | None, *, trust: str = "ca") -> ssl.SSLContext:
    """A TLS client that verifies the server against ``trust`` and presents ``cert``."""
    context = ssl.create_default_context(cafile=str(pki / f"{trust}.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return context


TLS_KINDS = ["engine", "node"]


@pytest.fixture(scope="module", params=TLS_KINDS)
def tls_target(request: pytest.FixtureRequest, pki: Path, target_factory: Callable[..., Target]) -> Target:
    """A target that speaks only TLS and requires a client certificate from the test CA."""
    if request.param == "node" and (os.environ.get("SCPFLEET_HARDENING_TARGET") == "engine"
                                    or node_help() is None):
        pytest.skip("the real node (workers.cli serve) is not available")
    files = (str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    return target_factory(request.param, tls=files, client_ssl=client_context(pki, "client"))


def _tls_attempt(target: Target, context: ssl.SSLContext) -> bytes:
    """Handshake, send an A-ASSOCIATE-RQ, return what came back before the connection
    ended (b"" if the handshake or the read failed)."""
    raw = socket.create_connection((target.host, target.port), timeout=SOCKET_TIMEOUT_S)
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            return b""
        with tls:
            received = b""
            try:
                tls.sendall(default_rq(called=AE_TITLE))
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return received
                    received += chunk
            except (ssl.SSLError, OSError):
                return received
    finally:
        raw.close()


# ----------------------------------------------------------------------------- TLS


def test_tls_client_with_a_certificate_from_the_ca_is_served(tls_target: Target) -> None:
    """PS3.15 B.1: mutual authentication; the peer is served as usual over TLS."""
    since = tls_target.checkpoint()
    tls_target.assert_still_serving()
    tls_target.assert_clean(since)


def test_tls_client_without_a_certificate_is_refused(tls_target: Target, pki: Path) -> None:
    since = tls_target.checkpoint()
    got = _tls_attempt(tls_target, client_context(pki, None))
    assert not got.startswith(b"\x02"), "an association was accepted without a client certificate"
    assert got == b""
    tls_target.assert_clean(since)


def test_tls_client_with_a_rogue_certificate_is_refused(tls_target: Target, pki: Path) -> None:
    since = tls_target.checkpoint()
    assert _tls_attempt(tls_target, client_context(pki, "rogue-client")) == b""
    tls_target.assert_clean(since)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_target: Target, pki: Path) -> None:
    """BCP 195 / PS3.15 B.9: nothing older than TLS 1.2 is negotiated."""
    context = client_context(pki, "client")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    since = tls_target.checkpoint()
    assert _tls_attempt(tls_target, context) == b""
    tls_target.assert_clean(since)


def test_plain_dicom_to_the_tls_port_gets_no_dicom_answer(tls_target: Target) -> None:
    since = tls_target.checkpoint()
    with tls_target.peer() as peer:
        peer.send(default_rq())
        got = peer.read_until_closed(MARGIN_S + tls_target.acse_timeout)
    assert not got.startswith((b"\x02", b"\x03", b"\x07")), f"a DICOM answer in clear text: {got[:16].hex()}"
    tls_target.assert_clean(since)


def test_tls_connection_that_never_handshakes_is_closed(tls_target: Target) -> None:
    """ARTIM starts only once TLS is up, so the handshake has its own bound, the ACSE
    timeout (regression: asyncio's default held a silent connection 60 s)."""
    since = tls_target.checkpoint()
    with tls_target.peer() as peer:
        assert peer.read_until_closed(tls_target.acse_timeout + MARGIN_S) == b""
    tls_target.assert_clean(since)


def test_tls_client_refuses_a_server_it_cannot_verify(tls_target: Target, pki: Path) -> None:
    """The requestor's half of B.1: a client trusting another CA does not talk to us."""
    context = client_context(pki, "client", trust="rogue-ca")
    raw = socket.create_connection((tls_target.host, tls_target.port), timeout=SOCKET_TIMEOUT_S)
    with raw, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="localhost")


# ----------------------------------------------------------------------------- AE titles


@pytest.fixture(scope="module")
def strict(target_factory: Callable[..., Target]) -> Target:
    return target_factory(require_called_aet=True, require_calling_aet=[ALLOWED_CALLING])


@pytest.mark.parametrize(
    ("calling", "called", "expected"),
    [
        (b"ALLOWED", AE_TITLE, None),
        (b"  ALLOWED  ", b"  " + AE_TITLE, None),  # PS3.5 6.2: spaces not significant
        (b"INTRUDER", AE_TITLE, wire.associate_rj(1, 1, 3)),
        (b"allowed", AE_TITLE, wire.associate_rj(1, 1, 3)),  # AE titles are case sensitive
        (b"ALLOWED", b"OTHER", wire.associate_rj(1, 1, 7)),
        (b"INTRUDER", b"OTHER", wire.associate_rj(1, 1, 3)),  # calling is judged first
    ],
)
def test_ae_title_allow_lists(strict: Target, calling: bytes, called: bytes, expected: bytes | None) -> None:
    """require_calling_aet / require_called_aet (PS3.8 Table 9-21 reasons 3 and 7)."""
    since = strict.checkpoint()
    with strict.peer() as peer:
        peer.send(default_rq(calling=calling, called=called))
        reply = peer.recv_pdu()
        if expected is None:
            assert reply[0] == 0x02
        else:
            assert reply == expected
    strict.assert_clean(since)


def test_association_limit(target_factory: Callable[..., Target]) -> None:
    """One association more than the limit is refused transiently, local limit exceeded
    (2, 3, 2); the slot is given back when an association ends."""
    target = target_factory(max_associations=2)
    since = target.checkpoint()
    first, _ = target.established_peer()
    second, _ = target.established_peer()
    with first, second:
        with target.peer() as third:
            third.send(default_rq())
            assert third.recv_pdu() == wire.associate_rj(2, 3, 2)
        first.send(wire.RELEASE_RQ)
        assert first.recv_pdu() == wire.RELEASE_RP
    target.assert_clean(since)


# ----------------------------------------------------------------------------- peer addresses


def test_address_allowed() -> None:
    networks = [ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8")]
    assert aio.address_allowed("10.1.2.3", networks)
    assert aio.address_allowed("::ffff:10.1.2.3", networks)  # dual-stack socket
    assert aio.address_allowed("fd00::1%eth0", networks)
    assert not aio.address_allowed("10.2.0.1", networks)
    assert not aio.address_allowed("127.0.0.1", networks)
    assert not aio.address_allowed("::1", networks)
    assert not aio.address_allowed("not-an-address", networks)
    assert not aio.address_allowed("", networks)
    assert not aio.address_allowed("127.0.0.1", [])
    assert aio.address_allowed("127.0.0.1", None)


def test_disallowed_peer_is_closed_before_any_pdu(target_factory: Callable[..., Target]) -> None:
    """ServerConfig.allowed_networks: a peer outside every network is closed at once,
    unanswered, even for a well-formed A-ASSOCIATE-RQ; nothing is stored."""
    target = target_factory("engine", allowed_networks=[ipaddress.ip_network("192.0.2.0/24")])
    assert isinstance(target, EngineTarget)
    with target.peer() as peer:
        try:
            peer.send(default_rq())
        except OSError:
            pass  # closed before we could even send
        assert peer.read_until_closed(MARGIN_S) == b""
    assert target.visible_instances() == [] and target.temp_files() == []
    assert target.server is not None
    assert target.call(lambda: target.server.established_count) == 0


def test_allowed_peer_is_served(target_factory: Callable[..., Target]) -> None:
    target = target_factory("engine", allowed_networks=[ipaddress.ip_network("127.0.0.0/8")])
    since = target.checkpoint()
    target.assert_still_serving()
    target.assert_clean(since)


def test_adopted_socket_from_a_disallowed_peer_is_refused(target_factory: Callable[..., Target]) -> None:
    """The listener hands sockets to workers (AssociationServer.adopt): the address is
    checked before the TLS handshake and the socket closed; adopt raises."""
    target = target_factory("engine", allowed_networks=[ipaddress.ip_network("192.0.2.0/24")])
    assert isinstance(target, EngineTarget) and target.loop is not None and target.server is not None
    with socket.create_server((HOST, 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=SOCKET_TIMEOUT_S)
        with client:
            accepted, _ = listener.accept()
            accepted.setblocking(False)
            future = asyncio.run_coroutine_threadsafe(target.server.adopt(accepted), target.loop)
            with pytest.raises(ConnectionRefusedError):
                future.result(SOCKET_TIMEOUT_S)
            assert accepted.fileno() == -1
            client.settimeout(SOCKET_TIMEOUT_S)
            assert client.recv(10) == b""


# ----------------------------------------------------------------------------- names on disk

NASTY_UIDS = [
    "", ".", "..", "../../etc/passwd", "/etc/passwd", "1.2.3/../../x", "1.2.3/", "1.2.3\\..\\x",
    "C:\\Windows", "1.2.3\x00", "1.2\x00.3", "1.2.3\n", "\n1.2.3", "1.2.3 ", " 1.2.3", "1.2 3",
    "1..2", ".1.2", "1.2.", "01.2", "1.02", "1.2.00", "-1.2", "+1.2", "1e3", "0x1F", "1.2.3.*",
    "1.2.3?", "$(id)", "`id`", "1;rm -rf /", "1|sh", "%2e%2e%2f", "~", "~root", "CON", "NUL",
    "1.2.3:stream", "\u0661.\u0662", "\uff11.\uff12", "1.\u00b2", "\u2460.1", "1.2.3\u200b", "1" * 65,
    "1." + "2" * 63, "1.2.3\t", "1.2.3\r\n", "*", "?", "[1]",
]
GOOD_UIDS = ["0", "1.2", "1.2.840.10008.5.1.4.1.1.2", "2.25.339891304735484226305634436546451473279",
             "1." + "2" * 62, "0.0.0", "1.0.2"]


@pytest.mark.parametrize("uid", NASTY_UIDS, ids=[repr(u)[:30] for u in NASTY_UIDS])
def test_nasty_strings_are_not_uids(uid: str) -> None:
    """storage.is_valid_uid decides which strings become names; the engine's two UID
    checks agree with it."""
    assert not is_valid_uid(uid)
    assert not dimse_is_valid_uid(uid)
    with pytest.raises(ValueError):
        validate_uid(uid)


@pytest.mark.parametrize("uid", GOOD_UIDS)
def test_valid_uids_are_uids(uid: str) -> None:
    assert is_valid_uid(uid) and dimse_is_valid_uid(uid)
    validate_uid(uid)


def test_is_valid_uid_takes_only_str() -> None:
    for value in (None, 1, 1.2, b"1.2", bytearray(b"1.2"), ["1.2"]):
        assert not is_valid_uid(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70) | st.from_regex(r"[0-9.]{1,70}", fullmatch=True))
def test_a_valid_uid_is_a_safe_file_name(text: str) -> None:
    """Anything is_valid_uid accepts is one plain path component under the root."""
    if not is_valid_uid(text):
        return
    assert text == os.path.basename(text) and text not in (".", "..")
    assert set(text) <= set("0123456789.") and not text.startswith(".")
    root = Path("archive")
    assert (root / text).parent == root


# ----------------------------------------------------------------------------- no shell

_PEER_DATA_PACKAGES = ("engine", "storage")
_PROCESS_MODULES = {"subprocess", "pty", "pexpect", "commands"}
_OS_PROCESS_CALLS = {"system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve",
                     "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                     "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "startfile"}


def _modules(package: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _process_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _PROCESS_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in _PROCESS_MODULES:
                found.append(f"from {node.module} import ...")
            if node.module == "os":
                found += [f"from os import {a.name}" for a in node.names if a.name in _OS_PROCESS_CALLS]
        elif isinstance(node, ast.Attribute) and node.attr in _OS_PROCESS_CALLS:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append(f"os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            found.append(f"{node.func.id}()")
    return found


@pytest.mark.parametrize("package", _PEER_DATA_PACKAGES)
def test_code_handling_peer_data_starts_no_process(package: str) -> None:
    """engine/ and storage/ turn peer bytes into events and files: they never import
    subprocess (or pty), never call os.system/popen/exec*/spawn*, never eval."""
    offenders = {str(p.relative_to(REPO_ROOT)): uses for p, t in _modules(package) if (uses := _process_uses(t))}
    assert offenders == {}


def test_node_never_uses_a_shell() -> None:
    """workers/ starts its own processes (argument vectors, never a shell): no
    shell=True, no os.system/os.popen, no eval."""
    offenders: dict[str, list[str]] = {}
    for path, tree in _modules("workers"):
        uses = [u for u in _process_uses(tree) if not u.startswith(("import subprocess", "from subprocess"))]
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False
            ):
                uses.append("shell=")
        if uses:
            offenders[str(path.relative_to(REPO_ROOT))] = uses
    assert offenders == {}


def test_process_check_finds_what_it_looks_for() -> None:
    """The syntax-tree check above is not vacuous."""
    tree = ast.parse("import subprocess\nimport os\nos.system('x')\nfrom os import popen\neval('1')\n")
    assert sorted(_process_uses(tree)) == ["eval()", "from os import popen", "import subprocess", "os.system"]
