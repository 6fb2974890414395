"""``python -m bench.throughput`` (bench/throughput.py): this node's instances/s beside
another checkout's.

The quickest real run -- 30 tiny instances, one repeat, this checkout on both sides --
must measure both nodes, write its table and JSON without machine paths, and exit 0; bad
arguments are one line and exit 2. It asserts no speed: timing belongs in the
benchmark's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench import REPO

#: The quick run takes a few seconds; a hang must still end the test.
RUN_TIMEOUT_S = 120


def _run(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.throughput", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_quickest_run_measures_both_nodes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _run("--scpfleet-checkout", str(REPO), "--count", "30", "--repeat", "1",
                  "--loads", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "throughput.json").read_text())
    assert {(r["node"], r["load"]) for r in data["runs"]} == {("this", "tiny"), ("other", "tiny")}
    for run in data["runs"]:
        assert run["ok"] and run["reason"] is None and run["instances"] == 30, run
        assert run["instances_per_s"] > 0 and run["mb_per_s"] > 0
    (row,) = data["rows"]
    assert row["load"] == "tiny" and row["this"]["runs"] == row["other"]["runs"] == 1
    assert row["ratio"] == round(row["this"]["instances_per_s"] / row["other"]["instances_per_s"], 2)
    text = (out / "throughput.md").read_text()
    assert text in result.stdout and "| tiny (2,048 B) | 30 |" in text and "Failures: none." in text
    for name in ("throughput.md", "throughput.json"):
        body = (out / name).read_text()
        assert str(tmp_path) not in body and str(REPO) not in body  # no machine paths


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in ([], ["--scpfleet-checkout", str(tmp_path)],
                 ["--scpfleet-checkout", str(REPO), "--loads", "nonesuch"],
                 ["--scpfleet-checkout", str(REPO), "--count", "0"]):
        result = _run(*args, "--out", str(tmp_path), timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "error" in result.stderr
    assert not (tmp_path / "throughput.md").exists()
