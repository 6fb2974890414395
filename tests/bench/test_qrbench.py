"""``python -m bench.qrbench`` (bench/qrbench.py): the quickest real run.

A 2,500-instance index, 3 queries per kind, a C-GET of 4 CT instances in one round:
every query kind is answered, the index is cached and reused, both senders deliver every
instance (the benchmark checks the counts itself and fails otherwise). It asserts no
speed; timing belongs in the benchmark's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.qrbench import QUERIES, synthetic_record
from tests import peers
from tests.bench import REPO

RUN_TIMEOUT_S = 120  # ~10 s on 2 busy CPUs


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.qrbench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_synthetic_records_are_a_function_of_their_number() -> None:
    assert synthetic_record(12345) == synthetic_record(12345)
    a, b = synthetic_record(0), synthetic_record(24)
    assert a.study_instance_uid == b.study_instance_uid != synthetic_record(25).study_instance_uid


@pytest.mark.interop
def test_quickest_run(tmp_path: Path) -> None:
    peers.require_dcmtk()
    args = ("--instances", "2500", "--repeat", "3", "--files", "4", "--rounds", "1",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    done = _run(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "qr.json").read_text())
    assert [row["kind"] for row in report["find"]] == list(QUERIES)
    assert all(row["p50_ms"] > 0 for row in report["find"])
    found = {row["kind"]: row["matches_median"] for row in report["find"]}
    # A few hundred studies spread over five years: a given date often has none.
    assert found["study-by-patient-id"] == 4 and found["study-by-accession"] == 1
    assert found["image-in-series"] == 5 and found["study-by-name-prefix"] >= 4
    assert len(report["get"]["senders"]) == 4
    assert "| study-by-patient-id |" in (tmp_path / "out" / "qr.md").read_text()
    again = _run(*args[:-2], "--skip-get", "--out", str(tmp_path / "again"))  # the cached index
    assert again.returncode == 0 and "built" not in again.stderr, again.stderr[-2000:]
