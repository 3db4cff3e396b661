"""``mmpp`` engine commands as a user runs them: real processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "engine" / "assets" / "sample_selfie.jpg"


def mmpp(*arguments: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("REDIS_URL", None) if env is None or "REDIS_URL" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error[{code}]: ")
    assert "Traceback" not in result.stderr


def test_generate_writes_the_pictures_and_prints_their_paths(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = mmpp(
        "generate",
        "--photo",
        str(SAMPLE),
        "--style",
        "pixel-art",
        "--count",
        "2",
        "--seed",
        "5",
        "--steps",
        "4",
        "--mode",
        "fast",
        "--profile",
        "tiny",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert len(paths) == 2 and all(path.parent == out for path in paths)
    assert [Image.open(path).format for path in paths] == ["PNG", "PNG"]
    assert "tiny test-sized model" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["--style", "building"], "UNKNOWN_STYLE"),
        (["--style", "anime", "--count", "9"], "INVALID_REQUEST"),
        (["--style", "anime", "--prompt", "x" * 600], "PROMPT_TOO_LONG"),
        (["--style", "anime", "--mode", "turbo"], "INVALID_REQUEST"),
    ],
)
def test_generate_bad_input_is_one_line_and_exit_2(arguments: list[str], code: str, tmp_path: Path) -> None:
    assert_one_line_error(
        mmpp("generate", "--photo", str(SAMPLE), "--profile", "tiny", "--out", str(tmp_path), *arguments), code
    )


def test_generate_refuses_a_missing_or_bad_photo(tmp_path: Path, cache_dir: Path) -> None:
    assert_one_line_error(
        mmpp("generate", "--photo", str(tmp_path / "nope.jpg"), "--style", "anime", "--out", str(tmp_path)),
        "NOT_AN_IMAGE",
    )
    text = tmp_path / "notes.jpg"
    text.write_text("shopping list")
    assert_one_line_error(
        mmpp("generate", "--photo", str(text), "--style", "anime", "--profile", "tiny", "--out", str(tmp_path)),
        "NOT_AN_IMAGE",
    )
    flat = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (200, 180, 150)).save(flat)
    assert_one_line_error(
        mmpp("generate", "--photo", str(flat), "--style", "anime", "--profile", "tiny", "--out", str(tmp_path)),
        "NO_FACE",
    )


def test_generate_without_weights_names_what_is_missing(tmp_path: Path) -> None:
    result = mmpp(
        "generate",
        "--photo",
        str(SAMPLE),
        "--style",
        "anime",
        "--profile",
        "default",
        "--out",
        str(tmp_path),
        env={"MMPP_BASE_MODEL": "example-org/model-that-is-not-cached"},
    )
    assert_one_line_error(result, "MODEL_UNAVAILABLE")
    assert "example-org/model-that-is-not-cached" in result.stderr and "--weights tiny" in result.stderr


def test_styles_lists_the_catalogue() -> None:
    result = mmpp("styles")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 10
    assert any(" anime " in line and "Anime" in line for line in lines)


def test_unknown_command_and_help() -> None:
    assert_one_line_error(mmpp("paint"), "UNKNOWN_COMMAND")
    helped = mmpp("--help")
    assert helped.returncode == 0 and "generate" in helped.stdout and "worker" in helped.stdout
