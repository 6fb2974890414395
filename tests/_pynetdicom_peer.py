"""pynetdicom as a reference peer, run as a subprocess by tests/peers.py (never imported).

Theory of operation: three modes, each a short-lived process so that a test can always kill it
and pynetdicom's threads never share an interpreter with the code under test.

  scp   --out DIR --ready-file F [--aet AET]   Storage SCP (and Verification SCP) bound to
        127.0.0.1 port 0; writes {"port": N} to F once listening; stores every data set
        bit-preserving (pynetdicom's STORE_RECV_CHUNKED_DATASET: the received bytes behind a
        PS3.10 header) as DIR/<SOPInstanceUID>.dcm, renamed into place only when complete;
        one JSON line per store on stdout; exits cleanly on SIGTERM.
  store --host H --port P --files-json F [--aec A] [--aet B]   Storage SCU sending each file
        in its own transfer syntax without decoding it (STORE_SEND_CHUNKED_DATASET: exact
        presentation context per (SOP class, transfer syntax) pair, at most 128 per
        association, more pairs open more associations); prints one JSON object with the
        per-file statuses; exit status 0 only if every store returned 0x0000.
  echo  --host H --port P [--aec A] [--aet B]   C-ECHO; prints {"status": ...}.

It never decodes pixel data and never listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

MAX_CONTEXTS = 128  # PS3.8 9.3.2: presentation context IDs are odd numbers 1..255


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_scp(args: argparse.Namespace) -> int:
    out = Path(args.out)
    incoming = out / ".incoming"  # same file system as `out`, so the final rename is atomic
    incoming.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(incoming)  # where pynetdicom's chunked receive writes
    _config.STORE_RECV_CHUNKED_DATASET = True

    def handle_store(event: evt.Event) -> int:
        src = Path(event.dataset_path)
        uid = str(event.request.AffectedSOPInstanceUID)
        dst = out / f"{uid}.dcm"
        os.replace(src, dst)
        _emit({"stored": dst.name, "transfer_syntax": str(event.context.transfer_syntax)})
        return 0x0000

    ae = AE(ae_title=args.aet)
    ae.maximum_associations = 64  # parallel-SCU tests open many at once
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    port = server.server_address[1]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready = Path(args.ready_file)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    os.replace(tmp, ready)
    _emit({"listening": port})
    stop.wait()
    server.shutdown()
    return 0


def _pairs(files: list[str]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for f in files:
        meta = read_file_meta_info(f)
        key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        groups.setdefault(key, []).append(f)
    return groups


def run_store(args: argparse.Namespace) -> int:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = json.loads(Path(args.files_json).read_text())
    groups = _pairs(files)
    keys = list(groups)
    order = {f: i for i, f in enumerate(files)}
    results: list[dict] = []
    ok = True
    for start in range(0, len(keys), MAX_CONTEXTS):
        batch = keys[start : start + MAX_CONTEXTS]
        ae = AE(ae_title=args.aet)
        ae.requested_contexts = [build_context(sop, ts) for sop, ts in batch]
        todo = sorted((f for key in batch for f in groups[key]), key=order.__getitem__)
        assoc = ae.associate(args.host, args.port, ae_title=args.aec)
        if not assoc.is_established:
            results += [{"file": f, "status": None, "error": "association failed"} for f in todo]
            ok = False
            continue
        try:
            for f in todo:
                try:
                    rsp = assoc.send_c_store(f)
                    status = int(rsp.Status) if "Status" in rsp else None
                    error = None
                except Exception as exc:  # reported per file, as a peer would
                    status, error = None, f"{type(exc).__name__}: {exc}"
                results.append({"file": f, "status": status, "error": error})
                ok = ok and status == 0
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
    done = {r["file"] for r in results}
    results += [{"file": f, "status": None, "error": "not sent"} for f in files if f not in done]
    ok = ok and len(results) == len(files)
    _emit({"results": results})
    return 0 if ok else 1


def run_echo(args: argparse.Namespace) -> int:
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        _emit({"status": None, "error": "association failed"})
        return 1
    try:
        rsp = assoc.send_c_echo()
        status = int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()
    _emit({"status": status})
    return 0 if status == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    scp = sub.add_parser("scp")
    scp.add_argument("--out", required=True)
    scp.add_argument("--ready-file", required=True)
    scp.add_argument("--aet", default="PYNETDICOM")
    for name in ("store", "echo"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--aec", default="ANY-SCP")
        p.add_argument("--aet", default="PYNETDICOM_SCU")
        if name == "store":
            p.add_argument("--files-json", required=True)
    args = parser.parse_args(argv)
    return {"scp": run_scp, "store": run_store, "echo": run_echo}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
