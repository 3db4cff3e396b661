"""Variants on the console end to end: an operator steers with ``mmpp variants``, ``mmpp chat`` orders through the
real core and database, the real worker on Redis renders the variant, the person's rating counts for it, and
``mmpp feedback`` and ``/history`` show it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.bot.console_app import chat_environment
from tests.conftest import REPO, SAMPLE_SELFIE


def mmpp(arguments: list[str], env: dict[str, str], lines: list[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", *arguments], input="".join(line + "\n" for line in lines),
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip


def test_a_promoted_variant_is_rendered_rated_and_reported_on_the_console(redis_worker: str, tmp_path: Path) -> None:
    database = tmp_path / "mmpp.sqlite3"
    env = chat_environment(tmp_path, redis_worker)
    promoted = mmpp(["variants", "promote", "anime", "more-likeness"], env)
    assert promoted.returncode == 0, promoted.stderr
    ordered = mmpp(["chat"], env, [f"/profile style:anime photo:{SAMPLE_SELFIE}"])
    assert ordered.returncode == 0 and "job 1: " in ordered.stdout, ordered.stderr[-3000:]
    chat = mmpp(["chat"], env, ["/rate 1 1 5", "/history"])
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "rated job 1 picture 1: 5 stars" in chat.stdout
    assert any(line.startswith("job 1: anime, 1 pictures") and line.endswith("variant more-likeness")
               for line in chat.stdout.splitlines()), chat.stdout  # fmt: skip
    with sqlite3.connect(database) as connection:
        variant, meta = connection.execute("SELECT variant, result_meta FROM jobs WHERE id = 1").fetchone()
    assert variant == "more-likeness" and json.loads(meta)["scales"]["ip_adapter"] == 0.7  # rendered by the worker
    report = json.loads(mmpp(["feedback", "--json"], env).stdout)
    anime = next(row for row in report if row["style"] == "anime")
    assert anime["promoted_variant"] == "more-likeness"
    assert anime["variants"] == [
        {"variant": "more-likeness", "jobs": 1, "ratings": 1, "mean": 5.0, "ci95_low": None, "ci95_high": None,
         "positive_share": 1.0}
    ]  # fmt: skip
    listed = {row["variant"]: row for row in json.loads(mmpp(["variants", "anime", "--json"], env).stdout)}
    assert listed["more-likeness"]["state"] == "default" and listed["more-likeness"]["ratings"] == 1
