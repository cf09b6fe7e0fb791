"""Every `pac` subcommand answers --help; errors come back as messages, not tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from pac.cli import build_parser, main


def all_commands() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", all_commands(), ids=" ".join)
def test_every_subcommand_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pac" in capsys.readouterr().out


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "pac.cli", "--help"], capture_output=True, text=True, check=True)
    assert "presets" in out.stdout


def test_configuration_errors_are_messages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--objective.alpha", "2"]) == 2
    err = capsys.readouterr().err
    assert "objective.alpha" in err and "Traceback" not in err
    assert main(["config", "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err
