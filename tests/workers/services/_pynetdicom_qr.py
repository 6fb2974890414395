"""pynetdicom as the Storage Commitment SCU and as a C-GET SCU that cancels, run as a
subprocess by the tests (never imported), so its threads never share our interpreter.

Modes (every one prints one JSON object on its last stdout line; exit status 0 when it
ran to the end, whatever the statuses):

  commit --host H --port P --aec A --aet B --request F [--early-release] [--wait S]
      Storage Commitment SCU: an association proposing the Storage Commitment Push
      Model SOP class, one N-ACTION-RQ (action type 1) with the Transaction UID and
      references of the JSON file F ({"transaction": uid, "references": [[class,
      instance], ...]}), then waits up to S seconds for the N-EVENT-REPORT on it. With
      --early-release the association is released right after the N-ACTION-RSP (the
      report then comes to a `listen` process). Prints {"action_status", "reports":
      [{"via": "same"|"new", "event_type", "transaction", "committed": [[c, i]...],
      "failed": [[c, i, reason]...]}]}.
  listen --aet B --ready-file R --wait S [--count N] [--reject]
      A listening AE (127.0.0.1, port 0, written to R as {"port": n}) that accepts the
      reporting node's proposal to be SCP of the Storage Commitment SOP class (role
      selection); prints the reports received within S seconds (or once N came).
      --reject refuses every association.
  get-cancel --host H --port P --aec A --aet B --study UID --cancel-after N --out DIR
      C-GET (Study Root, STUDY level) of study UID, proposing CT, MR and SC Image
      Storage (Explicit VR LE) with the SCP role; after N stores have been received it sends C-CANCEL.
      Prints {"final_status", "completed", "failed", "warning", "remaining", "stored"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelGet,
)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _report(event: evt.Event, via: str) -> dict:
    info = event.event_information
    committed = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
                 for i in info.get("ReferencedSOPSequence", [])]
    failed = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason)]
              for i in info.get("FailedSOPSequence", [])]
    return {"via": via, "event_type": event.event_type, "transaction": str(info.TransactionUID),
            "committed": committed, "failed": failed}


class _Reports:
    def __init__(self, count: int) -> None:
        self.items: list[dict] = []
        self.count = count
        self.done = threading.Event()
        self.lock = threading.Lock()

    def handler(self, via: str):
        def on_report(event: evt.Event):
            try:
                item = _report(event, via)
            except Exception as exc:  # a malformed report is a finding, not a crash
                item = {"via": via, "error": repr(exc)}
            with self.lock:
                self.items.append(item)
                if len(self.items) >= self.count:
                    self.done.set()
            return 0x0000, None
        return on_report


def _listener(aet: str, reports: _Reports, reject: bool = False):
    ae = AE(ae_title=aet)
    # Accept the reporting node's proposal to be SCP of the class (we are then SCU).
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    if reject:
        ae.require_calling_aet = ["NOBODY-AT-ALL"]
    return ae.start_server(("127.0.0.1", 0), block=False,
                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler("new"))])


def run_commit(args: argparse.Namespace) -> int:
    request = json.loads(Path(args.request).read_text())
    reports = _Reports(1)
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(args.host, args.port, ae_title=args.aec,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler("same"))])
    out: dict = {"action_status": None, "reports": []}
    try:
        if not assoc.is_established:
            out["error"] = "association not established"
            _emit(out)
            return 0
        ds = Dataset()
        ds.TransactionUID = request["transaction"]
        items = []
        for sop_class, sop_instance in request["references"]:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = items
        status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        out["action_status"] = int(status.Status) if "Status" in status else None
        if args.early_release:
            assoc.release()
        else:
            reports.done.wait(args.wait)
    finally:
        if assoc.is_established:
            assoc.release()
    out["reports"] = reports.items
    _emit(out)
    return 0


def run_listen(args: argparse.Namespace) -> int:
    reports = _Reports(args.count)
    server = _listener(args.aet, reports, reject=args.reject)
    tmp = Path(args.ready_file + ".tmp")
    tmp.write_text(json.dumps({"port": server.server_address[1]}))
    os.replace(tmp, args.ready_file)
    reports.done.wait(args.wait)
    server.shutdown()
    _emit({"reports": reports.items})
    return 0


def run_get_cancel(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    stored = []
    state = {"cancelled": False}

    def on_store(event: evt.Event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(out_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        stored.append(str(ds.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=args.aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)  # how the study is stored
        roles.append(build_role(sop_class, scp_role=True))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    result: dict = {"final_status": None}
    if not assoc.is_established:
        result["error"] = "association not established"
        _emit(result)
        return 0
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = args.study
    try:
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=7):
            if "Status" not in status:
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if len(stored) >= args.cancel_after and not state["cancelled"]:
                    state["cancelled"] = True
                    assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelGet)
                continue
            result["final_status"] = code
            for name, key in (("completed", "NumberOfCompletedSuboperations"),
                              ("failed", "NumberOfFailedSuboperations"),
                              ("warning", "NumberOfWarningSuboperations"),
                              ("remaining", "NumberOfRemainingSuboperations")):
                result[name] = int(status[key].value) if key in status else None
    finally:
        assoc.release()
    result["stored"] = len(stored)
    _emit(result)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    commit = sub.add_parser("commit")
    for name in ("--host", "--aec", "--aet", "--request"):
        commit.add_argument(name, required=True)
    commit.add_argument("--port", type=int, required=True)
    commit.add_argument("--early-release", action="store_true")
    commit.add_argument("--wait", type=float, default=20.0)
    listen = sub.add_parser("listen")
    listen.add_argument("--aet", required=True)
    listen.add_argument("--ready-file", required=True)
    listen.add_argument("--wait", type=float, default=20.0)
    listen.add_argument("--count", type=int, default=1)
    listen.add_argument("--reject", action="store_true")
    get = sub.add_parser("get-cancel")
    for name in ("--host", "--aec", "--aet", "--study", "--out"):
        get.add_argument(name, required=True)
    get.add_argument("--port", type=int, required=True)
    get.add_argument("--cancel-after", type=int, required=True)
    args = parser.parse_args()
    started = time.monotonic()
    code = {"commit": run_commit, "listen": run_listen, "get-cancel": run_get_cancel}[args.mode](args)
    sys.stderr.write(f"{args.mode} done in {time.monotonic() - started:.2f} s\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
