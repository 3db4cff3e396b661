"""The console against a FLUX.2 [klein] worker: real core, real database, the session's klein worker on Redis.

What a person sees differently with klein: prompt weights, which the bot lets through (it cannot know which
family the workers serve, README "Real weights"), are refused by the worker as one line with their code, and
the job is kept as failed with that code; everything else (pictures, ratings, history) works as with SD.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.bot.console_app import chat_environment
from tests.bot.console_app.test_console import SAMPLE, mmpp

#: Moderate weights the bot's early check accepts (SD workers paint them); klein reads plain words only.
WEIGHTED = "a pirate (hat)1.2"


def test_a_klein_worker_paints_refuses_weights_in_one_line_and_keeps_ratings(klein_worker: str, tmp_path: Path) -> None:
    env = chat_environment(tmp_path, klein_worker)
    orders = mmpp(
        "chat",
        [
            f"/profile style:anime photo:{SAMPLE} prompt:a pirate count:2 seed:5",
            f"/profile style:anime photo:{SAMPLE} prompt:{WEIGHTED}",
        ],
        env,
    )
    assert orders.returncode == 0, orders.stderr[-3000:]
    out = orders.stdout.splitlines()
    pictures_line = next(line for line in out if line.startswith("job 1: "))
    paths = [Path(part) for part in pictures_line.split()[2:]]
    assert len(paths) == 2 and all(Image.open(path).format == "PNG" for path in paths)
    refusals = [line for line in out if line.startswith("error[INVALID_REQUEST]: job 2: ")]
    assert len(refusals) == 1, out
    assert "plain words" in refusals[0] and "'word++'" in refusals[0]

    after = mmpp("chat", ["/rate 1 2 4", "/history"], env)
    assert after.returncode == 0, after.stderr[-3000:]
    lines = after.stdout.splitlines()
    assert lines[0] == "rated job 1 picture 2: 4 stars"
    assert any(line.startswith("job 2: anime, failed (INVALID_REQUEST)") for line in lines), lines
    assert any(line.startswith("job 1: anime, 2 pictures") for line in lines), lines
    assert "Traceback" not in orders.stdout + orders.stderr + after.stdout + after.stderr
