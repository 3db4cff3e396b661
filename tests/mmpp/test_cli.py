"""The dispatcher's command table: every command once, each routed to the side that runs it."""

from __future__ import annotations

import pytest

from mmpp import cli


def test_usage_lists_every_command_exactly_once_with_its_help() -> None:
    assert not set(cli.ENGINE_COMMANDS) & set(cli.BOT_COMMANDS)
    assert {"bench", "eval"} <= set(cli.ENGINE_COMMANDS)
    lines = cli.usage().splitlines()
    for name, text in {**cli.BOT_COMMANDS, **cli.ENGINE_COMMANDS}.items():
        assert text
        assert sum(line.split()[:1] == [name] for line in lines) == 1, name


def test_eval_goes_to_the_evaluation_not_through_the_engine_dispatcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.cli

    def refuse(command: str, argv: list[str]) -> int:
        raise AssertionError(f"engine.cli.main got {command}")

    monkeypatch.setattr(engine.cli, "main", refuse)
    assert cli.main(["eval", "--help"]) == 0
    assert "mmpp eval" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["paint"]) == 2
    assert capsys.readouterr().err.startswith("error[UNKNOWN_COMMAND]: 'mmpp paint' is not a command")
