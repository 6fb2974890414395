"""The command line and the configuration: precedence, validation, one-line errors.

Theory of operation: :func:`workers.config.load_config` is tested in-process; the
``scpfleet`` entry point as a subprocess, to see exactly what an operator sees (stderr,
exit status, no traceback). No node is started here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workers.nodes import scpfleet
from workers.config import ConfigError, NodeConfig, load_config


def _one_line_error(done, *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("scpfleet")
    for word in words:
        assert word in lines[0], lines[0]


def test_defaults_need_no_configuration():
    config = load_config(None, {})
    assert (config.port, config.aet, config.storage, config.durability) == (11112, "SCPFLEET", "./archive", "fsync")
    assert config.index_path.endswith("index.sqlite") and config.worker_count >= 1
    assert config.digest == "xxh3-128"


def test_file_then_flags(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text('port = 1234\nworkers = 3\nrequire-calling-aet = ["CT1", "MR2"]\n'
                    'durability = "batch"\n')
    config = load_config(str(path), {"port": 4321, "aet": "ARCHIVE"})
    assert (config.port, config.workers, config.aet, config.durability) == (4321, 3, "ARCHIVE", "batch")
    assert config.require_calling_aet == ["CT1", "MR2"]


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ('workers = "many"', "workers"),
        ("workers = 0", "workers"),
        ("port = 70000", "port"),
        ("colour = 1", "colour"),
        ('durability = "sometimes"', "durability"),
        ('digest = "md5"', "digest"),
        ('incomplete = "keep"', "incomplete"),
        ('aet = "THIS TITLE IS FAR TOO LONG"', "aet"),
        ('tls-cert = "x.pem"', "tls-key"),
        ("port = [", "invalid TOML"),
    ],
)
def test_bad_config_values(tmp_path: Path, text: str, word: str):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert word in str(info.value) and "\n" not in str(info.value)


def test_config_struct_is_msgspec():
    import msgspec

    assert issubclass(NodeConfig, msgspec.Struct)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"max-pdu": 12}, NodeConfig)


def test_bad_option_one_line_exit_2():
    _one_line_error(scpfleet("serve", "--workers", "0"), "--workers")
    _one_line_error(scpfleet("serve", "--no-such-option"), "no-such-option")
    _one_line_error(scpfleet("serve", "--port", "abc"), "--port")
    _one_line_error(scpfleet("serve", "--durability", "maybe"), "durability")
    _one_line_error(scpfleet("serve", "--digest", "md5"), "digest")
    _one_line_error(scpfleet("serve", "--aet", "A\\B"), "aet")
    _one_line_error(scpfleet("serve", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"), "tls")


def test_bad_config_file_one_line_exit_2(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max-associations = -5\n")
    _one_line_error(scpfleet("serve", "--config", str(bad)), "max-associations", str(bad))
    _one_line_error(scpfleet("serve", "--config", str(tmp_path / "missing.toml")), "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("workers = = 2\n")
    _one_line_error(scpfleet("serve", "--config", str(broken)), "invalid TOML")


def test_check_config_shows_precedence(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text('port = 1234\nworkers = 3\ndigest = "xxh3-128"\n')
    done = scpfleet("serve", "--config", str(path), "--port", "5555", "--digest", "sha256", "--check-config")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert (config["port"], config["workers"], config["aet"], config["digest"]) == (5555, 3, "SCPFLEET", "sha256")


def test_incomplete_reaches_the_storage_configuration(tmp_path: Path):
    from workers.worker import storage_config

    path = tmp_path / "node.toml"
    path.write_text('incomplete = "quarantine"\n')
    assert storage_config(load_config(None, {})).incomplete == "refuse"
    assert storage_config(load_config(str(path), {})).incomplete == "quarantine"
    done = scpfleet("serve", "--incomplete", "quarantine", "--check-config")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["incomplete"] == "quarantine"
    _one_line_error(scpfleet("serve", "--incomplete", "drop"), "incomplete")


def test_help_explains():
    done = scpfleet("serve", "--help")
    assert done.returncode == 0
    for word in ("11112", "SCPFLEET", "--max-associations", "--tls-ca", "--ready-file", "--durability", "--digest"):
        assert word in done.stdout
    top = scpfleet("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "stats" in top.stdout


def test_ls_without_index_is_one_line(tmp_path: Path):
    done = scpfleet("ls", "--storage", str(tmp_path / "nothing"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "no index" in done.stderr


def test_bad_allow_address_one_line_exit_2(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"allow-address": ["10.0.0.0/8", "not-a-network"]})
    assert "allow-address" in str(info.value)
    done = scpfleet("serve", "--storage", str(tmp_path / "s"), "--allow-address", "300.1.2.3")
    _one_line_error(done, "allow-address")


# ------------------------------------------------------------------------------ a cluster's options


def test_index_node_and_balancer_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SCPFLEET_INDEX", raising=False)
    assert load_config(None, {"index": "sqlite"}).index_path.endswith("index.sqlite")
    assert not load_config(None, {}).index_shared
    config = load_config(None, {"index": "postgresql://scpfleet@db.example:5432/pacs", "node-id": "ct-room.2",
                                "proxy-protocol-from": ["10.0.0.5/32"], "drain-delay": 3.0})
    assert config.index_shared and config.node == "ct-room.2" and config.drain_delay == 3.0
    # The default node id: the host's name and the storage root, so two nodes of one
    # machine differ, and one node keeps its id over restarts.
    one, two = load_config(None, {"storage": "/srv/a"}).node, load_config(None, {"storage": "/srv/b"}).node
    assert one != two and one == load_config(None, {"storage": "/srv/a"}).node
    for bad, word in (({"index": "mysql://x/y"}, "index"), ({"node-id": "two words"}, "node-id"),
                      ({"proxy-protocol-from": ["balancer"]}, "proxy-protocol-from"),
                      ({"drain-delay": -1.0}, "drain-delay")):
        with pytest.raises(ConfigError) as info:
            load_config(None, bad)
        assert word in str(info.value)


def test_the_index_from_the_environment_and_no_password_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "node.toml"
    path.write_text('index = "postgresql://from-file@db/pacs"\n')
    monkeypatch.setenv("SCPFLEET_INDEX", "postgresql://scpfleet:s3cret@127.0.0.1:1/pacs")
    assert load_config(str(path), {}).index == "postgresql://scpfleet:s3cret@127.0.0.1:1/pacs"  # env over file
    assert load_config(str(path), {"index": "sqlite"}).index == "sqlite"  # flag over env
    import os

    env = {**os.environ, "SCPFLEET_INDEX": "postgresql://scpfleet:s3cret@127.0.0.1:1/pacs"}
    import subprocess
    import sys

    from tests.workers.nodes import REPO

    done = subprocess.run([sys.executable, "-m", "workers.cli", "serve", "--check-config"], capture_output=True,
                          text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, timeout=30)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["index"] == "postgresql://scpfleet:***@127.0.0.1:1/pacs" and "s3cret" not in done.stdout
    assert shown["node-id"]
    failed = subprocess.run([sys.executable, "-m", "workers.cli", "stats"], capture_output=True, text=True,
                            cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, timeout=60)
    assert failed.returncode == 1 and "s3cret" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
