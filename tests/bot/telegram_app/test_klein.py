"""Telegram end to end with a FLUX.2 [klein] worker: the real python-telegram-bot against the loopback Bot API,
the real core and database, and the session's klein worker on Redis (``MMPP_WEIGHTS=tiny-klein``)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.telegram_app.test_telegram import ALICE, BOB, TOKEN, RunningBot, bot_with_worker, wait_until
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram


@pytest.fixture
async def running(tmp_path: Path, klein_worker: str) -> AsyncIterator[RunningBot]:
    async with (
        FakeTelegram(token=TOKEN, bot_username="MmppTestBot") as fake,
        bot_with_worker(fake, tmp_path, klein_worker) as bot,
    ):
        yield bot


async def test_klein_pictures_arrive_rated_and_weights_are_refused_in_one_line(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile anime count:2")
    album = await fake.wait_for("sendMediaGroup", timeout=120)
    assert album.ok and len(album.result) == 2
    assert all(Image.open(io.BytesIO(file.data)).format == "PNG" for file in album.files.values())
    keyboard = await fake.wait_for(lambda call: call.method == "sendMessage" and "Rate them" in call.params["text"])
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    assert job.state == "done" and job.delivered_at
    picture = (await storage.pictures(job.id))[1]
    await fake.press_button(keyboard.result, BOB, f"rate:{picture.id}:4")
    await fake.wait_for("answerCallbackQuery")
    bob = await storage.find_user("telegram", str(BOB.id))
    await wait_until(lambda: storage.rating(picture.id, bob), 4)

    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile anime prompt:a pirate (hat)1.2")
    refusal = await fake.wait_for(
        lambda call: call.method == "sendMessage" and "(INVALID_REQUEST)" in call.params.get("text", ""), timeout=120
    )
    text = refusal.params["text"]
    assert refusal.ok and "\n" not in text and "Traceback" not in text and "plain words" in text
    await running.core.wait_idle(timeout=30)
    refused = (await storage.recent_jobs(1))[0]
    assert refused.id != job.id and refused.state == "failed" and refused.error_code == "INVALID_REQUEST"
    assert len(fake.calls("sendMediaGroup")) == 1 and not fake.calls("sendPhoto")  # no pictures for the refusal
    assert await storage.rating(picture.id, bob) == 4
