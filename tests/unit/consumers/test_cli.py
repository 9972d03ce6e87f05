"""The command table in ``consumers.cli``: every row resolves and parses."""

from __future__ import annotations

import argparse
import inspect

import pytest

from consumers.cli import COMMANDS, Command, build_parser, main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_in_the_table_has_a_handler_and_a_parser(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = COMMANDS[name]
    handler = command.load_handler()
    assert list(inspect.signature(handler).parameters) == ["settings", "args"]
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert command.help.split(":")[0] in " ".join(out.split()) and "--kafka-bootstrap-servers" in out


def test_the_top_level_help_lists_every_command_in_table_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    positions = [out.index(f"    {name} ") if f"    {name} " in out else out.index(f"    {name}\n") for name in COMMANDS]
    assert positions == sorted(positions)


def test_a_command_without_arguments_takes_only_the_settings_flags() -> None:
    parser = argparse.ArgumentParser()
    Command("bare", "A command with nothing of its own.", "consumers.commands:process").add_arguments(parser)
    assert [a.dest for a in parser._actions] == ["help"]


def test_an_unknown_command_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["demo"])  # a developer tool now: python -m devtools demo
    assert done.value.code == 2 and "invalid choice" in capsys.readouterr().err
