"""Telegram end to end: the real python-telegram-bot against the loopback Bot API,
the real core and database, and a real Celery worker on Redis (tiny weights)."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

import bot.core.status as status_rule
from bot.core import CHAT_KIND, ChatCore
from bot.queue import CeleryJobQueue, make_client
from bot.settings import BotSettings
from bot.storage import Storage
from bot.telegram_app import ALLOWED_UPDATES, COMMANDS, TelegramAdapter, TelegramDelivery
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import PREVIEW_JOB, ScriptedQueue
from tests.conftest import REDIS_URL, REPO, SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram, FakeUser
from tests.images import side_by_side
from tests.support.telegram import telegram_settings

TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz"
ALICE = FakeUser(1001, "Alice", username="alice")
BOB = FakeUser(1002, "Bob", username="bob")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def settings_for(fake: FakeTelegram, tmp_path: Path, queue: str, **overrides: object) -> BotSettings:
    return telegram_settings(fake, tmp_path, redis_url=REDIS_URL, queue=queue, **overrides)


@dataclass
class RunningBot:
    fake: FakeTelegram
    core: ChatCore
    storage: Storage
    adapter: TelegramAdapter


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, bot_username="MmppTestBot") as server:
        yield server


@asynccontextmanager
async def bot_with_worker(fake: FakeTelegram, tmp_path: Path, worker_queue: str) -> AsyncIterator[RunningBot]:
    """The bot as ``mmpp run`` starts it, sending its jobs to a real worker's queue on Redis."""
    settings = settings_for(fake, tmp_path, worker_queue)
    storage = await Storage.open(settings.database)
    core = ChatCore(storage, CeleryJobQueue(make_client(settings.redis_url, settings.state_dir)), settings)
    adapter = TelegramAdapter(core, settings, TOKEN)
    try:
        await adapter.open()
        await core.start()
        await fake.wait_polling()
        yield RunningBot(fake, core, storage, adapter)
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


@pytest.fixture
async def running(fake: FakeTelegram, tmp_path: Path, redis_worker: str) -> AsyncIterator[RunningBot]:
    async with bot_with_worker(fake, tmp_path, redis_worker) as bot:
        yield bot


async def test_start_publishes_commands_and_asks_for_reactions(running: RunningBot) -> None:
    fake = running.fake
    commands = fake.calls("setMyCommands")[-1].params["commands"]
    assert [command["command"] for command in commands] == [name for name, _ in COMMANDS]
    assert set(ALLOWED_UPDATES) <= set(fake.allowed_updates)
    await fake.send_message(None, ALICE, "/start")
    reply = await fake.wait_for(lambda call: call.method == "sendMessage" and "selfie" in call.params.get("text", ""))
    assert "anime" in reply.params["text"]


async def test_photo_with_caption_to_pictures_to_ratings(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    group = fake.group(bot_is_admin=True)  # reactions reach bots that administer the group
    await fake.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption="pixel-art")  # not for us in a group
    await fake.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile@MmppTestBot pixel-art")
    sent = await fake.wait_for("sendPhoto", timeout=120)
    assert sent.ok and "Pixel art" in sent.params["caption"] and "noise" in sent.params["caption"]
    assert Image.open(io.BytesIO(next(iter(sent.files.values())).data)).format == "PNG"
    status = fake.calls("sendMessage")[0]
    assert "queued" in status.params["text"]
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    assert job.state == "done" and job.delivered_at

    message = sent.result
    picture = (await storage.pictures(job.id))[0]
    await fake.press_button(message, BOB, f"rate:{picture.id}:4")
    await fake.wait_for("answerCallbackQuery")
    bob = await storage.find_user("telegram", str(BOB.id))
    assert await storage.rating(picture.id, bob) == 4

    await fake.react(group, message["message_id"], BOB, old=[], new=["🔥"])
    await wait_until(lambda: storage.rating(picture.id, bob), 5)
    await fake.react(group, message["message_id"], BOB, old=["🔥"], new=["👎"])
    await wait_until(lambda: storage.rating(picture.id, bob), 2)
    await fake.react(group, message["message_id"], BOB, old=["👎"], new=[])
    await wait_until(lambda: storage.rating(picture.id, bob), None)
    assert await storage.count("jobs") == 1


async def wait_until(read: object, expected: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await read()  # type: ignore[operator]
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected!r}, last saw {value!r}")


async def test_several_pictures_come_as_a_media_group_with_a_rating_keyboard(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile anime count:2")
    group = await fake.wait_for("sendMediaGroup", timeout=120)
    assert len(group.result) == 2
    keyboard = await fake.wait_for(lambda call: call.method == "sendMessage" and "Rate them" in call.params["text"])
    rows = keyboard.params["reply_markup"]["inline_keyboard"]
    assert len(rows) == 4 and rows[-1][0]["callback_data"].startswith("reroll:")
    assert [button["callback_data"].split(":")[0] for button in rows[0]] == ["rate"] * 5
    assert [button["callback_data"].split(":")[0] for button in rows[2]] == ["upscale"] * 2  # one per picture


async def test_a_photo_without_a_style_gets_a_style_keyboard(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes())
    question = await fake.wait_for(lambda call: call.method == "sendMessage" and call.params["text"] == "Which style?")
    buttons = [button["callback_data"] for row in question.params["reply_markup"]["inline_keyboard"] for button in row]
    watercolor = next(data for data in buttons if data.endswith(":watercolor"))
    assert watercolor.startswith("style:") and all(len(data.encode()) <= 64 for data in buttons)
    assert "pending_photos" not in running.adapter.application.bot_data  # kept, bounded, by the core
    await fake.press_button(question.result, ALICE, watercolor)
    sent = await fake.wait_for("sendPhoto", timeout=120)
    assert "Watercolor" in sent.params["caption"]
    await fake.press_button(question.result, ALICE, watercolor)  # a second press: the photo is taken
    stale = await fake.wait_for(
        lambda call: call.method == "answerCallbackQuery" and "no longer waiting" in call.params.get("text", "")
    )
    assert stale.params["show_alert"]


async def test_a_photo_sent_as_a_document_is_accepted(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_document(None, ALICE, SAMPLE_SELFIE.read_bytes(), "me.jpg", "image/jpeg", caption="comic")
    sent = await fake.wait_for("sendPhoto", timeout=120)
    assert "Comic" in sent.params["caption"]


async def test_duplicate_updates_make_one_job_and_one_reply(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
    fake.duplicate_last_update()
    await fake.wait_for("sendPhoto", timeout=120)
    await running.core.wait_idle(timeout=60)
    await asyncio.sleep(0.5)
    assert await storage.count("jobs") == 1
    assert len(fake.calls("sendPhoto")) == 1


async def test_reroll_reuses_the_selfie(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
    first = await fake.wait_for("sendPhoto", timeout=120)
    job = (await storage.recent_jobs(1))[0]
    await fake.press_button(first.result, ALICE, f"reroll:{job.id}")
    await fake.wait_for(lambda call: call.method == "sendPhoto" and call is not first, timeout=120)
    jobs = await storage.recent_jobs(1)
    assert len(jobs) == 2 and jobs[0].parent_job_id == job.id


@pytest.mark.parametrize(
    ("caption", "photo", "code"),
    [
        ("building", "selfie", ErrorCode.UNKNOWN_STYLE),
        ("anime count:9", "selfie", ErrorCode.INVALID_REQUEST),
        ("anime " + "x" * 600, "selfie", ErrorCode.PROMPT_TOO_LONG),
        ("anime", "wall", ErrorCode.NO_FACE),
        ("anime", "tiny", ErrorCode.IMAGE_TOO_SMALL),
        ("anime", "two-faces", ErrorCode.MULTIPLE_FACES),
        ("/dance", "selfie", ErrorCode.UNKNOWN_COMMAND),
    ],
)
async def test_errors_reach_the_user_as_one_line(
    running: RunningBot, caption: str, photo: str, code: ErrorCode
) -> None:
    fake = running.fake
    selfie = Image.open(SAMPLE_SELFIE)
    images = {
        "selfie": SAMPLE_SELFIE.read_bytes(),
        "wall": png(Image.new("RGB", (300, 300), (100, 140, 180))),
        "tiny": png(Image.new("RGB", (16, 16), (100, 140, 180))),
        "two-faces": png(side_by_side(selfie)),
    }
    await fake.send_photo(None, ALICE, images[photo], caption=caption)
    reply = await fake.wait_for(
        lambda call: call.method == "sendMessage" and f"({code.value})" in call.params.get("text", ""), timeout=120
    )
    assert "\n" not in reply.params["text"] and "Traceback" not in reply.params["text"]


async def test_a_text_file_sent_as_an_image_document_is_refused(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_document(None, ALICE, b"just some text", "notes.jpg", "image/jpeg", caption="anime")
    reply = await fake.wait_for(
        lambda call: call.method == "sendMessage" and "(NOT_AN_IMAGE)" in call.params.get("text", ""), timeout=120
    )
    assert "\n" not in reply.params["text"]


async def test_quota_is_explained(fake: FakeTelegram, tmp_path: Path, redis_worker: str) -> None:
    settings = settings_for(fake, tmp_path, redis_worker, daily_picture_quota=1)
    storage = await Storage.open(settings.database)
    core = ChatCore(storage, CeleryJobQueue(make_client(settings.redis_url, settings.state_dir)), settings)
    adapter = TelegramAdapter(core, settings, TOKEN)
    await adapter.open()
    await core.start()
    try:
        await fake.wait_polling()
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        await fake.wait_for("sendPhoto", timeout=120)
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        reply = await fake.wait_for(
            lambda call: call.method == "sendMessage" and "(QUOTA_EXCEEDED)" in call.params.get("text", "")
        )
        assert "resets" in reply.params["text"]
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_every_error_code_is_delivered_as_one_line(fake: FakeTelegram, tmp_path: Path, code: ErrorCode) -> None:
    """Whatever the worker or the core answers, the person gets one line with the code."""
    from telegram.ext import ApplicationBuilder

    application = ApplicationBuilder().token(TOKEN).base_url(fake.base_url).base_file_url(fake.base_file_url).build()
    chat = fake.private_chat(ALICE)
    async with application:
        delivery = TelegramDelivery(application)
        await delivery.post_failure(_job_stub(chat_id=chat.id), code, "A problem\nwith two lines.")
    sent = fake.calls("sendMessage")[-1].params["text"]
    assert sent == f"⚠️ A problem with two lines. ({code.value})"


def _job_stub(chat_id: int):
    from bot.storage import Job

    return Job(
        id=1, task_id="t", user_id=1, platform="telegram", event_key="e", chat_id=str(chat_id), style="anime",
        prompt="", mode=None, picture_count=1, seed=None, parent_job_id=None, state="failed", progress_done=0,
        progress_total=0, error_code=None, error_message=None, reply_context={"chat_id": chat_id},
        status_message_id=None, result_meta=None, created_at="", enqueued_at=None, finished_at=None, delivered_at=None,
    )  # fmt: skip


async def test_a_killed_bot_delivers_the_reply_once_after_restart(
    fake: FakeTelegram, tmp_path: Path, redis_worker: str, cache_dir: Path
) -> None:
    """The bot process is SIGKILLed mid-job; a new process delivers the result exactly once."""
    environment = {
        **os.environ,
        "TELEGRAM_TOKEN": TOKEN,
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": redis_worker,
        "MMPP_DATABASE": str(tmp_path / "mmpp.sqlite3"),
        "MMPP_STATE_DIR": str(tmp_path / "state"),
        "MMPP_TELEGRAM_BASE_URL": fake.base_url,
        "MMPP_TELEGRAM_BASE_FILE_URL": fake.base_file_url,
        "MMPP_POLL_INTERVAL_SECONDS": "0.1",
    }
    command = [sys.executable, "-m", "mmpp.cli", "run", "--no-worker"]
    bot = subprocess.Popen(command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await fake.wait_polling(timeout=60)
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="headshot mode:quality count:4")
        await fake.wait_for(
            lambda call: call.method == "sendMessage" and "queued" in call.params.get("text", ""), timeout=60
        )
        bot.send_signal(signal.SIGKILL)
        bot.wait(timeout=10)
        assert not fake.calls("sendMediaGroup")
        bot = subprocess.Popen(command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await fake.wait_for("sendMediaGroup", timeout=180)
        await asyncio.sleep(2)
        assert len(fake.calls("sendMediaGroup")) == 1
    finally:
        bot.terminate()
        try:
            _, errors = bot.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            bot.kill()
            _, errors = bot.communicate()
    assert TOKEN.encode() not in errors


async def test_a_50_mb_photo_is_refused_without_downloading_it(running: RunningBot) -> None:
    fake = running.fake
    huge = b"\xff\xd8\xff\xe0" + bytes(50 * 2**20)
    await fake.send_document(None, ALICE, huge, "huge.jpg", "image/jpeg", caption="anime")
    reply = await fake.wait_for(
        lambda call: call.method == "sendMessage" and "(IMAGE_TOO_LARGE)" in call.params.get("text", ""), timeout=30
    )
    assert "\n" not in reply.params["text"]
    assert not fake.calls("getFile") and not fake.calls("downloadFile")


async def test_captions_in_other_scripts_and_control_characters(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="アニメ")
    await fake.wait_for(lambda call: call.method == "sendMessage" and "(UNKNOWN_STYLE)" in call.params.get("text", ""))
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime пират\x00\x1b[31m в шляпе")
    sent = await fake.wait_for("sendPhoto", timeout=120)
    assert sent.ok
    job = (await running.storage.recent_jobs(1))[0]
    assert job.prompt == "пират [31m в шляпе"


async def test_profile_without_a_photo_asks_for_one(running: RunningBot) -> None:
    fake = running.fake
    await fake.send_message(None, ALICE, "/profile anime")
    reply = await fake.wait_for(lambda call: call.method == "sendMessage" and "Send a selfie" in call.params["text"])
    assert "/profile" in reply.params["text"]


async def test_forget_removes_rows_selfies_pictures_and_broker_results(running: RunningBot) -> None:
    """The result left the broker when its pictures were stored (nothing waits there for /forget); /forget
    then removes every row, the selfie kept for re-rolls included."""
    import redis

    fake, storage = running.fake, running.storage
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
    await fake.wait_for("sendPhoto", timeout=120)
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    broker = redis.Redis.from_url(REDIS_URL)
    result_key = f"celery-task-meta-{job.task_id}"
    assert not broker.exists(result_key)  # forgotten as soon as the pictures were stored
    assert await storage.count("selfies") == 1  # kept for re-rolls
    await fake.send_message(None, ALICE, "/forget")
    await fake.wait_for(lambda call: call.method == "sendMessage" and "deleted everything" in call.params["text"])
    assert not broker.exists(result_key)
    for table in ("users", "jobs", "selfies", "pictures", "ratings"):
        assert await storage.count(table) == 0, table


async def test_buttons_posted_by_earlier_versions_still_work(fake: FakeTelegram, tmp_path: Path) -> None:
    """Pictures posted before the buttons got their names carry ``r:PICTURE:STARS`` and ``rr:JOB``: still
    understood; anything else gets a one-line answer that the button is stale."""
    settings = settings_for(fake, tmp_path, "unused")
    storage = await Storage.open(settings.database)
    core = ChatCore(storage, ScriptedQueue(), settings)
    adapter = TelegramAdapter(core, settings, TOKEN)
    await adapter.open()
    await core.start()
    try:
        await fake.wait_polling()
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        sent = await fake.wait_for("sendPhoto", timeout=60)
        await core.wait_idle(timeout=30)
        job = (await storage.recent_jobs(1))[0]
        (picture,) = await storage.pictures(job.id)
        old_keyboard = [
            [{"text": "3★", "callback_data": f"r:{picture.id}:3"}],
            [{"text": "?", "callback_data": "zz:1"}],
        ]
        message = {**sent.result, "reply_markup": {"inline_keyboard": old_keyboard}}
        fake.messages[(message["chat"]["id"], message["message_id"])] = message
        await fake.press_button(message, BOB, f"r:{picture.id}:3")
        await fake.wait_for(lambda call: call.method == "answerCallbackQuery" and "3★" in call.params.get("text", ""))
        assert await storage.rating(picture.id, await storage.find_user("telegram", str(BOB.id))) == 3
        await fake.press_button(message, BOB, "zz:1")
        stale = await fake.wait_for(
            lambda call: call.method == "answerCallbackQuery" and "not valid" in call.params.get("text", "")
        )
        assert stale.params["show_alert"]
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


# --------------------------------------------------------------------------- live previews

STATUS_EDITS = {"editMessageText", "editMessageCaption", "editMessageMedia"}


@dataclass
class Started:
    running: RunningBot

    async def close(self) -> None:
        await self.running.core.stop()
        await self.running.adapter.close()
        await self.running.storage.close()


async def start_bot(fake: FakeTelegram, tmp_path: Path, queue: str, job_queue: object = None) -> Started:
    settings = settings_for(fake, tmp_path, queue)
    storage = await Storage.open(settings.database)
    queue_client = job_queue or CeleryJobQueue(make_client(settings.redis_url, settings.state_dir))
    core = ChatCore(storage, queue_client, settings)  # type: ignore[arg-type]
    adapter = TelegramAdapter(core, settings, TOKEN)
    await adapter.open()
    await core.start()
    await fake.wait_polling()
    return Started(RunningBot(fake, core, storage, adapter))


def status_edits(fake: FakeTelegram, chat_id: int, message_id: int | None = None) -> list:
    return [
        call
        for call in fake.calls()
        if call.method in STATUS_EDITS
        and call.params.get("chat_id") == chat_id
        and (message_id is None or call.params.get("message_id") == message_id)
    ]


def status_message_ids(fake: FakeTelegram, chat_id: int) -> list[int]:
    return [
        call.result["message_id"]
        for call in fake.calls("sendMessage")
        if call.ok and call.params.get("chat_id") == chat_id and "queued" in call.params.get("text", "")
    ]


def most_in_a_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max((sum(1 for other in ordered if start <= other < start + window) for start in ordered), default=0)


def assert_within_telegram_limits(edits: list, spacing: float) -> None:
    times = [call.at for call in edits]
    assert all(later - earlier >= spacing for earlier, later in itertools.pairwise(times)), times
    assert most_in_a_window(times, 60.0) <= 20


@pytest.fixture
async def previewing(fake: FakeTelegram, tmp_path: Path, preview_worker: str) -> AsyncIterator[RunningBot]:
    started = await start_bot(fake, tmp_path, preview_worker)
    yield started.running
    await started.close()


async def test_live_previews_turn_the_status_into_a_photo_before_the_pictures(previewing: RunningBot) -> None:
    fake, storage = previewing.fake, previewing.storage
    chat = fake.private_chat(ALICE)
    options = " ".join(f"{key}:{value}" for key, value in PREVIEW_JOB.items())
    await fake.send_photo(chat, ALICE, SAMPLE_SELFIE.read_bytes(), caption=f"anime {options}")
    album = await fake.wait_for("sendMediaGroup", timeout=400)
    await previewing.core.wait_idle(timeout=60)
    (status_id,) = status_message_ids(fake, chat.id)
    edits = status_edits(fake, chat.id, status_id)
    assert edits and all(call.ok for call in edits), [(call.method, call.error) for call in edits]
    shown = [call for call in edits if call.method == "editMessageMedia"]
    assert shown and shown[0].at < album.at
    for call in shown:
        media = call.params["media"]
        assert media["type"] == "photo" and media["media"].startswith("attach://") and "painting" in media["caption"]
        preview = Image.open(io.BytesIO(call.files[media["media"].removeprefix("attach://")].data))
        assert preview.format == "JPEG" and max(preview.size) <= 256
    after_photo = [call for call in edits if call.at > shown[0].at and call.method != "editMessageMedia"]
    assert all(call.method == "editMessageCaption" for call in after_photo)  # its text is a caption now
    # Telegram: about one message a second per chat, edits included (the core edits a private chat every 2 s).
    assert_within_telegram_limits(edits, spacing=1.0)

    assert len(fake.calls("sendMediaGroup")) == 1 and len(album.result) == int(PREVIEW_JOB["count"])
    job = (await storage.recent_jobs(1))[0]
    assert job.delivered_at and len(await storage.pictures(job.id)) == int(PREVIEW_JOB["count"])
    assert job.reply_context[CHAT_KIND] == "private"
    deleted = fake.calls("deleteMessage")
    assert [call.params["message_id"] for call in deleted if call.ok] == [status_id]  # nothing left behind
    assert (chat.id, status_id) not in fake.messages


async def test_refused_preview_edits_change_nothing_about_delivery(
    fake: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telegram answers the first three preview edits 400, 429 and 500: each is tried once (PTB's rate limiter
    alone would wait out the 429 and hold every other request meanwhile); after the 429 the chat's status edits
    wait its retry_after, the text edits go on, the picture arrives once.  A scripted queue paints for some
    seconds with a new preview at every poll."""
    monkeypatch.setattr(status_rule, "PREVIEW_REFUSALS_TO_STOP", 3)
    fake.fail_next("editMessageMedia", 400, description="Bad Request: MEDIA_EMPTY")
    fake.fail_next("editMessageMedia", 429, retry_after=2)
    fake.fail_next("editMessageMedia", 500)
    started = await start_bot(fake, tmp_path, "unused", ScriptedQueue(progress_polls=150, previews_every=1))
    try:
        chat = fake.private_chat(ALICE)
        await fake.send_photo(chat, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        await fake.wait_for("sendPhoto", timeout=60)
        await started.running.core.wait_idle(timeout=30)
        (status_id,) = status_message_ids(fake, chat.id)
        attempts = fake.calls("editMessageMedia")
        assert [call.status for call in attempts] == [400, 429, 500]  # then previews stop for this job
        uploads = [next(iter(call.files.values())).data for call in attempts]
        assert len(uploads) == len(set(uploads))  # none sent again
        assert attempts[2].at - attempts[1].at >= 2.0  # the chat's status edits waited the 429's retry_after
        texts_after = [call for call in fake.calls("editMessageText") if call.at > attempts[-1].at and call.ok]
        assert texts_after  # still text (no preview was taken), still updated
        assert_within_telegram_limits(status_edits(fake, chat.id, status_id), spacing=1.0)
        assert len(fake.calls("sendPhoto")) == 1
        job = (await started.running.storage.recent_jobs(1))[0]
        assert job.delivered_at and len(await started.running.storage.pictures(job.id)) == 1
        assert (chat.id, status_id) not in fake.messages
    finally:
        await started.close()


async def test_jobs_in_one_group_share_the_groups_pace(tmp_path: Path) -> None:
    """Two jobs in one group: their status edits together keep to the group's pace (Telegram: 20 messages a
    minute per group, edits included, which this fake enforces), and each gets its preview and picture."""
    async with FakeTelegram(token=TOKEN, bot_username="MmppTestBot", group_per_minute=20) as fake:
        started = await start_bot(fake, tmp_path, "unused", ScriptedQueue(progress_polls=150, previews_every=1))
        try:
            group = fake.group()
            for person in (ALICE, BOB):
                await fake.send_photo(group, person, SAMPLE_SELFIE.read_bytes(), caption="/profile anime")
            await fake.wait_for(lambda call: len(fake.calls("sendPhoto")) == 2, timeout=90)
            await started.running.core.wait_idle(timeout=60)
            in_group = [call for call in fake.calls() if call.params.get("chat_id") == group.id]
            assert not [call for call in in_group if call.status == 429]
            edits = status_edits(fake, group.id)
            assert len(status_message_ids(fake, group.id)) == 2
            assert [call for call in edits if call.method == "editMessageMedia" and call.ok]
            assert_within_telegram_limits(edits, spacing=5.0)  # one status edit per 6 s in the whole group
            jobs = await started.running.storage.recent_jobs(1) + await started.running.storage.recent_jobs(2)
            assert all(job.reply_context[CHAT_KIND] == "supergroup" for job in jobs)
            assert len(fake.calls("sendPhoto")) == 2
        finally:
            await started.close()


async def test_a_failed_job_leaves_no_status_or_preview_behind(fake: FakeTelegram, tmp_path: Path) -> None:
    queue = ScriptedQueue(progress_polls=40, previews_every=1, error=MmppError(ErrorCode.OUTPUT_BLOCKED, "Not shown."))
    started = await start_bot(fake, tmp_path, "unused", queue)
    try:
        chat = fake.private_chat(ALICE)
        await fake.send_photo(chat, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        failure = await fake.wait_for(
            lambda call: call.method == "sendMessage" and "(OUTPUT_BLOCKED)" in call.params.get("text", ""), timeout=60
        )
        await started.running.core.wait_idle(timeout=30)
        (status_id,) = status_message_ids(fake, chat.id)
        assert [call for call in fake.calls("editMessageMedia") if call.ok]  # it showed a preview meanwhile
        deleted = [call for call in fake.calls("deleteMessage") if call.ok]
        assert [call.params["message_id"] for call in deleted] == [status_id] and deleted[0].at > failure.at
        assert (chat.id, status_id) not in fake.messages
    finally:
        await started.close()


async def test_a_variant_goes_through_the_real_worker_and_its_ratings_count_for_it(running: RunningBot) -> None:
    """The core picks the variant (here the operator's promoted one), the worker renders it with its own scales,
    the rating counts for it; rolled back, the style's next job renders the style as written."""
    fake, storage, variants = running.fake, running.storage, running.core.jobs.variants
    await variants.promote("anime", "more-likeness")
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile anime")
    sent = await fake.wait_for("sendPhoto", timeout=120)
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    assert job.variant == "more-likeness" and job.result_meta is not None
    assert job.result_meta["variant"] == "more-likeness" and job.result_meta["scales"]["ip_adapter"] == 0.7
    picture = (await storage.pictures(job.id))[0]
    await fake.press_button(sent.result, ALICE, f"rate:{picture.id}:5")
    await fake.wait_for("answerCallbackQuery")
    alice = await storage.find_user("telegram", str(ALICE.id))
    await wait_until(lambda: storage.variant_observations("anime"), [("more-likeness", alice, 5)])

    await variants.roll_back("anime")
    before = len(fake.calls())
    await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="/profile anime")
    await fake.wait_for("sendPhoto", timeout=120, start=before)
    await running.core.wait_idle(timeout=30)
    second = (await storage.recent_jobs(alice))[0]
    assert second.id != job.id and second.variant == "base"
    assert second.result_meta is not None and second.result_meta["scales"]["ip_adapter"] == 0.6
