"""``python -m bench.compare`` (bench/compare.py): the side-by-side benchmark.

A smoke run of the smallest matrix (tiny instances, 2 associations, one repeat, scpfleet
serve against DCMTK storescp and pynetdicom, both clients) checks that every cell runs,
is verified by counting stored files, and lands in latest.md/json(/png) with no machine
path in them. It asserts no speed: timing belongs in the benchmark's own output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import compare
from tests import peers
from tests.bench import REPO

#: The smoke run takes ~15 s on 2 busy CPUs; a hang must still end the test.
SMOKE_TIMEOUT_S = 90


def _run(*args: str, timeout: float = SMOKE_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.compare", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.interop
def test_compare_smoke_smallest_matrix(tmp_path: Path) -> None:
    peers.require_dcmtk()
    cpus = os.cpu_count() or 1
    ours = compare.reference_key(cpus)
    out = tmp_path / "results"
    result = _run("--quick", "--repeat", "1", "--loads", "tiny", "--associations", "2",
                  "--servers", f"{ours},storescp,pynetdicom", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "latest.json").read_text())
    cells = data["cells"]
    expected = compare.LOADS["tiny"].quick
    assert {(c["server"], c["client"]) for c in cells} == {
        (s, c) for s in (ours, "storescp", "pynetdicom") for c in ("storescu", "load")}
    for cell in cells:
        assert cell["ok"], cell
        assert cell["stored"] == cell["expected"] == expected and cell["failures"] == 0
        assert cell["wall_s"] > 0 and cell["instances_per_s"] > 0
    assert all(c["latency_ms"]["count"] == expected for c in cells if c["client"] == "load")
    assert data["machine"]["cpus"] == cpus and data["machine"]["dcmtk"]
    rows = {(r["server"], r["client"]): r for r in data["summary"]}
    assert rows[("storescp", "load")]["ratio"] > 0 and rows[(ours, "load")]["ratio"] == 1.0

    text = (out / "latest.md").read_text()
    assert "## Instances per second (median)" in text and "## Failures" in text
    assert "None: all 6 cells stored exactly the expected files" in text
    for name in ("latest.md", "latest.json"):
        body = (out / name).read_text()
        assert str(tmp_path) not in body and str(REPO) not in body  # no machine paths
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_usage_error_is_one_line(tmp_path: Path) -> None:
    result = _run("--servers", "nonesuch", "--out", str(tmp_path), timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--servers" in result.stderr
    assert not (tmp_path / "latest.md").exists()


def test_load_shape_splits_associations_exactly() -> None:
    assert compare.load_shape(1, 2) == (1, 1)
    assert compare.load_shape(4, 2) == (2, 2)
    assert compare.load_shape(16, 2) == (2, 8)
    assert compare.load_shape(3, 2) == (1, 3)  # 3 does not split over 2 processes
    assert compare.load_shape(16, 1) == (1, 16)


def test_default_matrix_leaves_out_only_what_full_adds() -> None:
    assert not compare.in_matrix("big", 16, "storescp", full=False)
    assert compare.in_matrix("big", 16, "storescp", full=True)
    assert not compare.in_matrix("tiny", 1, "orthanc", full=False)
    assert compare.in_matrix("tiny", 1, "pynetdicom", full=False)
    assert compare.in_matrix("tiny", 4, "orthanc", full=False)


def test_summarize_medians_and_ratios_skip_failed_repeats() -> None:
    def cell(server: str, rate: float | None, ok: bool = True) -> dict:
        return {"load": "tiny", "associations": 4, "client": "load", "server": server,
                "ok": ok, "reason": None if ok else "boom", "instances_per_s": rate,
                "mb_per_s": rate, "wall_s": 1.0,
                "latency_ms": {"p50": 1.0, "p99": 2.0} if ok else None}

    ours = compare.reference_key(2)
    rows = compare.summarize([
        cell(ours, 900.0), cell(ours, 1000.0), cell(ours, 5000.0),
        cell("pynetdicom", 100.0), cell("pynetdicom", None, ok=False), cell("pynetdicom", 200.0),
    ], 2)
    by = {r["server"]: r for r in rows}
    assert by[ours]["instances_per_s"] == 1000.0 and by[ours]["passed"] == 3
    assert by["pynetdicom"]["instances_per_s"] == 150.0
    assert by["pynetdicom"]["passed"] == 2 and by["pynetdicom"]["reasons"] == ["boom"]
    assert by["pynetdicom"]["ratio"] == pytest.approx(1000 / 150, rel=1e-3)
