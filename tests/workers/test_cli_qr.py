"""The query/retrieve and storage commitment settings: defaults, switches, the AE table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workers.nodes import scpfleet
from workers.config import ConfigError, ae_table, load_config


def test_every_service_is_on_by_default_and_each_can_be_switched_off(tmp_path: Path) -> None:
    config = load_config(None, {})
    assert (config.query, config.retrieve, config.commitment, config.commitment_verify) == (True, True, True, False)
    assert config.ae_table is None and ae_table(config) == {}
    done = scpfleet("serve", "--storage", str(tmp_path / "s"), "--no-query", "--no-retrieve", "--no-commitment",
                    "--commitment-verify", "--check-config")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["query"], shown["retrieve"], shown["commitment"], shown["commitment-verify"]) == (
        False, False, False, True)
    path = tmp_path / "node.toml"
    path.write_text("retrieve = false\ncommitment-verify = true\n")
    config = load_config(str(path), {})
    assert (config.retrieve, config.commitment_verify, config.query) == (False, True, True)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_ae_table_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"aes{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"STORESCP": {"host": "10.0.0.5", "port": 104}, " VIEWER ": {"host": "h", "port": 11112}}))
    else:
        path.write_text('[STORESCP]\nhost = "10.0.0.5"\nport = 104\n\n[" VIEWER "]\nhost = "h"\nport = 11112\n')
    config = load_config(None, {"ae-table": str(path)})
    assert ae_table(config) == {"STORESCP": ("10.0.0.5", 104), "VIEWER": ("h", 11112)}


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ('[STORESCP]\nhost = "h"\n', "port"),
        ('[STORESCP]\nhost = "h"\nport = 0\n', "port"),
        ('[STORESCP]\nhost = ""\nport = 104\n', "host"),
        ('["THIS TITLE IS FAR TOO LONG"]\nhost = "h"\nport = 104\n', "AE title"),
        ('[STORESCP]\nhost = "h"\nport = 104\ncolour = 1\n', "colour"),
        ('[STORESCP]\nhost = "h"\nport = 104\ntls = true\n', "tls"),
        ('["A"]\nhost = "h"\nport = 1\n[" A"]\nhost = "h"\nport = 2\n', "twice"),
        ("[STORESCP\n", "TOML"),
    ],
)
def test_bad_ae_tables_are_one_line_errors(tmp_path: Path, text: str, word: str) -> None:
    path = tmp_path / "aes.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ae-table": str(path)})
    assert word in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)
    done = scpfleet("serve", "--storage", str(tmp_path / "s"), "--ae-table", str(path), "--check-config")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--ae-table" in done.stderr and word in done.stderr


def test_a_missing_ae_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ae-table": str(tmp_path / "nope.toml")})
    assert "nope.toml" in str(info.value)


def test_help_explains_the_services() -> None:
    done = scpfleet("serve", "--help")
    for word in ("--ae-table", "--no-query", "--no-retrieve", "--no-commitment", "--commitment-verify", "C-MOVE"):
        assert word in done.stdout
