"""``python -m bench.cpucost`` (bench/cpucost.py): server CPU per stored instance.

The quickest real run -- 20 tiny instances, one repeat, no strace -- against scpfleet
serve, DCMTK storescp and a second scpfleet that rejects every association (a broken
server): the two good servers come back with positive CPU numbers that add up, the
broken one as a failed run with its reason and no number, and the command exits 1. It
asserts no speed: timing belongs in the benchmark's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cpucost
from tests import peers
from tests.bench import REPO

#: The quick run takes ~8 s on 2 busy CPUs; a hang must still end the test.
RUN_TIMEOUT_S = 90


def _run(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.cpucost", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.interop
def test_quickest_run_measures_good_servers_and_fails_a_broken_one(tmp_path: Path) -> None:
    peers.require_dcmtk()
    out = tmp_path / "results"
    result = _run("--count", "20", "--repeat", "1", "--loads", "tiny",
                  "--servers", "scpfleet,scpfleet-b,storescp",
                  "--scpfleet-args", "--require-calling-aet NOPE",
                  "--scpfleet-env", "SCPFLEET_PURE_PYTHON=1", "--out", str(out))
    assert result.returncode == 1, result.stdout + result.stderr  # one run failed
    data = json.loads((out / "cpucost.json").read_text())
    assert data["config"]["method"]["name"] in ("cgroup", "proc")
    assert data["config"]["loads"]["tiny"][0] == 20
    runs = {r["server"]: r for r in data["runs"]}
    assert set(runs) == {"scpfleet", "scpfleet-b", "storescp"}
    for key in ("scpfleet", "storescp"):
        run = runs[key]
        assert run["ok"] and run["reason"] is None, run
        assert run["stored"] == run["expected"] == 20
        per = run["cpu_ms_per_instance"]
        assert per["user"] >= 0 and per["system"] >= 0 and per["total"] > 0
        assert per["total"] == pytest.approx(per["user"] + per["system"], abs=1e-3)
        assert run["cpu_ms_per_mb"] > 0 and run["wall_s"] > 0
        assert run["cpu_us"]["total"] == run["cpu_us"]["user"] + run["cpu_us"]["system"]

    # The node's processes by role: their exact run times add up to the tree's total
    # where a cgroup measured it (the /proc fallback's total is in ticks).
    node = runs["scpfleet"]["processes"]
    assert set(node) == {cpucost.LEADER, "scpfleet-listen", "scpfleet-worker", "scpfleet-indexe"}
    assert node["scpfleet-worker"]["count"] == 2 and node["scpfleet-worker"]["run_us"] > 0
    if data["config"]["method"]["name"] == "cgroup":
        counted = sum(p["run_us"] for p in node.values())
        assert counted == pytest.approx(runs["scpfleet"]["cpu_ms_per_instance"]["total"] * 1000,
                                        rel=0.05)

    broken = runs["scpfleet-b"]
    assert not broken["ok"] and broken["cpu_ms_per_instance"] is None
    assert broken["cpu_ms_per_mb"] is None and "storescu exited non-zero" in broken["reason"]
    rows = {r["server"]: r for r in data["summary"]}
    assert rows["scpfleet-b"]["passed"] == 0 and rows["scpfleet-b"]["cpu_ms_per_instance"]["total"] is None
    assert rows["storescp"]["ratio_vs_storescp"] == 1.0 and rows["scpfleet"]["ratio_vs_storescp"] > 0

    text = (out / "cpucost.md").read_text()
    assert text in result.stdout
    assert "| scpfleet B (2w, none, --require-calling-aet NOPE, SCPFLEET_PURE_PYTHON=1) | FAILED |" in text
    assert "with SCPFLEET_PURE_PYTHON=1" in text
    assert "## Failures" in text and "Calling AE Title Not Recognized" in text
    assert "| tiny (~2 kB) | scpfleet serve (2w, none) | workers | 2 |" in text
    assert "| tiny (~2 kB) | scpfleet serve (2w, none) | supervisor | 1 |" in text
    assert "storescp --fork | supervisor" not in text  # only the node's processes
    for name in ("cpucost.md", "cpucost.json"):
        body = (out / name).read_text()
        assert str(tmp_path) not in body and str(REPO) not in body  # no machine paths


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (["--servers", "nonesuch"], ["--servers", "scpfleet-b"], ["--count", "0"],
                 ["--scpfleet-checkout", str(tmp_path)], ["--scpfleet-env", "NOEQUALS"]):
        result = _run(*args, "--out", str(tmp_path), timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "error:" in result.stderr
    assert not (tmp_path / "cpucost.md").exists()


def test_summary_takes_medians_of_passing_runs_and_ratios() -> None:
    def run(server: str, total: float | None) -> dict:
        ok = total is not None
        return {"load": "tiny", "server": server, "ok": ok, "reason": None if ok else "boom",
                "wall_s": 1.0, "cpu_ms_per_mb": total,
                "cpu_ms_per_instance": {"user": total / 2, "system": total / 2, "total": total}
                if ok else None}

    rows = cpucost.summarize([
        run("scpfleet", 0.3), run("scpfleet", 0.5), run("scpfleet", 0.4),
        run("storescp", 0.1), run("storescp", None), run("orthanc", 0.8),
    ], [{"load": "tiny", "server": "scpfleet", "ok": True, "reason": None,
         "per_instance": {"write": 4.0, "read": 2.0}, "per_instance_total": 6.0}])
    by = {r["server"]: r for r in rows}
    assert by["scpfleet"]["cpu_ms_per_instance"]["total"] == 0.4
    assert by["scpfleet"]["cpu_ms_per_instance_range"] == [0.3, 0.5]
    assert by["scpfleet"]["ratio_vs_storescp"] == 4.0
    assert by["scpfleet"]["ratio_vs_orthanc"] == 0.5
    assert by["scpfleet"]["syscalls_per_instance"] == 6.0
    assert by["storescp"]["passed"] == 1 and by["storescp"]["reasons"] == ["boom"]
    assert by["orthanc"]["syscalls_per_instance"] is None
    assert by["scpfleet"]["processes"] is None  # these runs recorded none


def test_summary_takes_medians_per_process_of_the_passing_runs() -> None:
    def run(worker_us: float | None, indexer: bool = True) -> dict:
        ok = worker_us is not None
        processes = {"scpfleet-worker": {"count": 2, "user_us": worker_us, "system_us": 1.0,
                                         "run_us": worker_us + 1.0}} if ok else None
        if ok and indexer:
            processes["scpfleet-indexe"] = {"count": 1, "user_us": 3.0, "system_us": 1.0,
                                            "run_us": 4.0}
        return {"load": "tiny", "server": "scpfleet", "ok": ok, "reason": None if ok else "x",
                "wall_s": 1.0, "cpu_ms_per_mb": 1.0, "processes": processes,
                "cpu_ms_per_instance": {"user": 0.1, "system": 0.1, "total": 0.2} if ok else None}

    [row] = cpucost.summarize([run(10.0), run(30.0), run(None), run(20.0, indexer=False)], [])
    workers, indexer = row["processes"]["scpfleet-worker"], row["processes"]["scpfleet-indexe"]
    assert workers == {"count": 2, "user_us": 20.0, "system_us": 1.0, "run_us": 21.0}
    assert indexer["run_us"] == 4.0  # the runs that saw one
