"""``python -m bench.durability`` (bench/durability.py): batch beside fsync, on disk.

The quickest real run -- one association, one second per durability -- against this
checkout's node, its storage in tmp_path: both runs pass (no failure, the files stored
are exactly those acknowledged) and the results say so; the summary is checked on made
up records. It asserts no speed: timing belongs in the benchmark's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import durability
from tests.bench import REPO

#: Two node starts and two one-second loads on 2 busy CPUs; a hang must still end it.
RUN_TIMEOUT_S = 120


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.durability", *args], cwd=REPO, capture_output=True,
        text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )


def test_quickest_run_passes_both_durabilities(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _run("--associations", "1", "--duration", "1", "--workers", "1",
                  "--storage-dir", str(tmp_path / "disk"), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "durability.json").read_text())
    assert {(r["durability"], r["associations"]) for r in data["runs"]} == {("fsync", 1), ("batch", 1)}
    for run in data["runs"]:
        assert run["ok"] and run["reason"] is None, run
        assert run["instances"] == run["stored"] > 0
        assert run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0
    assert data["config"]["file_creation_cpu_us"] > 0
    assert str(tmp_path) not in (out / "durability.md").read_text()  # no machine paths
    assert not list((tmp_path / "disk").iterdir())  # the storage folder is removed


def test_usage_errors_are_one_line() -> None:
    for bad in (["--associations", "0"], ["--associations", "1,500"], ["--duration", "-1"]):
        result = _run(*bad)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _record(mode: str, associations: int, rate: float, p99: float, ok: bool = True) -> dict:
    return {"repeat": 0, "durability": mode, "associations": associations, "ok": ok,
            "reason": None if ok else "broken", "instances_per_s": rate if ok else None,
            "latency_ms": {"p50": p99 / 2, "p99": p99} if ok else None}


def test_summary_takes_medians_of_passing_runs_and_ratios() -> None:
    records = [_record("fsync", 4, 100, 10), _record("fsync", 4, 300, 30), _record("fsync", 4, 200, 20),
               _record("batch", 4, 400, 8), _record("batch", 4, 0, 0, ok=False)]
    [row] = durability.summarize(records)
    assert row["fsync"]["instances_per_s"] == 200 and row["fsync"]["p99_ms"] == 20
    assert row["batch"]["passed"] == 1 and row["batch"]["reasons"] == ["broken"]
    assert row["throughput_batch_over_fsync"] == pytest.approx(2.0)
    assert row["p99_batch_over_fsync"] == pytest.approx(0.4)


def test_clear_keeps_the_temporary_folder(tmp_path: Path) -> None:
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "left.part").write_bytes(b"x")
    (tmp_path / "1.2.3" / "4.5").mkdir(parents=True)
    (tmp_path / "index.sqlite").write_bytes(b"x")
    durability._clear(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".tmp"]
    assert not list((tmp_path / ".tmp").iterdir())
