"""Discord end to end with a FLUX.2 [klein] worker: the real discord.py against the loopback Discord, the real
core and database, and the session's klein worker on Redis (``MMPP_WEIGHTS=tiny-klein``)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.discord_app.test_discord import (
    RunningBot,
    picture_messages,
    selfie_attachment,
    start_bot,
    stop_bot,
    wait_for_user,
    wait_until,
)
from tests.fakes.discord_api import FakeDiscord

EPHEMERAL = 64


@pytest.fixture
async def running(tmp_path: Path, klein_worker: str) -> AsyncIterator[RunningBot]:
    async with FakeDiscord(auto_patch=False) as fake:
        bot = await start_bot(fake, tmp_path, klein_worker)
        yield bot
        await stop_bot(bot)


async def test_klein_pictures_arrive_rated_and_weights_are_refused_in_one_private_line(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    ordered = await fake.send_slash_command("profile", {"style": "anime", "count": 2}, attachments=selfie_attachment())
    assert (await fake.wait_for_callback(ordered)).type == 5
    await fake.wait_until(lambda: len(picture_messages(fake)) == 2 or None, timeout=120)
    pictures = picture_messages(fake)
    assert all(Image.open(io.BytesIO(fake.message_files(message)[0].data)).format == "PNG" for message in pictures)
    job = (await storage.recent_jobs(1))[0]
    picture = (await storage.pictures(job.id))[0]

    rater = fake.add_user("carol")
    rated = await fake.click_button(int(pictures[0]["id"]), f"mmpp:rate:{picture.id}:4", user=rater)
    assert (await fake.wait_for_callback(rated)).data["content"] == "Thanks: 4★"
    carol = await wait_for_user(storage, str(rater.id))
    await wait_until(lambda: storage.rating(picture.id, carol), 4)

    weighted = await fake.send_slash_command(
        "profile", {"style": "anime", "prompt": "a pirate (hat)1.2"}, attachments=selfie_attachment()
    )
    assert (await fake.wait_for_callback(weighted)).type == 5  # the bot's check lets moderate weights through
    refusal = await fake.wait_for_message(lambda item: "`INVALID_REQUEST`" in item.get("content", ""), timeout=120)
    assert refusal["flags"] & EPHEMERAL and "\n" not in refusal["content"] and "Traceback" not in refusal["content"]
    assert "plain words" in refusal["content"]
    await running.core.wait_idle(timeout=30)
    refused = (await storage.recent_jobs(1))[0]
    assert refused.id != job.id and refused.state == "failed" and refused.error_code == "INVALID_REQUEST"
    assert len(picture_messages(fake)) == 2  # the refused job posted no pictures; the first job's are untouched
    assert await storage.rating(picture.id, carol) == 4
