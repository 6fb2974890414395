"""``scpfleet``: the command line (``serve``, ``ls``, ``stats``, and bench's commands).

Theory of operation: argparse builds the commands; every flag of ``serve`` defaults to
"not given", so :func:`workers.config.load_config` can lay exactly the given flags over
the TOML file over the defaults. A wrong flag, value or config file ends the program
with one line on stderr and status 2 (:class:`_Parser` overrides argparse's two-line
usage error); operational failures at start (port taken, storage locked) are one line
and status 1. Nothing here is imported by the node's other processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

__all__ = ["main", "build_parser"]

_SERVE_DESCRIPTION = """\
Run a DICOM Storage SCP node: a supervisor, one listener, N workers and M indexers.
Every Storage SOP Class is accepted in every transfer syntax (plus Verification,
Query/Retrieve C-FIND, C-GET and C-MOVE, and Storage Commitment);
instances are written to STORAGE/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm,
made durable before the C-STORE is answered, and indexed in STORAGE/index.sqlite
(or in a PostgreSQL index the nodes of a cluster share: --index, SCPFLEET_INDEX).

With no options it serves AE title SCPFLEET on port 11112, stores in ./archive with
one worker per CPU and fsync durability. Settings come from the defaults, then
--config FILE.toml (keys are the long option names without the dashes, e.g.
max-associations = 50, require-calling-aet = ["CT1", "MR2"]), then the flags.
SIGTERM or Ctrl-C stops it gracefully: stores in flight finish (--drain-timeout),
the index is flushed, exit status 0."""

_EPILOG = """\
example: scpfleet serve --port 11112 --aet ARCHIVE --storage /srv/dicom --workers 4 \\
    --durability batch --metrics-port 9110"""


_VERIFY_DESCRIPTION = """\
Walk the storage root and the index and report every disagreement: a row whose file is
missing, a row describing another copy than the file at its path, an instance file no
row describes, a second file of an instance at another path, and with --digests a file
whose bytes no longer match its row's digest (damaged). Safe while the node runs (work
in flight may show as a passing disagreement). Exit status 0: they agree; 1: problems.

--repair (node stopped) rebuilds records from the files and applies them through the
node's own rules: each path's file wins at its path, the duplicate policy decides
between paths and the losing copy moves to STORAGE/.superseded; a row whose file is
gone is restored from .superseded when that very copy is there, else removed. Damaged
files are reported, never rewritten."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None


#: serve flag dest -> NodeConfig key
_SERVE_KEYS = {
    "host": "host", "port": "port", "aet": "aet", "storage": "storage", "index": "index",
    "workers": "workers", "indexers": "indexers", "durability": "durability",
    "duplicates": "duplicates", "digest": "digest", "journal_segment_bytes": "journal-segment-bytes",
    "sop_classes": "sop-classes", "incomplete": "incomplete",
    "max_associations": "max-associations", "max_pdu": "max-pdu",
    "require_calling_aet": "require-calling-aet", "require_called_aet": "require-called-aet",
    "allow_address": "allow-address",
    "tls_cert": "tls-cert", "tls_key": "tls-key", "tls_ca": "tls-ca",
    "metrics_port": "metrics-port", "metrics_host": "metrics-host",
    "acse_timeout": "acse-timeout", "dimse_timeout": "dimse-timeout",
    "network_timeout": "network-timeout", "drain_timeout": "drain-timeout",
    "summary_interval": "summary-interval", "log_level": "log-level",
    "ae_table": "ae-table", "query": "query", "retrieve": "retrieve", "commitment": "commitment",
    "commitment_verify": "commitment-verify",
    "node_id": "node-id", "proxy_protocol_from": "proxy-protocol-from", "drain_delay": "drain-delay",
}


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")
    parser.add_argument("--storage", metavar="DIR", help="storage root (default ./archive)")
    parser.add_argument("--index", metavar="URL",
                        help="the index: sqlite (default: STORAGE/index.sqlite), another SQLite file's path, "
                             "or postgresql://USER@HOST:PORT/DB, shared by the nodes of a cluster (a password "
                             "goes in SCPFLEET_INDEX, PGPASSWORD or ~/.pgpass, not here: ps shows flags)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scpfleet", description="scpfleet: a multiprocess, high-throughput DICOM Storage SCP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the storage node", description=_SERVE_DESCRIPTION, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    net = serve.add_argument_group("network")
    net.add_argument("--host", help="address to listen on (default 0.0.0.0: all IPv4)")
    net.add_argument("--port", type=_integer, help="TCP port (default 11112; 0: any free port)")
    net.add_argument("--aet", metavar="AET", help="our AE title (default SCPFLEET)")
    net.add_argument("--max-associations", type=_integer, metavar="N",
                     help="node-wide limit; one more is rejected 2/3/2 (transient, local limit) (default 100)")
    net.add_argument("--max-pdu", type=_integer, metavar="BYTES",
                     help="maximum PDU length we receive (default 262144)")
    net.add_argument("--require-calling-aet", action="append", metavar="AET",
                     help="accept only this calling AE title (repeatable)")
    net.add_argument("--require-called-aet", action="store_true", default=None,
                     help="reject associations not addressed to our AE title")
    net.add_argument("--allow-address", action="append", metavar="CIDR",
                     help="accept connections only from this address or network (repeatable); "
                          "others are closed before any PDU is read")
    net.add_argument("--proxy-protocol-from", action="append", metavar="CIDR",
                     help="a load balancer's address or network (repeatable): its connections start with a "
                          "PROXY protocol v2 header naming the client, whose address is then the one logged "
                          "and checked; a PROXY header from anyone else is refused")
    net.add_argument("--acse-timeout", type=_seconds, metavar="S", help="association setup/release timeout (30)")
    net.add_argument("--dimse-timeout", type=_seconds, metavar="S", help="stalled message timeout (60)")
    net.add_argument("--network-timeout", type=_seconds, metavar="S", help="idle association timeout (120)")
    tls = serve.add_argument_group("TLS (PS3.15 B.1 secure transport)")
    tls.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS on the port)")
    tls.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    tls.add_argument("--tls-ca", metavar="PEM", help="require client certificates signed by these CAs")
    store = serve.add_argument_group("storage")
    _add_storage_options(store)
    store.add_argument("--durability", choices=("fsync", "batch", "none"),
                       help="fsync: each instance synced before its response (default); batch: the same, "
                            "grouped; none: no syncing (survives a crash, not power loss)")
    store.add_argument("--duplicates", choices=("overwrite", "keep", "reject"),
                       help="an instance already stored is replaced (default), kept, or refused")
    store.add_argument("--sop-classes", choices=("any", "known"),
                       help="storage SOP classes taken: any (default: a vendor's private classes and "
                            "classes newer than this release too) or only the known ones; other "
                            "abstract syntaxes are refused at negotiation")
    store.add_argument("--incomplete", choices=("refuse", "quarantine"),
                       help="a data set without a valid Study or Series Instance UID is refused "
                            "(default, status A900) or kept as <storage>/quarantine/<SOP UID>.dcm, "
                            "indexed but out of reach of query/retrieve; see 'scpfleet verify'")
    store.add_argument("--digest", choices=("xxh3-128", "sha256"),
                       help="content digest of every data set, kept in the index: xxh3-128 (default) "
                            "detects accidental corruption, not tampering; sha256 also tampering "
                            "while the index is trusted, at more CPU")
    store.add_argument("--journal-segment-bytes", type=_integer, metavar="BYTES",
                       help="rotate a worker's journal segment past this size (default 64 MiB)")
    qr = serve.add_argument_group(
        "query/retrieve and storage commitment",
        "C-FIND, C-GET, C-MOVE (Patient Root and Study Root models) and Storage Commitment\n"
        "are answered from the index, all on by default. C-MOVE destinations, and commitment\n"
        "requestors no longer connected, are reached through the AE table.")
    qr.add_argument("--ae-table", metavar="FILE",
                    help="AE title -> host and port of the AEs the node may connect to, TOML "
                         '([STORESCP] host = "10.0.0.5" port = 104) or JSON (FILE.json); default: none '
                         "(C-MOVE answers A801, reports go only on the requestor's association)")
    qr.add_argument("--no-query", dest="query", action="store_false", default=None,
                    help="do not answer C-FIND")
    qr.add_argument("--no-retrieve", dest="retrieve", action="store_false", default=None,
                    help="do not answer C-GET and C-MOVE")
    qr.add_argument("--no-commitment", dest="commitment", action="store_false", default=None,
                    help="do not answer Storage Commitment (N-ACTION)")
    qr.add_argument("--commitment-verify", action="store_true", default=None,
                    help="commit an instance only if its file still has the digest recorded when it was "
                         "stored (reads every file; default: present, same SOP class and size)")
    procs = serve.add_argument_group("processes")
    procs.add_argument("--workers", type=_integer, metavar="N", help="worker processes (default: CPUs)")
    procs.add_argument("--indexers", type=_integer, metavar="N", help="indexer processes (default 1)")
    procs.add_argument("--drain-timeout", type=_seconds, metavar="S",
                       help="on stop, how long stores in flight may take (default 10)")
    procs.add_argument("--drain-delay", type=_seconds, metavar="S",
                       help="on stop, first refuse new associations for S seconds (and until the open ones "
                            "end, within --drain-timeout) while /health says draining, so a load balancer "
                            "takes the node out before it stops listening (default 0)")
    procs.add_argument("--node-id", metavar="ID",
                       help="this node's name in a shared index (default: host name and a digest of the "
                            "storage path)")
    ops = serve.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=_integer, metavar="PORT",
                     help="serve Prometheus /metrics on this port (0: any free port; default off)")
    ops.add_argument("--metrics-host", metavar="ADDR", help="address of /metrics (default 127.0.0.1)")
    ops.add_argument("--summary-interval", type=_seconds, metavar="S", help="seconds between summary lines (30)")
    ops.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    ops.add_argument("--ready-file", metavar="PATH",
                     help="write the bound address and process ids here (JSON) once serving")
    ops.add_argument("--check-config", action="store_true",
                     help="print the effective configuration (JSON) and exit")
    serve.set_defaults(func=_serve)

    ls = sub.add_parser("ls", help="list stored instances from the index", description="List stored instances, "
                        "most recently received first.")
    _add_storage_options(ls)
    ls.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    ls.add_argument("--limit", type=_integer, default=100, metavar="N", help="at most N rows (default 100)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_ls)

    stats = sub.add_parser("stats", help="counts of instances, bytes, studies, series, patients (and per "
                           "node, for a shared index)")
    _add_storage_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    verify = sub.add_parser(
        "verify", help="check that the index describes the files on disk (and repair it)",
        description=_VERIFY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_storage_options(verify)
    verify.add_argument("--digests", action="store_true",
                        help="also hash every file and compare with its row's digest (reads all data)")
    verify.add_argument("--repair", action="store_true",
                        help="fix what the files can settle; the node must be stopped")
    verify.add_argument("--duplicates", choices=("overwrite", "keep", "reject"),
                        help="when repairing, which of two copies at different paths wins: the newer "
                             "(overwrite) or the first (keep, reject); default: the node's setting")
    verify.add_argument("--node-id", metavar="ID",
                        help="with a shared index: the node whose rows describe this storage (default: the "
                             "node's default, host name and a digest of the storage path)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    verify.set_defaults(func=_verify)

    try:
        from bench import cli as bench_cli
    except ImportError:
        bench_cli = None
    if bench_cli is not None and hasattr(bench_cli, "add_commands"):
        bench_cli.add_commands(sub)
    return parser


def _fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"scpfleet: error: {message}\n")
    return status


def _config(args: argparse.Namespace, keys: dict[str, str]) -> Any:
    from .config import ConfigError, load_config

    overrides = {key: getattr(args, dest, None) for dest, key in keys.items()}
    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        for dest, key in keys.items():  # name the flag when the bad value came from one
            value = getattr(args, dest, None)
            if value is not None and exc.key == key:
                shown = value if not isinstance(value, list) else " ".join(map(str, value))
                raise ConfigError(f"--{key} {shown}: {exc.detail}") from None
        raise


def _serve(args: argparse.Namespace) -> int:
    from ._logging import setup_logging
    from .config import ConfigError

    try:
        config = _config(args, _SERVE_KEYS)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.check_config:
        import msgspec

        from storage import redact_url

        cfg = msgspec.to_builtins(config)
        cfg["workers"] = config.worker_count
        cfg["index"] = redact_url(config.index_path)
        cfg["node-id"] = config.node
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    setup_logging("supervisor", config.log_level)
    from .supervisor import StartupError, Supervisor

    try:
        return Supervisor(config, args.ready_file).run()
    except StartupError as exc:
        return _fail(str(exc), 1)


def _read_index(args: argparse.Namespace, read: Callable[[Any], Any]) -> Any:
    """``read(catalog)`` on the node's index (a shared one: the whole cluster's); any
    failure is one line and exit 1."""
    from storage import CatalogError, open_catalog, redact_url

    from .config import ConfigError

    try:
        config = _config(args, {"storage": "storage", "index": "index"})
    except ConfigError as exc:
        raise SystemExit(_fail(str(exc)))
    where = redact_url(config.index_path)
    if not config.index_shared and not os.path.exists(config.index_path):
        raise SystemExit(_fail(f"no index at {where} (nothing stored yet, or wrong --storage)", 1))
    try:
        with open_catalog(config.index_path, read_only=config.index_shared) as index:
            return read(index)
    except CatalogError as exc:
        raise SystemExit(_fail(f"index {where}: {exc}", 1)) from None


def _ls(args: argparse.Namespace) -> int:
    import msgspec

    records = _read_index(args, lambda index: index.list(limit=args.limit, study=args.study))
    out = sys.stdout
    if args.json:
        for record in records:
            out.write(json.dumps(msgspec.structs.asdict(record)) + "\n")
        return 0
    out.write("RECEIVED\tFROM\tPATIENT\tMODALITY\tSTUDY\tSERIES\tSOP_INSTANCE\tSIZE\tPATH\n")
    for r in records:
        when = datetime.datetime.fromtimestamp(r.received_at).isoformat(timespec="seconds")
        sender = f"{r.calling_ae or '-'}@{r.calling_address}" if r.calling_address else (r.calling_ae or "-")
        out.write(f"{when}\t{sender}\t{r.patient_id or '-'}\t{r.modality or '-'}\t{r.study_instance_uid}\t"
                  f"{r.series_instance_uid}\t{r.sop_instance_uid}\t{r.size}\t{r.path}\n")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import msgspec

    from .metrics import format_bytes

    stats, nodes = _read_index(args, lambda index: (index.stats(), index.node_stats()))
    shared = any(nodes)  # rows naming their node: an index that nodes share
    if args.json:
        out = msgspec.structs.asdict(stats)
        if shared:
            out["nodes"] = {node: msgspec.structs.asdict(s) for node, s in nodes.items()}
        print(json.dumps(out))
        return 0
    print(f"instances: {stats.instances}\nbytes: {stats.bytes} ({format_bytes(stats.bytes)})\n"
          f"studies: {stats.studies}\nseries: {stats.series}\npatients: {stats.patients}")
    if shared:
        print("NODE\tINSTANCES\tBYTES\tSTUDIES\tSERIES\tPATIENTS")
        for node, s in nodes.items():
            print(f"{node or '-'}\t{s.instances}\t{s.bytes}\t{s.studies}\t{s.series}\t{s.patients}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from storage import CatalogError, FileCheck, open_catalog, redact_url

    from .config import ConfigError
    from .verify import RootBusy, lock_root, print_progress, repair, verify

    try:
        config = _config(args, {"storage": "storage", "index": "index", "node_id": "node-id"})
    except ConfigError as exc:
        return _fail(str(exc))
    root = os.path.abspath(config.storage)
    where = redact_url(config.index_path)
    if not os.path.isdir(root):
        return _fail(f"no storage at {root}", 1)
    if not config.index_shared and not os.path.exists(config.index_path):
        return _fail(f"no index at {where} (nothing stored yet, or wrong --storage)", 1)
    policy = args.duplicates or config.duplicates
    files = FileCheck(root, policy)
    progress = None if args.quiet or args.json else print_progress
    lock = None
    try:
        if args.repair:
            lock = lock_root(root)
        with open_catalog(config.index_path, node=config.node) as catalog:
            report = verify(root, catalog, files, digests=args.digests, progress=progress)
            fixed = None
            if args.repair and report.problems:
                fixed = repair(root, catalog, files, report, config.digest)
                report_after = verify(root, catalog, files, digests=args.digests, progress=progress)
            else:
                report_after = report
    except RootBusy as exc:
        return _fail(str(exc), 1)
    except CatalogError as exc:
        return _fail(f"index {where}: {exc}", 1)
    except OSError as exc:
        return _fail(f"storage {root}: {exc.strerror or exc}", 1)
    finally:
        if lock is not None:
            os.close(lock)
    if args.json:
        out = {"before": report.as_dict(), "after": report_after.as_dict()}
        if fixed is not None:
            out["repaired"] = {"reindexed": fixed.reindexed, "restored": fixed.restored,
                               "removed": fixed.removed, "unreadable": fixed.unreadable}
        print(json.dumps(out, indent=2))
    else:
        _print_report(report, "")
        if fixed is not None:
            print(f"repaired: {fixed.reindexed} record(s) rebuilt from files, "
                  f"{fixed.restored} file(s) restored from .superseded, "
                  f"{fixed.removed} row(s) of missing files removed")
            _print_report(report_after, "after repair: ")
    return 0 if report_after.problems == 0 else 1


def _print_report(report: Any, prefix: str) -> None:
    print(f"{prefix}{report.files} instance file(s), {report.rows} row(s), "
          f"{report.problems} disagreement(s)")
    for kind, words in (("missing", "row whose file is missing"),
                        ("mismatch", "row describing another copy than its file"),
                        ("damaged", "file whose data no longer matches its digest"),
                        ("unindexed", "instance file without a row"),
                        ("duplicate", "second file of an instance"),
                        ("unreadable", "unreadable file")):
        items = getattr(report, kind)
        if items:
            print(f"  {len(items)} {words}{'s' if len(items) > 1 else ''}:")
            for item in items[:20]:
                print(f"    {item}")
            if len(items) > 20:
                print(f"    ... and {len(items) - 20} more (--json lists all)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `scpfleet ls | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
