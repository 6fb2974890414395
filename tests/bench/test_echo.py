"""``scpfleet echo`` (bench/echo.py) and the CLI plumbing shared by every command."""

from __future__ import annotations

import argparse

import pytest

from bench import cli
from tests import peers
from tests.bench import EngineServer, one_line_error, run_cli


def test_echo_engine_server_count() -> None:
    with EngineServer() as scp:
        result = run_cli("echo", "127.0.0.1", str(scp.port), "--count", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Success (0x0000)") == 3
    assert "accepted" in result.stdout and "released" in result.stdout


@pytest.mark.interop
def test_echo_dcmtk_storescp(storescp) -> None:  # type: ignore[no-untyped-def]
    scp = storescp()
    result = run_cli("echo", "127.0.0.1", str(scp.port), "--aec", scp.aetitle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "C-ECHO 1: Success (0x0000)" in result.stdout


def test_echo_rejected_called_aet_in_words() -> None:
    with EngineServer(ae_title="RIGHT", require_called_aet=True) as scp:
        result = run_cli("echo", "127.0.0.1", str(scp.port), "--aec", "WRONG")
    assert result.returncode == 1
    assert "rejected-permanent" in result.stdout
    assert "called" in result.stdout.lower()


def test_echo_nobody_listening() -> None:
    port = peers.free_port()
    result = run_cli("echo", "127.0.0.1", str(port), "--timeout", "5")
    assert result.returncode == 1
    assert "connection failed" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["echo", "no-such-host.invalid", "104"],
        ["echo", "127.0.0.1", "0"],
        ["echo", "127.0.0.1", "70000"],
        ["echo", "127.0.0.1", "http"],
        ["echo", "127.0.0.1", "104", "--count", "0"],
        ["echo", "127.0.0.1", "104", "--timeout", "-1"],
        ["echo", "127.0.0.1", "104", "--aec", "A" * 17],
        ["echo", "127.0.0.1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_one_line_exit_2(args: list[str]) -> None:
    one_line_error(run_cli(*args))


def test_help_texts() -> None:
    for command in ("echo", "load", "send"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "Exit status" in result.stdout and "examples:" in result.stdout


def test_add_commands_on_a_foreign_parser() -> None:
    """workers.cli builds its own parser and calls add_commands(subparsers)."""
    parser = argparse.ArgumentParser(prog="scpfleet")
    sub = parser.add_subparsers(dest="command")
    cli.add_commands(sub)
    args = parser.parse_args(["load", "127.0.0.1", "104", "--count", "5"])
    assert callable(args.func) and args.count == 5
    for name in ("echo", "send"):
        assert name in sub.choices
