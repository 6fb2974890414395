"""The node's configuration: one validated :class:`NodeConfig`, from defaults, a TOML
file and command-line flags, in that order of precedence.

Theory of operation: a TOML file is read with :mod:`tomllib`, the environment variable
:data:`INDEX_ENV` (the index's location, which may carry a password that must stay out
of process lists and configuration files) is laid over its ``index``, the flags given
on the command line over both (same names: ``--max-associations`` is
``max-associations``), and :func:`msgspec.convert` turns the result into a frozen
:class:`NodeConfig`, checking types, ranges and unknown keys in one place. What a type
cannot say (an AE title's characters, a certificate without its key, a readable file)
is checked by :func:`validate`. Every failure is a :class:`ConfigError` whose message is
one line naming the offending setting; the CLI prints it and exits 2.

This module never starts anything; it reads the files it is told to validate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import tomllib
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "NodeConfig",
    "ConfigError",
    "load_config",
    "validate",
    "default_workers",
    "ssl_context",
    "ae_title_bytes",
    "ae_table",
    "INDEX_ENV",
    "default_node_id",
    "proxy_networks",
]

#: The environment variable that gives the index's location when no flag does (a
#: ``postgresql://`` URL with its password stays out of ``ps`` and of config files).
INDEX_ENV = "SCPFLEET_INDEX"
# A node id names rows in a shared index and appears in metrics labels: short, plain.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
# PS3.8 9.3.2 / D.1: a Maximum Length below a few KiB is legal but pointless for
# storage; above 64 MiB one PDU would be buffered whole per association.
PduSize = Annotated[int, msgspec.Meta(ge=4096, le=64 << 20)]


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="kebab"):
    """Everything ``scpfleet serve`` needs; TOML keys are the kebab-case field names.

    ``workers`` None means one per CPU this process may run on; ``index`` None (or
    ``sqlite``) means ``<storage>/index.sqlite``, a path another SQLite file, a
    ``postgresql://`` URL the index the nodes of a cluster share; ``node-id`` None
    means :func:`default_node_id`; ``metrics-port`` None disables ``/metrics`` and
    ``/health`` (0 picks a free port, reported in the ready file).
    """

    host: str = "0.0.0.0"
    port: Port = 11112
    aet: str = "SCPFLEET"
    storage: str = "./archive"
    index: str | None = None
    # One process per CPU is the point of the design; 256 bounds shared slots.
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    indexers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    durability: Literal["fsync", "batch", "none"] = "fsync"
    duplicates: Literal["overwrite", "keep", "reject"] = "overwrite"
    # Storage SOP classes taken: "any" valid UID proposed (private and newer classes
    # too, as an archive must) or only the "known" ones of pydicom's dictionary.
    sop_classes: Literal["any", "known"] = "any"
    # The content digest of every stored data set (storage/_digest.py says what each
    # guarantees): XXH3-128 finds accidental corruption at no cost, SHA-256 also
    # tampering, at ~0.3 ms of CPU per 0.5 MB.
    digest: Literal["xxh3-128", "sha256"] = "xxh3-128"
    # A data set without a valid Study or Series Instance UID (its path is made of them)
    # is refused (0xA900), or kept as quarantine/<SOPInstanceUID>.dcm, indexed with what
    # it has, out of reach of query/retrieve.
    incomplete: Literal["refuse", "quarantine"] = "refuse"
    # A worker's journal segment is rotated past this size (64 MiB: ~100k records, about
    # a second to replay), so a long-running worker's journal does not grow unbounded.
    journal_segment_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 40)] = 64 << 20
    # Node-wide; each association holds about two PDUs and one open file.
    max_associations: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100
    # 256 KiB PDUs amortise per-PDU work; memory per association stays ~2 PDUs.
    max_pdu: PduSize = 262144
    require_calling_aet: list[str] = []
    require_called_aet: bool = False
    # Peer addresses (CIDR) allowed to connect; empty: everyone.
    allow_address: list[str] = []
    # Load balancers (CIDR) whose connections start with a PROXY v2 header naming the
    # client; empty: none (a PROXY header is then refused from anyone).
    proxy_protocol_from: list[str] = []
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    metrics_port: Port | None = None
    metrics_host: str = "127.0.0.1"
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 60.0
    network_timeout: Seconds = 120.0
    drain_timeout: Seconds = 10.0
    # On SIGTERM, how long the node refuses new associations (reporting "draining" on
    # /health) while open ones go on, before it stops listening: a balancer's health
    # checks take it out of rotation meanwhile. 0: stop listening at once.
    drain_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    summary_interval: Seconds = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Query/Retrieve and Storage Commitment: on unless switched off; the AE table says
    # where C-MOVE destinations and commitment requestors listen.
    ae_table: str | None = None
    query: bool = True
    retrieve: bool = True
    commitment: bool = True
    commitment_verify: bool = False
    # This node's name in a shared index (its rows, its journal progress, metrics).
    node_id: str | None = None

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else default_workers()

    @property
    def index_path(self) -> str:
        """The index's location: a SQLite file's path or a server's URL."""
        if self.index is None or self.index == "sqlite":
            return os.path.join(self.storage, "index.sqlite")
        return self.index

    @property
    def index_shared(self) -> bool:
        """Whether the index is a server's (shared with other nodes), not a file."""
        from storage import is_url

        return is_url(self.index_path)

    @property
    def node(self) -> str:
        return self.node_id if self.node_id is not None else default_node_id(self.storage)


class ConfigError(Exception):
    """A setting is wrong; the message is one line naming it. ``key`` is the setting's
    name when known, ``detail`` what is wrong with it."""

    def __init__(self, message: str, key: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.detail = detail or message


def default_workers() -> int:
    """CPUs this process may run on (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_node_id(storage: str) -> str:
    """This machine's host name and a digest of the storage root's absolute path: stable
    across restarts, different for two nodes on one machine (they cannot share a root)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "node"
    digest = hashlib.sha256(os.path.abspath(storage).encode()).hexdigest()[:8]
    return f"{host[:48].lstrip('.-_') or 'node'}-{digest}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_config(path: str | None, overrides: dict[str, Any]) -> NodeConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (kebab-case keys)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fp:
                raw = tomllib.load(fp)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {_one_line(exc)}") from None
    if os.environ.get(INDEX_ENV):
        raw["index"] = os.environ[INDEX_ENV]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = msgspec.convert(raw, NodeConfig)
    except msgspec.ValidationError as exc:
        where = f"config file {path}" if path is not None else "configuration"
        text = _one_line(exc)
        match = re.fullmatch(r"(.*) - at `\$\.([^`]*)`", text)
        if match is None:
            raise ConfigError(f"{where}: {text.replace('Object contains unknown field', 'unknown setting')}") from None
        detail = match.group(1).replace("`", "")
        raise ConfigError(f"{where}: {match.group(2)}: {detail}", match.group(2), detail) from None
    validate(config)
    return config


def ae_title_bytes(value: str, what: str) -> bytes:
    """``value`` as a valid AE title (PS3.5 Table 6.2-1), or ConfigError."""
    from engine import validate_ae_title

    try:
        return validate_ae_title(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigError(_one_line(exc)) from None


def validate(config: NodeConfig) -> None:
    """The checks a type cannot express; raises ConfigError."""
    ae_title_bytes(config.aet, "aet")
    for title in config.require_calling_aet:
        ae_title_bytes(title, "require-calling-aet")
    allowed_networks(config)
    proxy_networks(config)
    if config.node_id is not None and not _NODE_ID.fullmatch(config.node_id):
        raise ConfigError(f"node-id: {config.node_id!r} is not 1 to 64 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit)", "node-id",
                          "1 to 64 letters, digits, '.', '_' or '-'")
    _check_index(config.index_path)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls-cert and tls-key must be given together")
    if config.tls_ca is not None and config.tls_cert is None:
        raise ConfigError("tls-ca (client certificate verification) needs tls-cert and tls-key")
    if config.tls_cert is not None:
        ssl_context(config)
    if config.metrics_port is not None and config.metrics_port == config.port and config.port != 0:
        raise ConfigError(f"metrics-port {config.metrics_port} is the DICOM port")
    if os.path.exists(config.storage) and not os.path.isdir(config.storage):
        raise ConfigError(f"storage {config.storage} exists and is not a directory")
    ae_table(config)


class _RemoteAE(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


def ae_table(config: NodeConfig) -> dict[str, tuple[str, int]]:
    """The AE table of ``ae-table`` (TOML, or JSON when the name ends in .json): AE
    title -> (host, port). Empty without one. Raises ConfigError naming the entry.

    TOML: one table per AE, ``[STORESCP]`` then ``host = "10.0.0.5"`` and
    ``port = 104``; JSON: ``{"STORESCP": {"host": "10.0.0.5", "port": 104}}``.
    """
    path = config.ae_table
    if path is None:
        return {}

    def bad(text: str) -> ConfigError:
        return ConfigError(f"ae-table {path}: {text}", "ae-table", text)

    try:
        with open(path, "rb") as fp:
            raw = json.load(fp) if path.endswith(".json") else tomllib.load(fp)
    except OSError as exc:
        raise bad(f"cannot read it: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise bad(f"not valid {'JSON' if path.endswith('.json') else 'TOML'}: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise bad("expected AE titles, each with a host and a port")
    table: dict[str, tuple[str, int]] = {}
    for title, entry in raw.items():
        try:
            name = ae_title_bytes(title, "AE title").decode("ascii")
        except ConfigError as exc:
            raise bad(str(exc)) from None
        if isinstance(entry, dict) and "tls" in entry:
            raise bad(f"{name}: tls is not supported yet")
        try:
            remote = msgspec.convert(entry, _RemoteAE)
        except msgspec.ValidationError as exc:
            raise bad(f"{name}: {_one_line(exc)}") from None
        if name in table:
            raise bad(f"{name} appears twice")
        table[name] = (remote.host, remote.port)
    return table


def _check_index(location: str) -> None:
    """A URL must be one a catalog serves (its text is never printed: it may hold a
    password); a path is SQLite's and is checked when opened."""
    from storage import POSTGRES_SCHEMES, is_url

    if is_url(location):
        scheme = location.split("://", 1)[0].lower()
        if scheme not in POSTGRES_SCHEMES:
            raise ConfigError(f"index: {scheme}:// is not an index location (sqlite, a path, or postgresql://...)",
                              "index", f"{scheme}:// is not an index location")


def _networks(texts: list[str], key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                f"{key}: {text!r} is not an address or network (e.g. 10.1.0.0/16)"
            ) from None
    return networks


def allowed_networks(
    config: NodeConfig,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """``allow-address`` as networks for engine.aio.ServerConfig; None admits everyone."""
    if not config.allow_address:
        return None
    return _networks(config.allow_address, "allow-address")


def proxy_networks(
    config: NodeConfig,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """``proxy-protocol-from`` as networks; None when no balancer is configured."""
    if not config.proxy_protocol_from:
        return None
    return _networks(config.proxy_protocol_from, "proxy-protocol-from")


def ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The server TLS context (PS3.15 B.1/B.9 profiles need TLS 1.2+); None without TLS.

    With ``tls-ca`` a client certificate signed by it is required.
    """
    if config.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls-cert/tls-key: cannot load {config.tls_cert}: {_one_line(exc)}") from None
    if config.tls_ca is not None:
        try:
            ctx.load_verify_locations(cafile=config.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls-ca: cannot load {config.tls_ca}: {_one_line(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
