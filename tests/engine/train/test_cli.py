"""``mmpp train`` and ``python -m engine.train`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.train.export import read_lora_metadata
from mmpp.cli import main as mmpp_main

from .conftest import REPO


def assert_one_line_error(returncode: object, stderr: str, code: str) -> None:
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error[{code}]: ")
    assert "Traceback" not in stderr


def test_portrait_training_from_the_command_line(
    portrait_data: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "me.safetensors"
    arguments = ["train", "--data", str(portrait_data), "--kind", "portrait", "--weights", "tiny", "--out", str(out)]
    arguments += ["--steps", "2", "--rank", "4", "--batch", "2", "--trigger", "sks", "--seed", "1"]
    assert mmpp_main(arguments) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(out)
    assert "skipped noface.png: NO_FACE" in captured.err and "skipped broken.jpg: NOT_AN_IMAGE" in captured.err
    assert f"MMPP_PORTRAIT_LORA={out}" in captured.err and "tiny test-sized model" in captured.err
    assert "2/2" in captured.err  # the progress bar
    report = json.loads((tmp_path / "me" / "data_report.json").read_text())
    assert report["images_used"] == 4
    assert {(entry["file"], entry["code"]) for entry in report["skipped"]} == {
        ("noface.png", "NO_FACE"),
        ("broken.jpg", "NOT_AN_IMAGE"),
    }
    metadata = read_lora_metadata(out)
    assert metadata["kind"] == "portrait" and metadata["trigger"] == "sks" and metadata["steps"] == "2"


def _unreadable(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "b.webp").write_bytes(b"RIFF....WEBP")


def _no_faces(folder: Path) -> None:
    folder.mkdir()
    Image.new("RGB", (96, 96), (10, 200, 10)).save(folder / "green.png")


@pytest.mark.parametrize(
    ("make", "kind", "extra", "code"),
    [
        (lambda folder: None, "style", [], "INVALID_REQUEST"),
        (lambda folder: folder.mkdir(), "style", [], "INVALID_REQUEST"),
        (_unreadable, "style", [], "NOT_AN_IMAGE"),
        (_no_faces, "portrait", [], "NO_FACE"),
        (lambda folder: folder.mkdir(), "style", ["--steps", "0"], "INVALID_REQUEST"),
        (_no_faces, "style", ["--resolution", "50"], "INVALID_REQUEST"),
    ],
    ids=["missing", "empty", "unreadable", "no-faces", "bad-option", "bad-resolution"],
)
def test_bad_data_and_options_end_in_one_error_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, kind: str, extra: list[str], code: str
) -> None:
    folder = tmp_path / "data"
    make(folder)
    arguments = ["train", "--data", str(folder), "--kind", kind, "--weights", "tiny"]
    arguments += ["--out", str(tmp_path / "x.safetensors"), *extra]
    try:
        status = mmpp_main(arguments)
    except SystemExit as exit_:  # argparse's errors leave through SystemExit, as in a real run
        status = exit_.code
    assert_one_line_error(status, capsys.readouterr().err, code)


def test_python_dash_m_engine_train_is_the_same_command(tmp_path: Path) -> None:
    """What ``accelerate launch -m engine.train`` runs in each process."""
    _unreadable(tmp_path / "data")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "engine.train", "--data", str(tmp_path / "data"), "--kind", "style"]
    command += ["--profile", "tiny", "--out", str(tmp_path / "x.safetensors")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, "NOT_AN_IMAGE")
    assert "2 NOT_AN_IMAGE" in result.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "engine.train", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert usage.returncode == 0 and "--checkpoint-every" in usage.stdout and "--train-text-encoder" in usage.stdout
