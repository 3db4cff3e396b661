"""Tokens never reach any log output of ``mmpp run``: the terminal, the log file, the worker's copied output.

Nothing here applies the filter itself: the logging is set up by the function
``mmpp run`` calls (``bot.cli.set_up_logging``), or by ``mmpp run`` itself in a
child process against the loopback Telegram API, and the tests read what was
written.  Each test also checks that a record carrying the token was written
(the redaction marker is there), so none of them passes by logging nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.app import WorkerProcess, worker_environment
from bot.cli import set_up_logging
from bot.settings import BotSettings
from mmpp.logs import REDACTED
from tests.conftest import REPO, SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram, FakeUser

TELEGRAM_TOKEN = "123456:LOG-secret-abcdefghijklmnopqrstuvw"
TELEGRAM_SECRET_PART = TELEGRAM_TOKEN.partition(":")[2]
DISCORD_TOKEN = "MTAx.discord-secret.abcdefghijklmnop"
REDIS_PASSWORD = "redis-secret-password"
SECRETS = (TELEGRAM_TOKEN, TELEGRAM_SECRET_PART, DISCORD_TOKEN, REDIS_PASSWORD)
FILE_URL = f"https://api.telegram.org/file/bot{TELEGRAM_TOKEN}/photos/file_7.jpg"
ALICE = FakeUser(1001, "Alice", username="alice")


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} holds {secret!r}"


def log_what_the_libraries_log() -> None:
    """Records as httpx, python-telegram-bot, discord.py, Celery, asyncio, Python's warnings and our own code
    write them, the secrets in arguments, in messages, in exception texts and in chained causes."""
    logging.getLogger("httpx").warning('HTTP Request: GET %s "HTTP/1.1 502 Bad Gateway"', FILE_URL)
    logging.getLogger("telegram.ext.Updater").error(
        "Can not load invalid JSON data: %s", f"<p>The requested URL /bot{TELEGRAM_TOKEN}/getUpdates was not found</p>"
    )
    logging.getLogger("discord.gateway").warning("Shard ID %s sent %r", None, {"op": 2, "token": DISCORD_TOKEN})
    logging.getLogger("celery.worker.consumer").error(f"Cannot connect to redis://:{REDIS_PASSWORD}@broker:6379/0")
    try:
        try:
            raise ConnectionError(f"GET {FILE_URL} failed")
        except ConnectionError as cause:
            raise RuntimeError("the download failed") from cause
    except RuntimeError:
        logging.getLogger("bot.telegram_app").exception("telegram handler failed: %s", "RuntimeError")
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    logging.getLogger().warning("root logger: %s", f"/bot{TELEGRAM_TOKEN.replace(':', '%3A')}/getMe")
    warnings.warn(f"a library's notice about {FILE_URL}", UserWarning, stacklevel=1)
    logging.getLogger("bot.core.jobs").warning("marker: the last record")


@pytest.mark.parametrize(
    ("verbose", "log_format"), [(False, "text"), (False, "json"), (True, "text")], ids=["file", "json-file", "verbose"]
)
def test_every_output_of_the_mmpp_run_logging_redacts_the_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None, verbose: bool, log_format: str
) -> None:
    settings = BotSettings(
        _env_file=None, state_dir=tmp_path / "var", log_format=log_format, TELEGRAM_TOKEN=TELEGRAM_TOKEN,
        DISCORD_TOKEN=DISCORD_TOKEN, REDIS_URL=f"redis://:{REDIS_PASSWORD}@broker:6379/0",
    )  # fmt: skip
    log_file = set_up_logging("run", verbose, settings)
    assert (log_file is None) is verbose
    log_what_the_libraries_log()
    terminal = capsys.readouterr().err
    assert_no_secret(terminal, "the terminal")
    if log_file is None:
        written = terminal
    else:
        written = log_file.read_text(encoding="utf-8")
        assert_no_secret(written, "the log file")
        assert "telegram handler failed" in terminal and REDACTED in terminal  # errors reach the terminal too
    assert "marker: the last record" in written
    for seen in ("HTTP Request: GET", "Shard ID", "Cannot connect", "ConnectionError", "root logger", "notice"):
        assert seen in written, seen
    if log_format == "json":
        entries = [json.loads(line) for line in written.splitlines()]
        assert any(REDACTED in entry.get("exception", "") for entry in entries)
    assert written.count(REDACTED) >= 8


def test_a_handler_added_after_the_set_up_is_covered_when_serving_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """``serve`` installs the filter again on every handler there is, a library's own included."""
    from mmpp.logs import install_secret_filter

    settings = BotSettings(_env_file=None, state_dir=tmp_path / "var", TELEGRAM_TOKEN=TELEGRAM_TOKEN)
    set_up_logging("run", True, settings)
    library = logging.getLogger("a.library")
    stream = io.StringIO()
    library.addHandler(logging.StreamHandler(stream))
    try:
        install_secret_filter(settings.secrets())
        install_secret_filter(settings.secrets())  # twice: one filter per handler still
        library.warning("calling %s", FILE_URL)
        assert TELEGRAM_TOKEN not in stream.getvalue() and REDACTED in stream.getvalue()
        assert TELEGRAM_TOKEN not in capsys.readouterr().err
        assert sum(type(item).__name__ == "SecretFilter" for item in library.handlers[0].filters) == 1
    finally:
        library.handlers.clear()


def test_the_worker_output_copied_into_the_log_file_is_redacted(tmp_path: Path) -> None:
    """The worker's lines go to the log file (and its errors to the terminal) past this process's handlers."""
    script = (
        f"print('[2026-01-02 03:04:05,678: WARNING/MainProcess] fetching {FILE_URL}');"
        f"print('2026-01-02 03:04:05,678 ERROR engine.tasks: gone {TELEGRAM_TOKEN}')"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    terminal = io.StringIO()
    log_file = tmp_path / "log" / "run.log"
    log_file.parent.mkdir()
    worker = WorkerProcess(process, log_file, terminal, stopping=True, secrets=[TELEGRAM_TOKEN])
    worker.copy_output()
    written = log_file.read_text(encoding="utf-8")
    assert_no_secret(written, "the log file")
    assert_no_secret(terminal.getvalue(), "the terminal")
    assert written.count(REDACTED) == 2 and "fetching https://api.telegram.org/file/bot<redacted>/" in written
    assert "ERROR engine.tasks: gone <redacted>" in terminal.getvalue()


def test_the_worker_is_started_without_the_chat_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", TELEGRAM_TOKEN)
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD_TOKEN)
    settings = BotSettings(_env_file=None, queue="q-42")
    environment = worker_environment(settings)
    assert "TELEGRAM_TOKEN" not in environment and "DISCORD_TOKEN" not in environment
    assert environment["MMPP_QUEUE"] == "q-42" and environment["PATH"] == os.environ["PATH"]


# ---------------------------------------------------------------------- mmpp run, for real


@pytest.fixture
async def echoing_file_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A file server behind a proxy whose error page quotes the requested URL, as Apache's 404 page does;
    yields its base file URL (for MMPP_TELEGRAM_BASE_FILE_URL) and the paths it was asked for."""
    asked: list[str] = []

    async def not_found(request: web.Request) -> web.Response:
        asked.append(request.path)
        page = (
            '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head><title>404 Not Found</title></head>'
            f"<body><h1>Not Found</h1><p>The requested URL {request.path} was not found on this server.</p>"
            "</body></html>\n"
        )
        return web.Response(status=404, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/file/bot", asked
    await runner.cleanup()


@pytest.mark.parametrize("options", [[], ["-v"]], ids=["log-file", "verbose"])
async def test_mmpp_run_keeps_the_token_out_of_the_terminal_and_the_log_file(
    tmp_path: Path, echoing_file_server: tuple[str, list[str]], options: list[str]
) -> None:
    """The real ``mmpp run`` against the loopback Bot API; the photo's download answers with an error page that
    quotes the token-bearing URL, which python-telegram-bot logs at ERROR with the page in its arguments."""
    file_url, asked = echoing_file_server
    environment = {
        **os.environ,
        "TELEGRAM_TOKEN": TELEGRAM_TOKEN,
        "MMPP_DATABASE": str(tmp_path / "mmpp.sqlite3"),
        "MMPP_STATE_DIR": str(tmp_path / "state"),
        "MMPP_TELEGRAM_BASE_FILE_URL": file_url,
        "MMPP_POLL_INTERVAL_SECONDS": "0.1",
    }
    for name in ("DISCORD_TOKEN", "REDIS_URL", "MMPP_REDIS_URL", "MMPP_LOG_FORMAT"):
        environment.pop(name, None)
    async with FakeTelegram(token=TELEGRAM_TOKEN, bot_username="MmppTestBot") as fake:
        environment["MMPP_TELEGRAM_BASE_URL"] = fake.base_url
        command = [sys.executable, "-m", "mmpp.cli", "run", "--no-worker", *options]
        bot = subprocess.Popen(command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await fake.wait_polling(timeout=60)
            await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
            await fake.wait_for(lambda call: call.method == "sendMessage" and "⚠️" in call.params.get("text", ""))
            await asyncio.sleep(0.5)  # the handler's log lines are written before its reply is sent; be sure
        finally:
            bot.send_signal(signal.SIGTERM)
            try:
                _, errors = bot.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                bot.kill()
                _, errors = bot.communicate()
    assert asked and all(TELEGRAM_TOKEN in path for path in asked)  # the download did use the token's URL
    terminal = errors.decode("utf-8", "replace")
    assert_no_secret(terminal, "the terminal")
    log_file = tmp_path / "state" / "log" / "mmpp-run.log"
    if options:
        assert not log_file.exists()
        written = terminal
    else:
        written = log_file.read_text(encoding="utf-8")
        assert_no_secret(written, "the log file")
    assert f"The requested URL /file/bot{REDACTED}/" in written
