"""The console grammar end to end: real core, real database, real worker on Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from PIL import Image

from tests.bot.conftest import PREVIEW_JOB
from tests.conftest import REDIS_URL

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "engine" / "assets" / "sample_selfie.jpg"


def mmpp(command: str, lines: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", command],
        input="".join(line + "\n" for line in lines), capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **env}, timeout=timeout,
    )  # fmt: skip


def test_console_grammar_end_to_end(cache_dir: Path, tmp_path: Path) -> None:
    flat = tmp_path / "wall.png"
    Image.new("RGB", (300, 300), (90, 120, 150)).save(flat)
    env = {
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": f"mmpp-console-{uuid.uuid4().hex[:8]}",
        "MMPP_DATABASE": str(tmp_path / "mmpp.sqlite3"),
        "MMPP_OUT": str(tmp_path / "out"),
        "MMPP_WEIGHTS": "tiny",
        "MMPP_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "USER": "tester",
    }
    first = mmpp(
        "run",
        [
            f"/profile style:pixel-art photo:{SAMPLE} prompt:a pirate (hat)1.2 count:2 mode:fast seed:9",
            f"/profile style:anime photo:{flat}",
            "/profile style:building photo:nowhere.jpg",
            f"/profile style:anime photo:{tmp_path / 'missing.jpg'}",
            "/profile style:anime photo:" + str(SAMPLE) + " count:7",
            "/paint",
            "/styles",
        ],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout.splitlines()
    pictures_line = next(line for line in out if re.match(r"^job 1: ", line))
    paths = [Path(part) for part in pictures_line.split()[2:]]
    assert len(paths) == 2 and all(path.exists() and Image.open(path).format == "PNG" for path in paths)
    assert any(line.startswith("error[NO_FACE]: job 2: ") for line in out)
    assert "error[UNKNOWN_STYLE]" in first.stdout
    assert any(line.startswith("error[NOT_AN_IMAGE]: Cannot read") for line in out)
    assert any(line.startswith("error[INVALID_REQUEST]: count must be") for line in out)
    assert any(line.startswith("error[UNKNOWN_COMMAND]: ") for line in out)
    assert any("pixel-art" in line for line in out)
    assert "Traceback" not in first.stdout + first.stderr

    second = mmpp(
        "chat", ["/rate 1 2 5", "/rate 1 9 5", "/rate 1 1 8", "/rate one", "/history", "/forget", "/history"], env
    )
    assert second.returncode == 0, second.stderr[-3000:]
    lines = second.stdout.splitlines()
    assert lines[0] == "rated job 1 picture 2: 5 stars"
    assert lines[1].startswith("error[NOT_FOUND]: Job 1 has no picture 9")
    assert lines[2].startswith("error[INVALID_REQUEST]: Ratings go from 1 to 5")
    assert lines[3].startswith("error[INVALID_REQUEST]: Use /rate JOB PICTURE STARS")
    assert lines[4].startswith("job 2: anime, failed (NO_FACE)") and "job 1: pixel-art, 2 pictures" in second.stdout
    assert "deleted everything" in lines[-2]
    assert lines[-1] == "You have no jobs yet."

    feedback = subprocess.run(
        [sys.executable, "-m", "mmpp.cli", "feedback"], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **env},
    )  # fmt: skip
    assert feedback.returncode == 0 and feedback.stdout.splitlines()[0].startswith("style")


def test_the_console_writes_the_live_preview_to_one_file_and_says_where_once(
    preview_worker: str, tmp_path: Path
) -> None:
    env = {
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": preview_worker,
        "MMPP_DATABASE": str(tmp_path / "mmpp.sqlite3"),
        "MMPP_OUT": str(tmp_path / "out"),
        "MMPP_POLL_INTERVAL_SECONDS": "0.1",
        "USER": "tester",
    }
    options = " ".join(f"{key}:{value}" for key, value in PREVIEW_JOB.items())
    run = mmpp("chat", [f"/profile style:anime photo:{SAMPLE} {options}"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    preview = tmp_path / "out" / "previews" / "job-1.jpg"
    announced = [line for line in run.stderr.splitlines() if "preview:" in line]
    assert announced == [f"job 1: preview: {preview} (updated while painting)"]
    with Image.open(preview) as image:
        assert image.format == "JPEG" and max(image.size) <= 256
    assert not list(preview.parent.glob("*.part"))  # written beside and renamed over
    lines = run.stderr.splitlines()
    caption = next(index for index, line in enumerate(lines) if line.startswith("job 1: ") and "· job 1" in line)
    assert lines.index(announced[0]) < caption  # shown while painting, before the pictures
    pictures = next(line for line in run.stdout.splitlines() if line.startswith("job 1: "))
    assert len(pictures.split()[2:]) == int(PREVIEW_JOB["count"])  # the pictures, as before
