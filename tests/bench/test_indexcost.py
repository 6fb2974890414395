"""``python -m bench.indexcost`` (bench/indexcost.py): CPU per index row as the SQLite
index grows, the node's writer settings beside SQLite's defaults.

A small real run must build both indexes, report every slice of both variants with the
settings each had, write its table and JSON without machine paths, and exit 0; the
arrival order must hold every instance once, whole studies together; bad arguments are
one line and exit 2. It asserts no speed: timing belongs in the benchmark's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.indexcost import arrivals
from bench.qrbench import _PER_STUDY
from tests.bench import REPO

RUN_TIMEOUT_S = 120


def _run(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.indexcost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_one_stream_brings_whole_studies_in_a_shuffled_order() -> None:
    order = arrivals(1010, seed=3)
    assert sorted(order) == list(range(1010))
    studies = [i // _PER_STUDY for i in order]
    runs = [s for k, s in enumerate(studies) if k == 0 or s != studies[k - 1]]
    assert len(runs) == len(set(runs)) == -(-1010 // _PER_STUDY)  # each study arrives in one piece
    assert runs != sorted(runs) and arrivals(1010, seed=3) == order


def test_streams_interleave_that_many_studies() -> None:
    order = arrivals(1010, seed=3, streams=4)
    assert sorted(order) == list(range(1010))
    studies = [i // _PER_STUDY for i in order]
    assert len(set(studies[:4])) == 4  # four studies start at once
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, s in enumerate(studies):
        first.setdefault(s, k)
        last[s] = k
    for at in range(len(order)):  # never more than four in flight
        assert sum(first[s] <= at <= last[s] for s in first) <= 4
    for s in set(studies):  # each study's instances in their own order
        mine = [i for i in order if i // _PER_STUDY == s]
        assert mine == sorted(mine)


def test_a_small_run_reports_both_variants(tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    result = _run("--rows", "3000", "--slice", "1000", "--batch", "100", "--streams", "8", "--dir", str(work),
                  "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "indexcost.json").read_text())
    r = data["result"]
    assert set(r["slices_us_per_row"]) == {"node", "sqlite-defaults"}
    assert all(len(s) == 3 and all(v > 0 for v in s) for s in r["slices_us_per_row"].values())
    node, defaults = r["settings"]["node"], r["settings"]["sqlite-defaults"]
    assert (node["cache_size"], node["wal_autocheckpoint"]) == (-65536, 4000)
    assert (defaults["cache_size"], defaults["wal_autocheckpoint"]) != (-65536, 4000)
    assert list(work.iterdir()) == []  # its indexes are removed
    text = (out / "indexcost.md").read_text()
    assert text in result.stdout and "| 2,000-3,000 |" in text
    for name in ("indexcost.md", "indexcost.json"):
        body = (out / name).read_text()
        assert str(tmp_path) not in body and str(REPO) not in body  # no machine paths


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (["--rows", "0"], ["--batch", "x"], ["--streams", "0"], ["--dir", str(tmp_path / "missing")]):
        result = _run(*args, "--out", str(tmp_path), timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "error" in result.stderr
    assert not (tmp_path / "indexcost.md").exists()
