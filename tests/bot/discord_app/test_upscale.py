"""Upscale on Discord end to end: the real discord.py against the loopback gateway and REST API, the real core and
database, and a real Celery worker on Redis (tiny weights): the button on a picture, the 2x attachment, its rating,
a stranger's press, a double press, /forget."""

from __future__ import annotations

import io

from PIL import Image

from tests.bot.discord_app.test_discord import (  # noqa: F401 - fake and running are the end-to-end fixtures
    RunningBot,
    custom_ids,
    fake,
    picture_messages,
    running,
    selfie_attachment,
    wait_for_user,
    wait_until,
)


async def test_the_upscale_button_posts_the_picture_at_twice_its_size_as_a_file(
    running: RunningBot,  # noqa: F811
) -> None:
    discord, storage, core = running.fake, running.storage, running.core
    await discord.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
    await discord.wait_until(lambda: picture_messages(discord) or None, timeout=120)
    await core.wait_idle(timeout=30)
    (original,) = await storage.recent_jobs(1)
    (picture,) = await storage.pictures(original.id)
    (message,) = picture_messages(discord)
    button = f"mmpp:upscale:{picture.id}"
    assert button in custom_ids(message)[1] and len(button) <= 100

    # A stranger's press: a private one-line refusal with the code, answered at once; nothing is ordered.
    stranger = discord.add_user("mallory")
    refused = await discord.wait_for_callback(await discord.click_button(int(message["id"]), button, user=stranger))
    assert refused.type == 4 and refused.ephemeral and refused.elapsed < 3.0
    assert "(`NOT_YOURS`)" in refused.data["content"]
    assert await storage.count("jobs") == 1

    # The requester's press: deferred within 3 s, one upscale job on the quality queue, its picture a 2x PNG file.
    press = await discord.click_button(int(message["id"]), button)
    deferred = await discord.wait_for_callback(press)
    assert deferred.type == 5 and deferred.elapsed < 3.0
    await discord.wait_until(lambda: len(picture_messages(discord)) == 2 or None, timeout=120)
    await core.wait_idle(timeout=30)
    upscale = next(job for job in await storage.recent_jobs(1) if job.is_upscale)
    assert upscale.queue is not None and upscale.queue.endswith(".quality") and upscale.state == "done"
    posted = picture_messages(discord)[-1]
    (file,) = discord.message_files(posted)
    assert file.filename == f"mmpp-{upscale.id}-1-2x.png"
    doubled, first = Image.open(io.BytesIO(file.data)), Image.open(io.BytesIO(picture.png))
    assert doubled.format == "PNG" and doubled.size == (2 * first.width, 2 * first.height)
    assert "2× upscale of job" in posted["content"]
    (upscaled,) = await storage.pictures(upscale.id)
    assert custom_ids(posted) == [[f"mmpp:rate:{upscaled.id}:{score}" for score in range(1, 6)]]

    # A second press makes no second job: a private line names the first.
    again = await discord.click_button(int(message["id"]), button)
    await discord.wait_for_callback(again)
    await discord.wait_until(lambda: discord.followups(again) or None)
    assert f"already upscaled (job {upscale.id})" in discord.followups(again)[-1]["content"]
    assert await storage.count("jobs") == 2

    # Rated like any picture, by anyone; /forget takes the upscale with everything else.
    rater = discord.add_user("carol")
    await discord.wait_for_callback(
        await discord.click_button(int(posted["id"]), f"mmpp:rate:{upscaled.id}:4", user=rater)
    )
    carol = await wait_for_user(storage, str(rater.id))
    await wait_until(lambda: storage.rating(upscaled.id, carol), 4)
    await discord.wait_for_callback(await discord.send_slash_command("forget", {}))
    await wait_until(lambda: storage.count("jobs"), 0)
    for table in ("pictures", "selfies"):
        assert await storage.count(table) == 0, table
    assert await storage.count("ratings", "picture_id = ?", (upscaled.id,)) == 0
