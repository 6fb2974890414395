"""Fixtures of the Q/R and Storage Commitment tests: a corpus with query attributes of
every kind, a node's services filled with it through its own Storage SCP, and an engine
SCU for what real peers will not send.

Theory of operation: :func:`corpus` writes 12 instances (three patients, three studies,
six series; CT, MR and SC; Explicit VR LE, one Implicit VR LE; a Latin-1 name; names
differing only in case) once per session. :func:`filled` stores them with DCMTK
storescu into a :class:`bench.qrnode.QRNode`, whose journal feeds its catalog, and
stops it; a test module then serves that storage root with a node of its own
(``qr_node``), so every query runs against what the Storage SCP really recorded. Every
node and peer is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from bench.corpus import make_dataset, make_uid, write_part10
from bench.qrnode import QRNode
from engine import aio, build_context
from engine.dataset import decode_dataset
from tests.peers import require_dcmtk, run_storescu

IMPLICIT = "1.2.840.10008.1.2"


@dataclass(frozen=True)
class Instance:
    path: Path
    ds: Dataset

    @property
    def uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


# (patient id, name, birth date, sex), studies: (date, time, accession, description,
# series: [(kind, count, transfer syntax)])
_PATIENTS = [
    (("PID1", "Doe^Jane", "19700101", "F"),
     [("20240102", "093000", "ACC1", "Chest CT", [("ct", 3, None), ("mr", 2, None)])]),
    (("PID2", "doe^john", "19800202", "M"),
     [("20231231", "2300", "ACC2", "Head MR", [("mr", 2, None), ("sc", 1, None)])]),
    (("PID3", "Müller^Jürgen", "19550505", "O"),
     [("20240315", "101500.5", "ACC3", "Chest CT", [("ct", 2, IMPLICIT)]),
      ("20240316", "080000", "ACC4", "Abdomen", [("ct", 2, None)])]),
]
_MODALITY = {"ct": "CT", "mr": "MR", "sc": "OT"}


def build_corpus(directory: Path) -> list[Instance]:
    out = []
    for p, ((pid, name, birth, sex), studies) in enumerate(_PATIENTS):
        for s, (date, time_, accession, description, series) in enumerate(studies):
            study_uid = make_uid("qr-study", p, s)
            for r, (kind, count, ts) in enumerate(series):
                series_uid = make_uid("qr-series", p, s, r)
                for i in range(count):
                    ds = make_dataset(kind, transfer_syntax=ts, study_uid=study_uid, series_uid=series_uid,
                                      sop_instance_uid=make_uid("qr-sop", p, s, r, i), patient_id=pid,
                                      instance_number=i + 1)
                    ds.PatientName = name
                    ds.PatientBirthDate = birth
                    ds.PatientSex = sex
                    ds.StudyDate = date
                    ds.StudyTime = time_
                    ds.AccessionNumber = accession
                    ds.StudyDescription = description
                    ds.StudyID = f"S{p}{s}"
                    ds.SeriesNumber = r + 1
                    ds.Modality = _MODALITY[kind]
                    ds.BodyPartExamined = "CHEST" if "Chest" in description else "HEAD"
                    path = write_part10(ds, directory / f"{pid}-{s}-{r}-{i}.dcm")
                    out.append(Instance(path, pydicom.dcmread(path)))
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Instance]:
    return build_corpus(tmp_path_factory.mktemp("qr-corpus"))


def store_all(node: QRNode, paths: list[Path], log_dir: Path) -> None:
    require_dcmtk()
    result = run_storescu(node.host, node.port, paths, aec=node.ae_title, log_dir=log_dir)
    result.check_ok()


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory, corpus: list[Instance]) -> Path:
    """A storage root holding the corpus, stored through the node's Storage SCP."""
    root = tmp_path_factory.mktemp("qr-filled")
    with QRNode(root) as node:
        store_all(node, [i.path for i in corpus], root.parent / "logs")
        assert node.call(lambda: node.catalog.count()) == len(corpus)
    return root


@pytest.fixture
def copy_of_filled(filled: Path, tmp_path: Path) -> Path:
    """A private copy of the filled root (for tests that change it)."""
    root = tmp_path / "root"
    shutil.copytree(filled, root, ignore=shutil.ignore_patterns(".journal"))
    return root


@pytest.fixture(scope="module")
def qr_node(filled: Path) -> Iterator[QRNode]:
    """A node serving the filled root (read only by the tests using it)."""
    with QRNode(filled) as node:
        yield node


# -------------------------------------------------------------------- an engine SCU


def run(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        return runner.run(main())


async def associate(node: QRNode, contexts: list[Any], calling: str = "ENGINESCU") -> aio.Association:
    config = aio.RequestorConfig(
        calling_ae_title=calling.encode().ljust(16),
        called_ae_title=node.ae_title.encode().ljust(16),
        contexts=contexts,
        implementation_class_uid="1.2.826.0.1.3680043.8.498.77",
        acse_timeout=15, dimse_timeout=15, network_timeout=15,
    )
    assoc = await aio.associate(node.host, node.port, config)
    assert assoc.is_established
    return assoc


def exchange(node: QRNode, sop_class: str, message: Any, identifier: bytes | None,
             ts: str = "1.2.840.10008.1.2.1") -> tuple[Any, list[tuple[Any, Dataset | None]], Dataset | None]:
    """Send one request on a fresh association; (final response, pending responses with
    their decoded data sets, the final response's data set)."""
    pendings: list[tuple[Any, Dataset | None]] = []

    async def main() -> Any:
        assoc = await associate(node, [build_context(sop_class, ts)])
        cx = assoc.scu.find_context(sop_class)
        rsp, data = await assoc.scu.exchange(
            cx.context_id, message, identifier,
            on_pending=lambda r, d: pendings.append((r, decode_dataset(d, ts) if d else None)))
        await assoc.release()
        return rsp, (decode_dataset(data, ts) if data else None)

    rsp, data = run(main)
    return rsp, pendings, data
