"""The CLI surface: help for every command, version, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flare_cli import __version__
from flare_cli.cli import app

COMMANDS = ["translate", "train", "eval", "merge", "push", "demo", "env"]
runner = CliRunner()


def test_root_help_lists_every_command():
    import typer

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
    assert sorted(typer.main.get_command(app).commands) == sorted(COMMANDS)  # a new command joins the smoke test


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_exits_zero(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"flare_cli {__version__}"


def test_unknown_command_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "flare_cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "No such command" in proc.stderr


def test_env_reports_versions_as_json():
    import json

    import torch

    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == str(torch.cuda.is_available())
