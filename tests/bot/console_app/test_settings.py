"""/settings on the console end to end: ``mmpp chat`` as people run it, the real core and database, and the real
worker on Redis (tiny weights): defaults set, an order without options painted with them, an explicit option
winning, /help showing them, bad values refused with their code, /forget deleting them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.bot.console_app import chat_environment
from tests.conftest import REPO, SAMPLE_SELFIE


def chat(lines: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", "chat"], input="".join(line + "\n" for line in lines),
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip


def job_row(database: Path, job_id: int) -> tuple[str, str | None, int, str]:
    with sqlite3.connect(database) as connection:
        row = connection.execute(
            "SELECT style, mode, picture_count, prompt FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return row


def settings_rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM person_settings").fetchone()[0])


def test_settings_on_the_console_end_to_end(redis_worker: str, tmp_path: Path) -> None:
    database = tmp_path / "mmpp.sqlite3"
    env = chat_environment(tmp_path, redis_worker)
    first = chat(
        [
            '/settings style:pixel-art mode:fast count:2 suffix:"with a hat"',
            "/settings",
            "/help",
            f"/profile photo:{SAMPLE_SELFIE}",
            "/settings mode:slow",
            "/settings style:building",
            "/settings count:9",
            "/settings suffix:(hat)9",
            "/settings please",
        ],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout.splitlines()
    defaults = 'Your defaults: style pixel-art · mode fast · 2 pictures · suffix "with a hat".'
    assert out[0].startswith(defaults) and out[1].startswith(defaults)
    assert any(line.startswith(defaults) for line in out[2:8])  # the /help lines
    errors = [line for line in out if line.startswith("error[")]
    assert [line.split("]")[0] + "]" for line in errors] == [
        "error[INVALID_REQUEST]",
        "error[UNKNOWN_STYLE]",
        "error[INVALID_REQUEST]",
        "error[INVALID_REQUEST]",
        "error[INVALID_REQUEST]",
    ]
    assert "mode must be fast or quality" in errors[0] and "count must be a number from 1 to 4" in errors[2]
    pictures = next(line for line in out if line.startswith("job 1: "))
    assert len(pictures.split()[2:]) == 2 and all(Path(path).exists() for path in pictures.split()[2:])
    assert job_row(database, 1) == ("pixel-art", "fast", 2, "with a hat")
    assert "Traceback" not in first.stdout + first.stderr

    second = chat([f"/profile photo:{SAMPLE_SELFIE} style:anime count:1 prompt:a pirate"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert job_row(database, 2) == ("anime", "fast", 1, "a pirate, with a hat")  # the explicit options won
    assert next(line for line in second.stdout.splitlines() if line.startswith("job 2: "))

    third = chat(["/forget", "/settings", "/help"], env)  # after the jobs: /forget would cancel a running one
    assert third.returncode == 0, third.stderr[-3000:]
    lines = third.stdout.splitlines()
    assert "deleted everything" in lines[0] and "settings" in lines[0]
    assert lines[1].startswith("You have no defaults")
    assert any(line.startswith("You have no defaults") for line in lines[2:])
    assert settings_rows(database) == 0
