"""``mmpp run`` through its real entry point: the terminal shows the conversation, the log file the rest.

The console adapter, a real worker child on the test Redis and the tiny weights,
as ``make run`` starts them; stdin is one /profile line and then end of input.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, SAMPLE_SELFIE

REPO = Path(__file__).resolve().parents[2]
PROFILE = f"/profile style:anime photo:{SAMPLE_SELFIE} seed:3"
#: What only the worker and the libraries print: Celery's banner (its "celery@host v5..." line and
#: the queue table), the warning about running as root, transformers' notices.
NOT_THE_CONVERSATION = ("celery@", "SecurityWarning", "-------------- [queues]", "[transformers]", "Warm shutdown")


def mmpp_run(tmp_path: Path, cache_dir: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], str]:
    queue = f"mmpp-run-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": queue,
        "MMPP_STATE_DIR": str(tmp_path / "var"),
        "MMPP_DATABASE": str(tmp_path / "var" / "mmpp.sqlite3"),
        "MMPP_OUT": str(tmp_path / "out"),
        "MMPP_WEIGHTS": "tiny",
        "MMPP_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "MMPP_LOG_FORMAT"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "mmpp.cli", "run", *options],
        input=PROFILE + "\n", capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    return result, queue


def assert_the_picture_came(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if re.match(r"^job 1: ", line))
    assert Path(line.split()[2]).is_file()
    assert any(line.startswith("job 1: ") and "Anime" in line for line in result.stderr.splitlines())  # its status
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_the_terminal_shows_the_conversation_and_names_the_log_file(tmp_path: Path, cache_dir: Path) -> None:
    result, queue = mmpp_run(tmp_path, cache_dir)
    assert_the_picture_came(result)
    terminal = result.stdout + result.stderr
    for text in NOT_THE_CONVERSATION:
        assert text not in terminal, text
    log_file = tmp_path / "var" / "log" / "mmpp-run.log"
    named = [line for line in result.stderr.splitlines() if str(log_file) in line]
    assert len(named) == 1 and named[0].startswith("mmpp: "), result.stderr
    assert result.stderr.splitlines()[0].startswith("mmpp: broker: Redis")

    log = log_file.read_text(encoding="utf-8")
    assert re.search(r"celery@\S+ v\d", log), log[-3000:]
    assert f".> {queue}.fast" in log  # the banner's queue table: the worker's stdout
    assert "INFO bot.cli: mmpp run started" in log  # the bot's own log records
    if os.geteuid() == 0:
        assert "SecurityWarning" in log  # the worker's stderr


@pytest.mark.slow
def test_verbose_shows_the_worker_output_on_the_terminal(tmp_path: Path, cache_dir: Path) -> None:
    result, queue = mmpp_run(tmp_path, cache_dir, "-v")
    assert_the_picture_came(result)
    assert re.search(r"celery@\S+ v\d", result.stderr), result.stderr[-3000:]
    assert f".> {queue}.fast" in result.stderr
    if os.geteuid() == 0:
        assert "SecurityWarning" in result.stderr
    assert "mmpp-run.log" not in result.stdout + result.stderr
    assert not (tmp_path / "var" / "log" / "mmpp-run.log").exists()
