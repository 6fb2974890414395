"""``python -m bench.qrbench``: C-FIND latency over a large index, C-GET throughput.

Theory of operation, two measurements:

* **C-FIND latency.** An index of ``--instances`` synthetic records (default 1,000,000:
  10,000 patients, 4 studies each, 5 series of 5 instances per study, study dates over
  five years, names from a small vocabulary in mixed case) is generated with
  ``Catalog.apply`` in batches, once, and cached in ``--cache`` (a SQLite file in WAL
  mode, a few hundred MB; its sidecar ``.done`` names the generator version and size).
  A :class:`bench.qrnode.QRNode` serves it on 127.0.0.1; an engine SCU on this
  process's loop sends each query kind ``--repeat`` times with random parameters, one
  association per kind, and times each C-FIND from request to final response. Query
  kinds: STUDY level by Patient ID, by a Patient's Name prefix (``SMITH^J*``, any case),
  by one Study Date, by an Accession Number, by a date range of one month with the
  number of related instances; IMAGE level within one series (hierarchical keys).
  Latency p50/p99 and responses per query are reported.
* **C-GET throughput.** ``--files`` CT instances of 512x512x16 bits (one study) are
  stored into a fresh node; DCMTK ``getscu --ignore`` retrieves the study from it, and,
  side by side, DCMTK ``storescu`` sends the same files to ``storescp --ignore``: both
  receivers discard what they get, so each number is what the sender streams from disk.
  The same again with both receivers writing what they get to disk (bit-preserving,
  ``+B``), the realistic case. Each is run ``--rounds`` times, alternating; instances/s
  and MB/s (data set bytes) are reported as medians.

Output: a markdown summary on stdout and in ``--out``/qr.md, and qr.json (every sample's
summary, the machine, the method). Nothing talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from bench.common import OneLineParser, positive_int
from bench.corpus import dataset_bytes, make_files
from bench.machine import machine_info
from bench.servers import REPO
from engine import IMPLEMENTATION_CLASS_UID, aio, build_context
from engine.dataset import encode_dataset
from engine.dimse import CFindRQ
from storage import InstanceRecord, SqliteCatalog

__all__ = ["main", "synthetic_record", "build_catalog", "QUERIES"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Bump when synthetic_record changes: a cached index of another version is rebuilt.
GENERATOR_VERSION = 1
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

# The shape of the synthetic archive (see the module docstring).
_PER_SERIES = 5
_SERIES_PER_STUDY = 5
_STUDIES_PER_PATIENT = 4
_PER_STUDY = _PER_SERIES * _SERIES_PER_STUDY
_DAYS = 5 * 365
_SURNAMES = ("SMITH", "Smith", "JONES", "Garcia", "MULLER", "Nguyen", "OBrien", "Kowalski", "Rossi",
             "Tanaka", "Dubois", "Silva", "Cohen", "Larsen", "Novak", "Moreau")
_GIVEN = ("JOHN", "Jane", "ANA", "Wei", "Ole", "Mia", "Luca", "Noor", "Ivan", "Sara")
_MODALITIES = ("CT", "MR", "CR", "US", "PT")
_BATCH = 20_000  # records per apply(): one transaction, as the indexer batches


def _date(day: int) -> str:
    import datetime

    return (datetime.date(2020, 1, 1) + datetime.timedelta(days=day)).strftime("%Y%m%d")


def synthetic_record(i: int) -> InstanceRecord:
    """Instance ``i`` of the synthetic archive: a pure function of ``i``."""
    study = i // _PER_STUDY
    series = i // _PER_SERIES
    patient = study // _STUDIES_PER_PATIENT
    name = f"{_SURNAMES[patient % len(_SURNAMES)]}{patient // 160}^{_GIVEN[(patient // 16) % len(_GIVEN)]}"
    study_uid = f"1.2.826.0.1.3680043.8.498.2.{study}"
    series_uid = f"{study_uid}.{series % _SERIES_PER_STUDY}"
    sop = f"1.2.826.0.1.3680043.8.498.3.{i}"
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=CT, study_instance_uid=study_uid, series_instance_uid=series_uid,
        patient_id=f"P{patient:06d}", patient_name=name, modality=_MODALITIES[study % len(_MODALITIES)],
        study_date=_date((study * 7919) % _DAYS), instance_number=str(i % _PER_SERIES + 1),
        transfer_syntax_uid=EXPLICIT, path=f"{study_uid}/{series_uid}/{sop}.dcm", size=530_000,
        digest=f"{i:064x}", calling_ae="MODALITY", called_ae="SCPFLEET", received_at=1_700_000_000.0 + i,
        study_time=f"{8 + study % 10:02d}{study % 60:02d}00", accession_number=f"A{study:08d}",
        study_id=str(study % 1000), study_description="Chest CT" if study % 3 else "Head",
        referring_physician_name="Referrer^Rita", patient_birth_date=f"19{40 + patient % 60:02d}0101",
        patient_sex="FM"[patient % 2],
        series_number=str(series % _SERIES_PER_STUDY + 1), series_description="Axial",
        body_part_examined="CHEST",
    )


def build_catalog(path: Path, instances: int) -> Path:
    """The cached index of ``instances`` synthetic records at ``path`` (built if missing
    or of another size or generator version)."""
    done = path.with_name(path.name + ".done")
    marker = f"{GENERATOR_VERSION} {instances}"
    if path.exists() and done.exists() and done.read_text() == marker:
        return path
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), done):
        stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with SqliteCatalog(path) as catalog:
        for start in range(0, instances, _BATCH):
            catalog.apply([synthetic_record(i) for i in range(start, min(start + _BATCH, instances))])
            if start and start % 200_000 == 0:
                print(f"  index: {start} rows, {time.monotonic() - started:.0f} s", file=sys.stderr)
    done.write_text(marker)
    print(f"  index of {instances} rows built in {time.monotonic() - started:.0f} s "
          f"({path.stat().st_size >> 20} MiB)", file=sys.stderr)
    return path


# ------------------------------------------------------------------ C-FIND latency


def _patients(instances: int) -> int:
    return max(1, instances // (_PER_STUDY * _STUDIES_PER_PATIENT))


def _query(kind: str, rnd: random.Random, instances: int) -> dict[str, Any]:
    studies = max(1, instances // _PER_STUDY)
    study = rnd.randrange(studies)
    patient = rnd.randrange(_patients(instances))
    base: dict[str, Any] = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "StudyDate": "",
                            "PatientName": "", "PatientID": "", "AccessionNumber": "", "ModalitiesInStudy": ""}
    if kind == "study-by-patient-id":
        base["PatientID"] = f"P{patient:06d}"
    elif kind == "study-by-name-prefix":
        surname = _SURNAMES[patient % len(_SURNAMES)].upper()
        base["PatientName"] = f"{surname}{patient // 160}^{_GIVEN[(patient // 16) % len(_GIVEN)][0]}*"
    elif kind == "study-by-date":
        base["StudyDate"] = _date(rnd.randrange(_DAYS))
    elif kind == "study-by-accession":
        base["AccessionNumber"] = f"A{study:08d}"
    elif kind == "study-by-month":
        day = rnd.randrange(_DAYS - 31)
        base["StudyDate"] = f"{_date(day)}-{_date(day + 30)}"
        base["NumberOfStudyRelatedInstances"] = ""
    elif kind == "image-in-series":
        series = rnd.randrange(_SERIES_PER_STUDY)
        base = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": f"1.2.826.0.1.3680043.8.498.2.{study}",
                "SeriesInstanceUID": f"1.2.826.0.1.3680043.8.498.2.{study}.{series}", "SOPInstanceUID": "",
                "InstanceNumber": "", "SOPClassUID": ""}
    else:
        raise ValueError(kind)
    return base


QUERIES = ("study-by-patient-id", "study-by-name-prefix", "study-by-date", "study-by-accession",
           "study-by-month", "image-in-series")


async def _find_latencies(node: Any, kind: str, repeat: int, instances: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(f"{seed}-{kind}")
    config = aio.RequestorConfig(calling_ae_title=b"QRBENCH".ljust(16), called_ae_title=node.ae_title.encode().ljust(16),
                                 contexts=[build_context(STUDY_ROOT_FIND, EXPLICIT)],
                                 implementation_class_uid=IMPLEMENTATION_CLASS_UID, maximum_pdu_size=131072,
                                 acse_timeout=60, dimse_timeout=120, network_timeout=120)
    assoc = await aio.associate(node.host, node.port, config)
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    cx = assoc.scu.find_context(STUDY_ROOT_FIND)
    times: list[float] = []
    matches: list[int] = []
    for n in range(repeat):
        ds = Dataset()
        for keyword, value in _query(kind, rnd, instances).items():
            setattr(ds, keyword, value)
        identifier = encode_dataset(ds, EXPLICIT)
        count = 0

        def pending(rsp: Any, data: bytes | None) -> None:
            nonlocal count
            count += 1

        started = time.perf_counter()
        rsp, _ = await assoc.scu.exchange(cx.context_id, CFindRQ(message_id=n % 65535 + 1,
                                                                  affected_sop_class_uid=STUDY_ROOT_FIND),
                                          identifier, on_pending=pending)
        times.append(time.perf_counter() - started)
        if rsp is None or rsp.status != 0:
            raise RuntimeError(f"{kind}: C-FIND answered {rsp!r}")
        matches.append(count)
    await assoc.release()
    times.sort()
    return {
        "kind": kind, "repeat": repeat,
        "p50_ms": round(1000 * statistics.median(times), 2),
        "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        "max_ms": round(1000 * times[-1], 2),
        "matches_median": statistics.median(matches),
    }


class _Served:
    """A QRNode in a process of its own (``python -m bench.qrnode``), always stopped."""

    def __init__(self, root: Path, catalog: Path | None = None) -> None:
        from bench.procs import ProcessGroup

        ready = root.with_name(root.name + ".ready")
        argv = [sys.executable, "-m", "bench.qrnode", str(root), "--ready-file", str(ready)]
        if catalog is not None:
            argv += ["--catalog", str(catalog)]
        self.group = ProcessGroup.logged(argv, root.parent, root.name + "-node", cwd=REPO)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.group.poll() is not None or time.monotonic() > deadline:
                tail = self.group.log_tail()
                self.group.kill()
                raise RuntimeError(f"the Q/R node did not start: {tail}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.host, self.port, self.ae_title = "127.0.0.1", int(info["port"]), str(info["ae_title"])

    def stop(self) -> None:
        self.group.stop(grace=30.0)


def find_latency(catalog: Path, instances: int, repeat: int, seed: int, work: Path) -> list[dict[str, Any]]:
    node = _Served(work / "find-node", catalog)
    try:
        async def main() -> list[dict[str, Any]]:
            return [await _find_latencies(node, kind, repeat, instances, seed) for kind in QUERIES]

        with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
            return runner.run(main())
    finally:
        node.stop()


# ------------------------------------------------------------------ C-GET throughput


def _run(argv: Sequence[str], expect: str | None = None, count: int = 0, timeout: float = 600) -> float:
    """Run a DCMTK tool; its wall time. ``expect``: a log line that must appear ``count``
    times (each sub-operation or store acknowledged), else the run is an error."""
    import subprocess

    env = dict(os.environ, TCP_NODELAY="1")
    started = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", env=env, timeout=timeout)
    elapsed = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0 or (expect is not None and log.count(expect) != count):
        raise RuntimeError(f"{argv[0]} failed: {log[-2000:]}")
    return elapsed


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def get_throughput(files_count: int, rounds: int, work: Path) -> dict[str, Any]:
    from bench.dcmtk import dcmtk_tool
    from bench.servers import free_port

    tools = {name: dcmtk_tool(name) for name in ("getscu", "storescu", "storescp")}
    if not all(tools.values()):
        raise RuntimeError("DCMTK getscu, storescu and storescp are needed")
    files = make_files(work / "files", {"ct": files_count})
    import pydicom

    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    for path in files:  # one study, so one C-GET retrieves them all
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path, enforce_file_format=True)
    payload = sum(len(dataset_bytes(p)) for p in files)
    samples: dict[str, list[float]] = {"scpfleet C-GET (getscu --ignore)": [],
                                       "DCMTK storescu -> storescp --ignore": [],
                                       "scpfleet C-GET (getscu +B, to disk)": [],
                                       "DCMTK storescu -> storescp +B, to disk": []}
    received = work / "received"
    node = _Served(work / "get-node")
    try:
        _run([tools["storescu"], "-aec", node.ae_title, "-xe", node.host, str(node.port), *map(str, files)])
        port = free_port()
        from bench.procs import ProcessGroup

        received.mkdir()
        receiver = ProcessGroup([tools["storescp"], "--ignore", "-pdu", "131072", "-dhl", str(port)],
                                env=dict(os.environ, TCP_NODELAY="1"))
        port_b = free_port()
        writer = ProcessGroup([tools["storescp"], "+B", "-od", str(received), "-pdu", "131072", "-dhl", str(port_b)],
                              env=dict(os.environ, TCP_NODELAY="1"))
        try:
            time.sleep(0.5)
            for _ in range(rounds):
                _clear(received)
                samples["scpfleet C-GET (getscu +B, to disk)"].append(_run(
                    [tools["getscu"], "-v", "+B", "-od", str(received), "-S", "-pdu", "131072", "-aec", node.ae_title,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", node.host, str(node.port)],
                    f"Number of Completed Suboperations : {files_count}\n", 1))
                _clear(received)
                samples["DCMTK storescu -> storescp +B, to disk"].append(_run(
                    [tools["storescu"], "-v", "-xe", "-pdu", "131072", "127.0.0.1", str(port_b), *map(str, files)],
                    "Received Store Response (Success)", files_count))
                samples["scpfleet C-GET (getscu --ignore)"].append(_run(
                    [tools["getscu"], "-v", "--ignore", "-S", "-pdu", "131072", "-aec", node.ae_title,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", node.host, str(node.port)],
                    f"Number of Completed Suboperations : {files_count}\n", 1))
                samples["DCMTK storescu -> storescp --ignore"].append(_run(
                    [tools["storescu"], "-v", "-xe", "-pdu", "131072", "127.0.0.1", str(port), *map(str, files)],
                    "Received Store Response (Success)", files_count))
        finally:
            receiver.stop()
            writer.stop()
    finally:
        node.stop()
    out = {"files": files_count, "data_set_bytes": payload, "rounds": rounds, "senders": {}}
    for name, times in samples.items():
        median = statistics.median(times)
        out["senders"][name] = {"seconds_median": round(median, 3),
                                "instances_per_s": round(files_count / median, 1),
                                "mb_per_s": round(payload / median / 1e6, 1)}
    return out


# ------------------------------------------------------------------ main


def render(report: dict[str, Any]) -> str:
    lines = ["# Query/retrieve benchmark", "",
             f"C-FIND over an index of {report['instances']:,} instances "
             f"({report['repeat']} queries per kind, one association per kind):", "",
             "| query | p50 ms | p99 ms | max ms | matches (median) |", "|---|---:|---:|---:|---:|"]
    for row in report.get("find", []):
        lines.append(f"| {row['kind']} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} | "
                     f"{row['matches_median']} |")
    get = report.get("get")
    if get:
        lines += ["", f"C-GET of one study of {get['files']} CT instances "
                      f"({get['data_set_bytes'] / 1e6:.0f} MB of data sets), median of {get['rounds']} rounds; "
                      "the DCMTK receivers discard (--ignore) or write (+B) what they get:", "",
                  "| sender | s | instances/s | MB/s |", "|---|---:|---:|---:|"]
        for name, row in get["senders"].items():
            lines.append(f"| {name} | {row['seconds_median']} | {row['instances_per_s']} | {row['mb_per_s']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.qrbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=positive_int, default=1_000_000, help="index size (default 1,000,000)")
    parser.add_argument("--repeat", type=positive_int, default=200, help="queries per kind (default 200)")
    parser.add_argument("--files", type=positive_int, default=200, help="CT instances for C-GET (default 200)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="C-GET rounds (default 5)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scpfleet-qrbench",
                        help="where the generated index is kept between runs")
    parser.add_argument("--skip-find", action="store_true", help="only the C-GET measurement")
    parser.add_argument("--skip-get", action="store_true", help="only the C-FIND measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report: dict[str, Any] = {"instances": args.instances, "repeat": args.repeat, "machine": machine_info(),
                              "method": __doc__}
    with tempfile.TemporaryDirectory(prefix="qrbench-") as work:
        if not args.skip_find:
            catalog = build_catalog(args.cache / f"index-{args.instances}.sqlite", args.instances)
            report["find"] = find_latency(catalog, args.instances, args.repeat, args.seed, Path(work))
        if not args.skip_get:
            report["get"] = get_throughput(args.files, args.rounds, Path(work))
    text = render(report)
    sys.stdout.write(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qr.md").write_text(text)
    (args.out / "qr.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
