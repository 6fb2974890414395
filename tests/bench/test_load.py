"""``scpfleet load`` (bench/load.py), its synthesized data (bench/synth.py) and the
mergeable histogram (bench/report.py).

Counts are small and bounded; no test asserts a speed (timing belongs in benchmarks).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from bench import report, synth
from bench.corpus import dataset_bytes
from bench.load import SyntheticSource
from engine.dataset import decode_dataset
from tests import peers
from tests.bench import EngineServer, load_json, one_line_error, run_cli


def _check_report(data: dict, count: int) -> None:
    assert data["instances"] == count
    assert data["failures"] == 0 and data["attempted"] == count
    assert data["failures_by_status"] == {} and data["failures_by_cause"] == {}
    assert data["bytes"] > 0 and data["instances_per_s"] > 0 and data["mb_per_s"] > 0
    lat = data["latency_ms"]
    assert lat["count"] == count
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert data["association_setup_ms"]["count"] == data["associations"] >= 1


def test_load_two_processes_synthesized_engine_server(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with EngineServer() as scp:
        result = run_cli(
            "load", "127.0.0.1", str(scp.port), "--processes", "2", "--associations", "4",
            "--count", "200", "--size", "2048", "--report", str(out),
        )
        received = list(scp.received)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 stored, 0 failed" in result.stdout
    assert len(received) == 200 and len(set(received)) == 200  # a fresh UID each
    data = load_json(out)
    _check_report(data, 200)
    assert data["processes"] == 2 and data["associations"] == 8
    assert data["bytes"] == 200 * data["data"]["instance_size"]


@pytest.mark.interop
def test_load_dcmtk_storescp_file_count(storescp) -> None:  # type: ignore[no-untyped-def]
    scp = storescp()
    result = run_cli(
        "load", "127.0.0.1", str(scp.port), "--aec", scp.aetitle, "--processes", "1",
        "--associations", "3", "--count", "40", "--size", "1024", "--sop-class", "mr",
        "--series", "4", "--studies", "2", "--patients", "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr + scp.logs()
    files = scp.wait_for_files(40)
    assert len(files) == 40
    metas = [read_file_meta_info(f) for f in files]
    assert {str(m.MediaStorageSOPClassUID) for m in metas} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert len({str(m.MediaStorageSOPInstanceUID) for m in metas}) == 40


def test_load_refused_a700_counted_by_status(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with EngineServer(status=0xA700) as scp:
        result = run_cli(
            "load", "127.0.0.1", str(scp.port), "--associations", "2", "--count", "30",
            "--size", "512", "--report", str(out),
        )
    assert result.returncode == 1
    data = load_json(out)
    assert data["instances"] == 0 and data["failures"] == 30
    assert data["failures_by_status"] == {"0xA700": 30}
    assert "0xA700: 30" in result.stdout


def test_load_files_unique_uids_and_stream(tmp_path: Path, tiny_files: list[Path]) -> None:
    files = [str(p) for p in tiny_files[:6]]
    originals = {str(read_file_meta_info(p).MediaStorageSOPInstanceUID) for p in files}
    out = tmp_path / "report.json"
    with EngineServer(keep_data=True) as scp:
        unique = run_cli("load", "127.0.0.1", str(scp.port), "--count", "12",
                         "--files", *files, "--unique-uids")
        first = list(scp.received)
        streamed = run_cli("load", "127.0.0.1", str(scp.port), "--count", "6",
                           "--files", *files, "--stream", "--report", str(out))
        second = scp.received[len(first):]
        data = dict(scp.data)
    assert unique.returncode == 0, unique.stdout + unique.stderr
    assert len(set(first)) == 12 and not set(first) & originals
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    assert sorted(second) == sorted(originals)
    as_stored = {str(read_file_meta_info(p).MediaStorageSOPInstanceUID): dataset_bytes(p)
                 for p in files}
    assert all(data[uid] == raw for uid, raw in as_stored.items())
    assert load_json(out)["bytes"] == sum(len(raw) for raw in as_stored.values())


def test_load_reassociates_every_k(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with EngineServer() as scp:
        result = run_cli("load", "127.0.0.1", str(scp.port), "--associations", "1",
                         "--count", "10", "--size", "256", "--instances-per-association",
                         "3", "--report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = load_json(out)
    _check_report(data, 10)
    assert data["associations"] == 4  # 3 + 3 + 3 + 1


def test_load_count_and_duration_whichever_ends_first(tmp_path: Path) -> None:
    """The duration ends first: what the count had left is not sent, no failure, exit 0.
    The count ends first: everything is sent."""
    out = tmp_path / "report.json"
    with EngineServer() as scp:
        short = run_cli("load", "127.0.0.1", str(scp.port), "--processes", "2", "--associations", "2",
                        "--count", "10000000", "--duration", "1", "--size", "256", "--report", str(out))
        by_duration = load_json(out)
        counted = run_cli("load", "127.0.0.1", str(scp.port), "--associations", "2", "--count", "20",
                          "--duration", "600", "--size", "256", "--report", str(out))
        by_count = load_json(out)
    assert short.returncode == 0, short.stdout + short.stderr
    assert by_duration["failures"] == 0 and by_duration["failures_by_cause"] == {}
    assert by_duration["instances"] > 0 and by_duration["not_sent"] > 0
    assert by_duration["instances"] + by_duration["not_sent"] == 10000000
    assert "not sent (the duration ended first)" in short.stdout and " 0 failed" in short.stdout
    assert counted.returncode == 0, counted.stdout + counted.stderr
    _check_report(by_count, 20)
    assert by_count["not_sent"] == 0


def test_load_gave_up_before_the_duration_is_a_failure(tmp_path: Path) -> None:
    """Associations that all give up before the duration ends leave the rest of the
    count failed (not-sent), as without --duration."""
    out = tmp_path / "report.json"
    port = peers.free_port()
    result = run_cli("load", "127.0.0.1", str(port), "--associations", "2", "--count", "50",
                     "--duration", "600", "--report", str(out), timeout=30)
    assert result.returncode == 1
    data = load_json(out)
    assert data["instances"] == 0 and data["failures"] == 50 and data["not_sent"] == 0


def test_load_connect_failed_ends_quickly(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    port = peers.free_port()
    result = run_cli("load", "127.0.0.1", str(port), "--associations", "2", "--count", "50",
                     "--report", str(out), timeout=30)
    assert result.returncode == 1
    data = load_json(out)
    assert data["instances"] == 0 and data["failures"] == 50
    causes = data["failures_by_cause"]
    assert causes["connect-failed"] >= 2 and sum(causes.values()) == 50


def test_load_rejected_is_permanent(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with EngineServer(ae_title="RIGHT", require_called_aet=True) as scp:
        result = run_cli("load", "127.0.0.1", str(scp.port), "--aec", "WRONG",
                         "--count", "20", "--report", str(out))
    assert result.returncode == 1
    data = load_json(out)
    assert data["failures_by_cause"]["rejected"] == 4  # one try per association
    assert "rejected-permanent" in data["failure_reasons"]["rejected"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--count", "abc"],
        ["--count", "0"],
        ["--processes", "-1"],
        ["--rate", "0"],
        ["--sop-class", "bogus"],
        ["--transfer-syntax", "1.2.3"],
        ["--size", "0"],
        ["--patients", "5", "--studies", "2"],
        ["--files", "no/such/file.dcm"],
        ["--stream"],
    ],
)
def test_load_bad_arguments(extra: list[str]) -> None:
    one_line_error(run_cli("load", "127.0.0.1", "104", *extra))


# ----------------------------------------------------------------------------- synth


@pytest.mark.parametrize("ts", ["explicit", "implicit", "bigendian", "deflated", "jpeg"])
def test_synthesized_instances_decode_with_their_uids(ts: str) -> None:
    made = synth.build_synthetic(transfer_syntax_text=ts, size=3000,
                                 spread=synth.Spread(2, 3, 5))
    source = SyntheticSource(made)
    seen = set()
    for k in (0, 1, 7, 123456):
        sop_class_uid, uid, syntax, data, path, size = source.payload(k)
        ds = decode_dataset(data, syntax)
        assert path is None and size == len(data)
        assert ds.SOPInstanceUID == uid and ds.SOPClassUID == sop_class_uid
        series = k % 5
        assert ds.SeriesInstanceUID.endswith(f".3{series:06d}")
        assert ds.StudyInstanceUID.endswith(f".2{series % 3:06d}")
        assert ds.PatientID == f"SCPF{series % 3 % 2:06d}"
        seen.add(uid)
        assert len(uid) <= 64
    assert len(seen) == 4
    if ts != "deflated":
        assert abs(made.instance_size - 3000) < 600


def test_file_template_replaces_sop_instance_uid(tiny_files: list[Path]) -> None:
    path = tiny_files[0]
    meta = read_file_meta_info(path)
    root = synth.new_run_root()
    template = synth.file_template(str(meta.MediaStorageSOPClassUID),
                                   str(meta.TransferSyntaxUID), dataset_bytes(path), root)
    uid = synth.instance_uid(root, 42)
    raw = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    ds = decode_dataset(template.render({"sop": raw}), str(meta.TransferSyntaxUID))
    assert ds.SOPInstanceUID == uid


# ----------------------------------------------------------------------------- histogram


def test_histogram_percentiles_close_to_exact_and_merge() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.2) for _ in range(20000)]  # seconds, ~1 ms median
    parts = [report.Histogram() for _ in range(4)]
    for i, v in enumerate(values):
        parts[i % 4].record(v)
    merged = report.Histogram()
    for part in parts:
        merged.merge(part)
    whole = report.Histogram()
    for v in values:
        whole.record(v)
    assert merged == whole and merged.count == len(values)
    exact = sorted(int(v * 1e6) for v in values)
    for pct in (50, 95, 99, 100):
        truth = exact[max(0, -(-len(exact) * pct // 100) - 1)]
        assert abs(merged.percentile(pct) - truth) <= truth / 60 + 1
    assert merged.maximum == exact[-1] and merged.minimum == exact[0]


def test_tally_failed_is_sum_of_tables() -> None:
    tally = report.Tally()
    tally.fail_status(0xA700)
    tally.fail_cause("connect-failed", 3)
    other = report.Tally(ok=2)
    other.fail_status(0xA700)
    tally.merge(other)
    assert tally.failed == 5 and tally.ok == 2
    assert tally.failures_by_status == {"0xA700": 2}
    assert tally.failures_by_cause == {"connect-failed": 3}
