"""``mmpp bench``: the dispatcher, its help, and where it runs (a source checkout only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmpp.cli
from mmpp.cli import main as mmpp_main


def test_bench_help_names_both_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert mmpp_main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "mmpp bench BENCHMARK" in out and "engine" in out and "bots" in out


@pytest.mark.parametrize(
    ("benchmark", "option"),
    [
        ("engine", "--shape"),
        ("bots", "--users"),
        ("bots", "--store"),
        ("bots", "--processes"),
        ("soak", "--maxmemory-mb"),
    ],
)
def test_each_benchmark_has_its_own_help(benchmark: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert mmpp_main(["bench", benchmark, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: mmpp bench {benchmark}" in out and option in out


def test_outside_a_checkout_bench_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mmpp.cli, "CHECKOUT", tmp_path)  # an installed mmpp: no bench/ beside it
    assert mmpp_main(["bench", "engine", "--help"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error[INVALID_REQUEST]: mmpp bench runs from a source checkout")
    assert captured.out == ""


@pytest.mark.slow
def test_the_installed_mmpp_finds_the_benchmarks_from_anywhere(tmp_path: Path) -> None:
    """An editable install maps bot, engine and mmpp only: ``mmpp bench`` itself puts the checkout on the path."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "mmpp.cli", "bench", "bots", "--help"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "usage: mmpp bench bots" in result.stdout
