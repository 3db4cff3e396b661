"""Upscale on Telegram end to end: the real python-telegram-bot against the loopback Bot API, the real core and
database, and a real Celery worker on Redis (tiny weights): the button under a picture, the 2x file, its rating,
a stranger's press, /forget."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bot.storage import Storage
from bot.telegram_app import UPSCALE_BUTTON
from tests.bot.core.test_jobs_upscale import WorkerLikeQueue
from tests.bot.telegram_app.conftest import running_bot
from tests.bot.telegram_app.test_telegram import ALICE, BOB, TOKEN, RunningBot, fake, running, wait_until  # noqa: F401
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram


async def test_the_upscale_button_sends_the_picture_at_twice_its_size_as_a_file(
    running: RunningBot,  # noqa: F811 - the end-to-end fixture of test_telegram.py
) -> None:
    telegram, storage, core = running.fake, running.storage, running.core
    group = telegram.group(bot_is_admin=True)
    await telegram.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile@MmppTestBot anime")
    sent = await telegram.wait_for("sendPhoto", timeout=120)
    await core.wait_idle(timeout=60)
    (original,) = await storage.recent_jobs(1)
    (picture,) = await storage.pictures(original.id)
    button = UPSCALE_BUTTON.format(picture_id=picture.id)
    offered = [item["callback_data"] for row in sent.params["reply_markup"]["inline_keyboard"] for item in row]
    assert button in offered and len(button.encode()) <= 64

    # A stranger's press: refused in an alert only they see, with the code; nothing is ordered.
    await telegram.press_button(sent.result, BOB, button)
    refusal = await telegram.wait_for(
        lambda call: call.method == "answerCallbackQuery" and call.params.get("show_alert")
    )
    assert "(NOT_YOURS)" in refusal.params["text"]
    assert await storage.count("jobs") == 1

    # The requester's press (twice, as a double click): answered, one job on the quality queue.
    await telegram.press_button(sent.result, ALICE, button)
    await telegram.press_button(sent.result, ALICE, button)
    document = await telegram.wait_for("sendDocument", timeout=120)
    await core.wait_idle(timeout=60)
    assert await storage.count("jobs") == 2 and len(telegram.calls("sendDocument")) == 1
    upscale = next(job for job in await storage.recent_jobs(1) if job.is_upscale)
    assert upscale.queue is not None and upscale.queue.endswith(".quality")
    assert upscale.state == "done" and upscale.upscale_of_picture_id == picture.id
    (file,) = document.files.values()
    assert file.filename is not None and file.filename.endswith(".png")
    doubled = Image.open(io.BytesIO(file.data))
    first = Image.open(io.BytesIO(picture.png))
    assert doubled.format == "PNG" and doubled.size == (2 * first.width, 2 * first.height)
    assert "2× upscale of job" in document.params["caption"]
    assert not telegram.calls("sendPhoto")[1:], "the upscale went as a photo, which Telegram recompresses"

    # Rated like any picture; its keyboard offers no further upscale or re-roll.
    (upscaled,) = await storage.pictures(upscale.id)
    upscale_offers = [
        item["callback_data"] for row in document.params["reply_markup"]["inline_keyboard"] for item in row
    ]
    assert upscale_offers == [f"rate:{upscaled.id}:{stars}" for stars in range(1, 6)]
    await telegram.press_button(document.result, BOB, f"rate:{upscaled.id}:5")

    async def bobs_rating() -> int | None:
        bob = await storage.find_user("telegram", str(BOB.id))
        return None if bob is None else await storage.rating(upscaled.id, bob)

    await wait_until(bobs_rating, 5)

    await telegram.send_message(group, ALICE, "/forget@MmppTestBot")
    await wait_until(lambda: storage.count("jobs"), 0)
    for table in ("pictures", "selfies", "ratings"):
        assert await storage.count(table) == 0, table


async def test_a_group_that_forbids_files_ends_the_upscale_once_and_tells_the_requester(
    fake: FakeTelegram,  # noqa: F811 - the loopback Bot API of test_telegram.py
    tmp_path: Path,
) -> None:
    """Telegram's 400 "not enough rights to send documents" is final: one attempt, the upscale job ends as
    DELIVERY_FAILED, and the requester hears it in private; the picture it came from stays as it was."""
    async with running_bot(fake, tmp_path, queue=WorkerLikeQueue(), delivery_pause_first_seconds=0.05) as bot:
        await fake.send_message(None, ALICE, "/start")  # so the bot may write to Alice in private
        group = fake.group()
        await fake.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile@MmppTestBot anime")
        sent = await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=10)
        (picture,) = await bot.storage.pictures(1)
        fake.forbid_documents(group)
        await fake.press_button(sent.result, ALICE, UPSCALE_BUTTON.format(picture_id=picture.id))
        await wait_until(lambda: job_state(bot.storage, 2), ("failed", "DELIVERY_FAILED"))
        await bot.core.wait_idle(timeout=10)
        assert [call.status for call in fake.calls("sendDocument")] == [400]
        told = [call for call in fake.calls("sendMessage") if "DELIVERY_FAILED" in str(call.params.get("text"))]
        assert [call.params["chat_id"] for call in told] == [ALICE.id]
        original = await bot.storage.job(1)
        assert original is not None and original.state == "done"


async def job_state(storage: Storage, job_id: int) -> tuple[str, str | None] | None:
    job = await storage.job(job_id)
    return None if job is None or job.delivered_at is None else (job.state, job.error_code)
