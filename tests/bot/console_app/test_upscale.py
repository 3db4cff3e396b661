"""/upscale on the console end to end: real core, real database, real worker on Redis (``mmpp run``)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from PIL import Image

from tests.bot.console_app.test_console import SAMPLE, mmpp
from tests.conftest import REDIS_URL


def test_upscale_a_picture_rate_it_refuse_a_stranger_and_forget_it(cache_dir: Path, tmp_path: Path) -> None:
    database = tmp_path / "mmpp.sqlite3"
    env = {
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": f"mmpp-console-upscale-{uuid.uuid4().hex[:8]}",
        "MMPP_DATABASE": str(database),
        "MMPP_OUT": str(tmp_path / "out"),
        "MMPP_WEIGHTS": "tiny",
        "MMPP_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "USER": "tester",
    }
    first = mmpp("run", [f"/profile style:anime photo:{SAMPLE} count:2 mode:fast seed:5"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    source = Path(next(line for line in first.stdout.splitlines() if line.startswith("job 1: ")).split()[3])

    second = mmpp("run", ["/upscale 1 2", "/upscale 1 2", "/upscale 1 7", "/upscale one"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = second.stdout.splitlines()
    written = tmp_path / "out" / "job-2-1-2x.png"
    assert lines[0] == f"job 2: upscaling job 1 picture 2 (2x, written as {written})"
    assert lines[1] == f"job 2: already upscaled job 1 picture 2 (2x, written as {written})"  # one job
    assert lines[2].startswith("error[NOT_FOUND]: Job 1 has no picture 7")
    assert lines[3].startswith("error[INVALID_REQUEST]: Use /upscale JOB PICTURE")
    assert f"job 2: {written}" in lines
    with Image.open(source) as picture, Image.open(written) as upscaled:
        assert upscaled.format == "PNG" and upscaled.size == (2 * picture.width, 2 * picture.height)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT queue, mode, seed, state FROM jobs WHERE id = 2").fetchone() == (
            env["MMPP_QUEUE"] + ".quality",
            "quality",
            6,
            "done",
        )

    stranger = mmpp("chat", ["/upscale 1 1"], {**env, "USER": "someone-else"})
    assert stranger.stdout.splitlines()[0].startswith("error[NOT_YOURS]: Only the person who ordered")

    third = mmpp("chat", ["/rate 2 1 5", "/forget"], env)
    assert third.stdout.splitlines()[0] == "rated job 2 picture 1: 5 stars"
    with sqlite3.connect(database) as db:
        for table in ("jobs", "pictures", "selfies", "ratings"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    assert "Traceback" not in first.stderr + second.stderr + stranger.stderr + third.stderr
